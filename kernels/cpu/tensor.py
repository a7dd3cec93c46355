"""Tensor-manipulation kernels: reshaping, indexing, scattering, padding, generators."""

from __future__ import annotations

import math
from typing import Any

import ml_dtypes
import numpy as np

from modelloader.buffers import MIN_BYTES, take
from modelloader.kernels.cpu._registry import kernel

# ONNX TensorProto.DataType -> NumPy dtype, for ops with a ``dtype`` attribute.
_ONNX_DTYPES: dict[int, Any] = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    4: np.uint16,
    5: np.int16,
    6: np.int32,
    7: np.int64,
    8: object,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
    12: np.uint32,
    13: np.uint64,
    14: np.complex64,
    15: np.complex128,
    16: ml_dtypes.bfloat16,
    17: ml_dtypes.float8_e4m3fn,
    18: ml_dtypes.float8_e4m3fnuz,
    19: ml_dtypes.float8_e5m2,
    20: ml_dtypes.float8_e5m2fnuz,
    21: ml_dtypes.uint4,
    22: ml_dtypes.int4,
    23: ml_dtypes.float4_e2m1fn,
}


def _ints(x: np.ndarray | None) -> list[int]:
    """An int64 tensor (scalar or 1-D) as Python ints."""
    if x is None:
        return []
    a = np.asarray(x).reshape(-1)
    return a.tolist() if a.dtype.kind in "iu" else [int(v) for v in a.tolist()]


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


# --------------------------------------------------------------------------- shape ops


@kernel("Reshape")
def reshape(data: np.ndarray, shape: np.ndarray, *, allowzero: int = 0) -> np.ndarray:
    """ONNX Reshape-21: 0 copies the input dim (unless allowzero), -1 is inferred."""
    dims = _ints(shape)
    if not allowzero:
        dims = [data.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if data.flags.c_contiguous or type(data) is not np.ndarray or data.nbytes < MIN_BYTES:
        return data.reshape(dims)
    try:
        return np.reshape(data, dims, copy=False)  # a view where the strides allow one
    except (ValueError, TypeError):  # a copy is needed (TypeError: NumPy < 2.1, no copy=)
        pass
    out = take(data.shape, data.dtype)
    np.copyto(out, data)
    return out.reshape(dims)


@kernel("Transpose")
def transpose(data: np.ndarray, *, perm: list[int] | None = None) -> np.ndarray:
    """ONNX Transpose-21: permute axes (reverse them when perm is absent)."""
    return np.transpose(data, perm)


@kernel("Squeeze")
def squeeze(data: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    """ONNX Squeeze-21: drop the given size-1 axes (all size-1 axes when absent)."""
    if axes is None:
        return np.squeeze(data)
    return np.squeeze(data, axis=tuple(_axis(a, data.ndim) for a in _ints(axes)))


@kernel("Unsqueeze")
def unsqueeze(data: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """ONNX Unsqueeze-21: insert size-1 axes at positions of the output shape."""
    ax = _ints(axes)
    rank = data.ndim + len(ax)
    out = list(data.shape)
    for a in sorted(_axis(a, rank) for a in ax):
        out.insert(a, 1)
    return data.reshape(out)


@kernel("Flatten")
def flatten(data: np.ndarray, *, axis: int = 1) -> np.ndarray:
    """ONNX Flatten-21: 2-D view splitting dims at ``axis``."""
    axis = _axis(axis, data.ndim)
    return data.reshape(math.prod(data.shape[:axis]), math.prod(data.shape[axis:]))


@kernel("Shape")
def shape(data: np.ndarray, *, start: int = 0, end: int | None = None) -> np.ndarray:
    """ONNX Shape-21: the (sliced) shape as int64."""
    return np.asarray(data.shape[slice(start, end)], dtype=np.int64)


@kernel("Size")
def size(data: np.ndarray) -> np.ndarray:
    """ONNX Size-21: element count as an int64 scalar."""
    return np.asarray(data.size, dtype=np.int64)


@kernel("Identity")
def identity(x: Any) -> Any:
    """ONNX Identity-21: tensors, sequences and optionals pass through."""
    return x


@kernel("Expand")
def expand(data: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """ONNX Expand-13: bidirectional broadcast to ``shape``."""
    out = np.broadcast_shapes(data.shape, tuple(_ints(shape)))
    return np.broadcast_to(data, out).copy()


@kernel("Tile")
def tile(data: np.ndarray, repeats: np.ndarray) -> np.ndarray:
    """ONNX Tile-13: repeat along each axis."""
    return np.tile(data, _ints(repeats))


@kernel("Concat")
def concat(*inputs: np.ndarray, axis: int) -> np.ndarray:
    """ONNX Concat-13."""
    first = inputs[0]
    if (
        type(first) is np.ndarray
        and first.ndim
        and all(
            type(v) is np.ndarray and v.dtype == first.dtype and v.ndim == first.ndim
            for v in inputs
        )
    ):
        ax = _axis(axis, first.ndim)
        shape = list(first.shape)
        shape[ax] = sum(v.shape[ax] for v in inputs)
        out = take(tuple(shape), first.dtype)
        return np.concatenate(inputs, axis=ax, out=out)
    return np.concatenate(inputs, axis=axis)


@kernel("Split")
def split(
    data: np.ndarray,
    split: np.ndarray | None = None,
    *,
    axis: int = 0,
    num_outputs: int | None = None,
) -> tuple[np.ndarray, ...]:
    """ONNX Split-18: by explicit sizes, or into num_outputs chunks of ceil(n/num_outputs)."""
    axis = _axis(axis, data.ndim)
    n = data.shape[axis]
    if split is not None and np.asarray(split).size:
        sizes = _ints(split)
    else:
        if num_outputs is None:
            raise ValueError("Split needs 'split' or 'num_outputs'")
        chunk = -(-n // num_outputs)
        sizes = [min(chunk, max(n - i * chunk, 0)) for i in range(num_outputs)]
    bounds = np.cumsum(sizes)[:-1]
    return tuple(np.split(data, bounds, axis=axis))


@kernel("Slice")
def slice_(
    data: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    axes: np.ndarray | None = None,
    steps: np.ndarray | None = None,
) -> np.ndarray:
    """ONNX Slice-13: per-axis start/end/step with ONNX clamping (negative steps too)."""
    st, en = _ints(starts), _ints(ends)
    ax = _ints(axes) if axes is not None else list(range(len(st)))
    sp = _ints(steps) if steps is not None else [1] * len(st)
    index: list[slice] = [slice(None)] * data.ndim
    for s, e, a, k in zip(st, en, ax, sp, strict=True):
        a = _axis(a, data.ndim)
        dim = data.shape[a]
        s = s + dim if s < 0 else s
        e = e + dim if e < 0 else e
        if k > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
            index[a] = slice(s, e, k)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
            index[a] = slice(s, None if e < 0 else e, k)
    return data[tuple(index)]


# --------------------------------------------------------------------------- gather/scatter


def _norm_indices(indices: np.ndarray, dim: int | np.ndarray) -> np.ndarray:
    idx = indices.astype(np.int64, copy=False)
    return np.where(idx < 0, idx + dim, idx)


@kernel("Gather")
def gather(data: np.ndarray, indices: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """ONNX Gather-13: np.take along ``axis`` (negative indices count from the end).

    A scalar index picks one slice: a view, not a copy (np.take would first copy a
    non-contiguous ``data`` whole, e.g. PyTorch's stacked Q/K/V)."""
    axis = _axis(axis, data.ndim)
    idx = _norm_indices(indices, data.shape[axis])
    if idx.ndim == 0 and isinstance(data, np.ndarray):
        return data[(slice(None),) * axis + (int(idx),)]
    return np.take(data, idx, axis=axis)


@kernel("GatherElements")
def gather_elements(data: np.ndarray, indices: np.ndarray, *, axis: int = 0) -> np.ndarray:
    """ONNX GatherElements-13: take_along_axis."""
    axis = _axis(axis, data.ndim)
    return np.take_along_axis(data, _norm_indices(indices, data.shape[axis]), axis=axis)


@kernel("GatherND")
def gather_nd(data: np.ndarray, indices: np.ndarray, *, batch_dims: int = 0) -> np.ndarray:
    """ONNX GatherND-13: index tuples in the last axis of ``indices``, after batch_dims."""
    b = batch_dims
    k = indices.shape[-1]
    batch = math.prod(data.shape[:b])
    d = data.reshape((batch, *data.shape[b:]))
    ind = indices.reshape(batch, -1, k)
    ind = _norm_indices(ind, np.asarray(data.shape[b : b + k], dtype=np.int64))
    picks = tuple(ind[..., j] for j in range(k))
    out = d[(np.arange(batch)[:, None], *picks)]
    return out.reshape(indices.shape[:-1] + data.shape[b + k :])


_REDUCE = {
    "add": np.add,
    "mul": np.multiply,
    "max": np.maximum,
    "min": np.minimum,
}


def _scatter(
    out: np.ndarray, index: tuple[np.ndarray, ...], updates: np.ndarray, reduction: str
) -> None:
    if reduction == "none":
        out[index] = updates
    else:
        _REDUCE[reduction].at(out, index, updates)


@kernel("ScatterElements")
def scatter_elements(
    data: np.ndarray,
    indices: np.ndarray,
    updates: np.ndarray,
    *,
    axis: int = 0,
    reduction: str = "none",
) -> np.ndarray:
    """ONNX ScatterElements-18: out[..idx[i,j]..] (op)= updates[i,j] along ``axis``."""
    axis = _axis(axis, data.ndim)
    index = list(np.indices(indices.shape, sparse=True))
    index[axis] = _norm_indices(indices, data.shape[axis])
    out = data.copy()
    _scatter(out, tuple(index), updates, reduction)
    return out


@kernel("Scatter")
def scatter(
    data: np.ndarray, indices: np.ndarray, updates: np.ndarray, *, axis: int = 0
) -> np.ndarray:
    """ONNX Scatter-11 (deprecated): ScatterElements without reduction."""
    return scatter_elements(data, indices, updates, axis=axis)


@kernel("ScatterND")
def scatter_nd(
    data: np.ndarray, indices: np.ndarray, updates: np.ndarray, *, reduction: str = "none"
) -> np.ndarray:
    """ONNX ScatterND-18: index tuples in the last axis of ``indices`` address slices of data."""
    k = indices.shape[-1]
    idx = _norm_indices(indices, np.asarray(data.shape[:k], dtype=np.int64))
    out = data.copy()
    _scatter(out, tuple(idx[..., j] for j in range(k)), updates, reduction)
    return out


@kernel("TensorScatter")
def tensor_scatter(
    past_cache: np.ndarray,
    update: np.ndarray,
    write_indices: np.ndarray | None = None,
    *,
    axis: int = -2,
    mode: str = "linear",
) -> np.ndarray:
    """ONNX TensorScatter-24: write ``update`` into the cache at per-batch offsets on ``axis``."""
    axis = _axis(axis, past_cache.ndim)
    if axis == 0:
        raise ValueError("TensorScatter axis must not be the batch axis")
    batch = past_cache.shape[0]
    offsets = np.zeros(batch, np.int64) if write_indices is None else write_indices.astype(np.int64)
    seq = np.arange(update.shape[axis], dtype=np.int64)
    pos = offsets[:, None] + seq[None, :]  # (batch, seq)
    if mode == "circular":
        pos = pos % past_cache.shape[axis]
    elif mode != "linear":
        raise ValueError(f"TensorScatter: unknown mode {mode!r}")
    index = list(np.indices(update.shape, sparse=True))
    shape = [1] * update.ndim
    shape[0], shape[axis] = batch, update.shape[axis]
    index[axis] = pos.reshape(shape)
    out = past_cache.copy()
    out[tuple(index)] = update
    return out


# --------------------------------------------------------------------------- padding / layout


@kernel("Pad")
def pad(
    data: np.ndarray,
    pads: np.ndarray,
    constant_value: np.ndarray | None = None,
    axes: np.ndarray | None = None,
    *,
    mode: str = "constant",
) -> np.ndarray:
    """ONNX Pad-21: constant/reflect/edge/wrap; negative pads crop."""
    p = _ints(pads)
    ax = [_axis(a, data.ndim) for a in _ints(axes)] if axes is not None else list(range(data.ndim))
    n = len(ax)
    width = [[0, 0] for _ in range(data.ndim)]
    for i, a in enumerate(ax):
        width[a] = [p[i], p[i + n]]
    # crop negative pads first
    crop = tuple(slice(max(-b, 0), data.shape[i] - max(-e, 0)) for i, (b, e) in enumerate(width))
    x = data[crop]
    width = [(max(b, 0), max(e, 0)) for b, e in width]
    if mode == "constant":
        value: Any = 0
        if constant_value is not None and np.asarray(constant_value).size:
            value = np.asarray(constant_value).reshape(-1)[0]
        elif x.dtype == object:
            value = ""
        return np.pad(x, width, mode="constant", constant_values=value)
    if mode in ("reflect", "edge", "wrap"):
        return np.pad(x, width, mode=mode)
    raise ValueError(f"Pad: unknown mode {mode!r}")


@kernel("DepthToSpace")
def depth_to_space(data: np.ndarray, *, blocksize: int, mode: str = "DCR") -> np.ndarray:
    """ONNX DepthToSpace-13 (NCHW)."""
    n, c, h, w = data.shape
    b = blocksize
    if mode == "DCR":
        t = data.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = data.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return t.reshape(n, c // (b * b), h * b, w * b)


@kernel("SpaceToDepth")
def space_to_depth(data: np.ndarray, *, blocksize: int, mode: str = "DCR") -> np.ndarray:
    """ONNX SpaceToDepth-28 (NCHW); DCR puts the block offset before the channel, CRD after."""
    n, c, h, w = data.shape
    b = blocksize
    t = data.reshape(n, c, h // b, b, w // b, b)
    t = t.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else t.transpose(0, 1, 3, 5, 2, 4)
    return t.reshape(n, c * b * b, h // b, w // b)


@kernel("Trilu")
def trilu(data: np.ndarray, k: np.ndarray | None = None, *, upper: int = 1) -> np.ndarray:
    """ONNX Trilu-14: keep the upper/lower triangle of the last two dims, offset k."""
    kk = 0 if k is None else int(np.asarray(k).reshape(-1)[0])
    return np.triu(data, kk) if upper else np.tril(data, kk)


@kernel("ReverseSequence")
def reverse_sequence(
    data: np.ndarray, sequence_lens: np.ndarray, *, batch_axis: int = 1, time_axis: int = 0
) -> np.ndarray:
    """ONNX ReverseSequence-10: reverse the first seq_len[b] steps of each batch entry."""
    steps = data.shape[time_axis]
    t = np.arange(steps)[:, None]  # (time, batch)
    lens = sequence_lens.astype(np.int64)[None, :]
    src = np.where(t < lens, lens - 1 - t, t)
    shape = [1] * data.ndim
    shape[time_axis], shape[batch_axis] = steps, data.shape[batch_axis]
    if time_axis > batch_axis:
        src = src.T
    return np.take_along_axis(data, src.reshape(shape), axis=time_axis)


# --------------------------------------------------------------------------- generators


@kernel("Constant")
def constant(
    *,
    value: np.ndarray | None = None,
    value_float: float | None = None,
    value_floats: list[float] | None = None,
    value_int: int | None = None,
    value_ints: list[int] | None = None,
    value_string: str | None = None,
    value_strings: list[str] | None = None,
    sparse_value: Any = None,
) -> np.ndarray:
    """ONNX Constant-21: exactly one of the value attributes."""
    if value is not None:
        return np.asarray(value)
    if value_float is not None:
        return np.asarray(value_float, dtype=np.float32)
    if value_floats is not None:
        return np.asarray(value_floats, dtype=np.float32)
    if value_int is not None:
        return np.asarray(value_int, dtype=np.int64)
    if value_ints is not None:
        return np.asarray(value_ints, dtype=np.int64)
    if value_string is not None:
        return np.asarray(value_string, dtype=object)
    if value_strings is not None:
        return np.asarray(value_strings, dtype=object)
    if sparse_value is not None:
        return np.asarray(sparse_value)
    raise ValueError("Constant has no value attribute")


@kernel("ConstantOfShape")
def constant_of_shape(shape: np.ndarray, *, value: np.ndarray | None = None) -> np.ndarray:
    """ONNX ConstantOfShape-21: fill with the 1-element ``value`` (float32 0 by default)."""
    v = np.zeros(1, np.float32) if value is None else np.asarray(value).reshape(-1)
    return np.full(_ints(shape), v[0], dtype=v.dtype)


@kernel("Range")
def range_(
    start: np.ndarray, limit: np.ndarray, delta: np.ndarray, *, stash_type: int = 1
) -> np.ndarray:
    """ONNX Range-27: start + i*delta for i < max(ceil((limit-start)/delta), 0).

    Floating types are computed in float64 and rounded once (at least as precise as
    the stash_type the spec asks for).
    """
    dt = np.asarray(start).dtype
    start, limit, delta = (np.asarray(v).reshape(-1)[0] for v in (start, limit, delta))
    if dt.kind in "iu":
        s, lim, d = int(start), int(limit), int(delta)
        n = max(-(-(lim - s) // d), 0)
        return (s + np.arange(n, dtype=np.int64) * d).astype(dt)
    s, lim, d = float(start), float(limit), float(delta)
    n = max(math.ceil((lim - s) / d), 0)
    return (s + np.arange(n, dtype=np.float64) * d).astype(dt)


@kernel("EyeLike")
def eye_like(data: np.ndarray, *, dtype: int | None = None, k: int = 0) -> np.ndarray:
    """ONNX EyeLike-22: 2-D identity with diagonal offset k, in ``dtype`` or the input's type."""
    dt = data.dtype if dtype is None else np.dtype(_ONNX_DTYPES[dtype])
    return np.eye(data.shape[0], data.shape[1], k=k, dtype=dt)


@kernel("OneHot")
def one_hot(
    indices: np.ndarray, depth: np.ndarray, values: np.ndarray, *, axis: int = -1
) -> np.ndarray:
    """ONNX OneHot-11: values[1] where index==class (negative indices wrap), values[0] elsewhere."""
    d = int(np.asarray(depth).reshape(-1)[0])
    rank = indices.ndim + 1
    axis = _axis(axis, rank)
    idx = indices.astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    shape = [1] * rank
    shape[axis] = d
    classes = np.arange(d).reshape(shape)
    hot = np.expand_dims(idx, axis) == classes
    v = values.reshape(-1)
    return np.where(hot, v[1], v[0]).astype(values.dtype)


# --------------------------------------------------------------------------- selection


@kernel("NonZero")
def non_zero(data: np.ndarray) -> np.ndarray:
    """ONNX NonZero-13: indices of non-zero elements, shape (rank, n), int64."""
    if data.ndim == 0:
        return np.zeros((0, int(bool(data))), dtype=np.int64)
    return np.asarray(np.nonzero(data), dtype=np.int64).reshape(data.ndim, -1)


@kernel("Compress")
def compress(data: np.ndarray, condition: np.ndarray, *, axis: int | None = None) -> np.ndarray:
    """ONNX Compress-11: keep slices where condition is true (flattened input without axis)."""
    return np.compress(condition.astype(bool).reshape(-1), data, axis=axis)


@kernel("Unique")
def unique(
    data: np.ndarray, *, axis: int | None = None, sorted: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ONNX Unique-11: (Y, indices, inverse_indices, counts); unsorted = first-occurrence order."""
    if axis is None:
        flat = data.reshape(-1)
        y, first, inverse, counts = np.unique(
            flat, return_index=True, return_inverse=True, return_counts=True
        )
    else:
        axis = _axis(axis, data.ndim)
        y, first, inverse, counts = np.unique(
            data, axis=axis, return_index=True, return_inverse=True, return_counts=True
        )
    inverse = inverse.reshape(-1)
    if not sorted:
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        y = y[order] if axis is None else np.take(y, order, axis=axis)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    i64 = np.int64
    return y, first.astype(i64), inverse.astype(i64), counts.astype(i64)
