"""Sequence and Optional kernels: sequences are lists of arrays, an empty optional is None."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloader.kernels.cpu._registry import kernel


def _position(position: np.ndarray | None, length: int, *, insert: bool = False) -> int:
    """A (possibly negative) sequence position as a non-negative index, bounds-checked."""
    if position is None:
        return length if insert else length - 1
    p = int(np.asarray(position).reshape(-1)[0])
    hi = length if insert else length - 1
    if not -length <= p <= hi:
        raise IndexError(f"sequence position {p} out of range for length {length}")
    return p + length if p < 0 else p


@kernel("SequenceConstruct")
def sequence_construct(*inputs: np.ndarray) -> list[np.ndarray]:
    """ONNX SequenceConstruct-11: a sequence of the given tensors."""
    return list(inputs)


@kernel("SequenceEmpty")
def sequence_empty(*, dtype: int | None = None) -> list[np.ndarray]:
    """ONNX SequenceEmpty-11: an empty sequence (element type is static information only)."""
    return []


@kernel("SequenceInsert")
def sequence_insert(
    seq: list[np.ndarray], tensor: np.ndarray, position: np.ndarray | None = None
) -> list[np.ndarray]:
    """ONNX SequenceInsert-11: a new sequence with ``tensor`` inserted (appended by default)."""
    out = list(seq)
    out.insert(_position(position, len(seq), insert=True), tensor)
    return out


@kernel("SequenceAt")
def sequence_at(seq: list[np.ndarray], position: np.ndarray) -> np.ndarray:
    """ONNX SequenceAt-11: the element at ``position`` (negative counts from the end)."""
    return seq[_position(position, len(seq))]


@kernel("SequenceErase")
def sequence_erase(seq: list[np.ndarray], position: np.ndarray | None = None) -> list[np.ndarray]:
    """ONNX SequenceErase-11: a new sequence without element ``position`` (default: last)."""
    out = list(seq)
    del out[_position(position, len(seq))]
    return out


@kernel("SequenceLength")
def sequence_length(seq: list[np.ndarray]) -> np.ndarray:
    """ONNX SequenceLength-11: number of elements as an int64 scalar."""
    return np.asarray(len(seq), dtype=np.int64)


@kernel("SplitToSequence")
def split_to_sequence(
    data: np.ndarray, split: np.ndarray | None = None, *, axis: int = 0, keepdims: int = 1
) -> list[np.ndarray]:
    """ONNX SplitToSequence-24.

    No ``split``: size-1 chunks (squeezed unless keepdims). Scalar ``split``: chunks of
    that size (the last may be smaller). 1-D ``split``: explicit chunk sizes.
    """
    axis = axis + data.ndim if axis < 0 else axis
    n = data.shape[axis]
    if split is None:
        parts = np.split(data, n, axis=axis)
        return parts if keepdims else [np.squeeze(p, axis=axis) for p in parts]
    s = np.asarray(split)
    if s.ndim == 0:
        step = int(s)
        bounds = list(range(step, n, step))
    else:
        bounds = np.cumsum(s.astype(np.int64))[:-1].tolist()
    return np.split(data, bounds, axis=axis)


@kernel("ConcatFromSequence")
def concat_from_sequence(seq: list[np.ndarray], *, axis: int, new_axis: int = 0) -> np.ndarray:
    """ONNX ConcatFromSequence-11: concatenate (or stack, with new_axis=1) the elements."""
    if new_axis:
        return np.stack(seq, axis=axis)
    return np.concatenate(seq, axis=axis)


@kernel("Optional")
def optional(value: Any = None, *, type: Any = None) -> Any:
    """ONNX Optional-28: wraps ``value``; with no input, the empty optional (None)."""
    return value


@kernel("OptionalGetElement")
def optional_get_element(value: Any) -> Any:
    """ONNX OptionalGetElement-28: the wrapped value (a plain tensor/sequence passes through)."""
    if value is None:
        raise ValueError("OptionalGetElement on an empty optional")
    return value


@kernel("OptionalHasElement")
def optional_has_element(value: Any = None) -> np.ndarray:
    """ONNX OptionalHasElement-28: bool scalar, false for an empty or omitted optional."""
    return np.asarray(value is not None)
