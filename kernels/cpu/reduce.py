"""Reductions, ArgMax/ArgMin, CumSum/CumProd, TopK, Einsum and Det (ONNX newest opsets).

Reduce* take ``axes`` as an optional int64 input (opset 18 form; the importer moves
older ``axes`` attributes there). No axes reduces everything unless
``noop_with_empty_axes`` is set, which makes the op an identity. Reductions over an
empty set give the op's identity element (0, 1, -inf, +inf, ...), as the spec says.
"""

from __future__ import annotations

import math

import numpy as np

from modelloader.kernels.cpu._registry import kernel


def _as(x: np.ndarray | np.generic, dtype: np.dtype) -> np.ndarray:
    return np.asarray(x).astype(dtype, copy=False)


def _axes(x: np.ndarray, axes: np.ndarray | None, noop: int) -> tuple[int, ...] | None:
    """Normalised axes tuple, or None meaning "return the input unchanged"."""
    if axes is None or np.asarray(axes).size == 0:
        return None if noop else tuple(range(x.ndim))
    return tuple(sorted({int(a) % x.ndim if x.ndim else 0 for a in np.asarray(axes).ravel()}))


def _lowest(dtype: np.dtype) -> np.generic:
    if dtype.kind == "b":
        return np.bool_(False)
    if dtype.kind in "iu":
        return np.iinfo(dtype).min
    return dtype.type(-np.inf)


def _highest(dtype: np.dtype) -> np.generic:
    if dtype.kind == "b":
        return np.bool_(True)
    if dtype.kind in "iu":
        return np.iinfo(dtype).max
    return dtype.type(np.inf)


def _sum(x: np.ndarray, ax: tuple[int, ...], keep: bool) -> np.ndarray:
    s = row_sums(x, ax, keep)
    if s is not None:  # (integer sums wrap to x's dtype, as NumPy's own)
        return _as(s, x.dtype)
    return _as(np.sum(x, axis=ax, keepdims=keep, dtype=x.dtype), x.dtype)


def row_sums(x: np.ndarray, ax: tuple[int, ...], keep: bool) -> np.ndarray | None:
    """The sum over ``ax`` when it runs over x's trailing axes in rows shorter than 128
    (global pooling of a small map, per-channel statistics), else None. NumPy pays ~30 ns
    of loop setup per row there, so BLAS sums the rows (a matrix-vector product with ones)
    instead: float32/float64 in x's dtype, in another but equally accurate order of
    additions; 8- and 16-bit integers exactly (every sum stays below 2**24 in float32), as
    int64."""
    r = len(ax)
    if r == 0 or not x.flags.c_contiguous or ax != tuple(range(x.ndim - r, x.ndim)):
        return None
    exact = x.dtype.type in (np.int8, np.uint8, np.int16, np.uint16)
    if not (exact or x.dtype.type in (np.float32, np.float64)):
        return None
    inner = math.prod(x.shape[x.ndim - r :])
    outer = x.size // inner if inner else 0
    if not (0 < inner < 128 and outer >= 64):
        return None
    rows = x.reshape(outer, inner)
    if exact:
        s = (rows.astype(np.float32) @ np.ones(inner, np.float32)).astype(np.int64)
    else:
        s = rows @ np.ones(inner, x.dtype)
    return s.reshape(reduced_shape(x.shape, ax, keep))


def reduced_shape(shape: tuple[int, ...], ax: tuple[int, ...], keep: bool) -> tuple[int, ...]:
    """``shape`` reduced over axes ``ax``: kept as 1 (``keep``) or dropped."""
    if keep:
        return tuple(1 if i in ax else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in ax)


def _reducer(name: str):
    def compute(x: np.ndarray, ax: tuple[int, ...], keep: bool) -> np.ndarray:
        dt = x.dtype
        if name == "ReduceSum":
            return _sum(x, ax, keep)
        if name == "ReduceMean":
            s = row_sums(x, ax, keep) if dt.kind == "f" else None
            if s is not None:
                return np.true_divide(s, dt.type(math.prod(x.shape[i] for i in ax)))
            if dt.kind == "f":
                return _as(np.mean(x, axis=ax, keepdims=keep), dt)
            return _as(np.mean(x, axis=ax, keepdims=keep, dtype=np.float64), dt)
        if name == "ReduceMax":
            return _as(np.max(x, axis=ax, keepdims=keep, initial=_lowest(dt)), dt)
        if name == "ReduceMin":
            return _as(np.min(x, axis=ax, keepdims=keep, initial=_highest(dt)), dt)
        if name == "ReduceProd":
            return _as(np.prod(x, axis=ax, keepdims=keep, dtype=dt), dt)
        if name == "ReduceL1":
            return _sum(np.abs(x), ax, keep)
        if name == "ReduceL2":
            if dt.kind in "iu":
                s = np.sum(np.square(x.astype(np.float64)), axis=ax, keepdims=keep)
                return _as(np.sqrt(s), dt)
            return np.sqrt(_sum(x * x, ax, keep))
        if name == "ReduceSumSquare":
            return _sum(x * x, ax, keep)
        if name == "ReduceLogSum":
            with np.errstate(divide="ignore"):
                return _as(np.log(_sum(x, ax, keep)), dt)
        if name == "ReduceLogSumExp":
            if x.size == 0:
                return _as(np.log(_sum(x, ax, keep)) if dt.kind == "f" else _sum(x, ax, keep), dt)
            m = np.max(x, axis=ax, keepdims=True)
            m = np.where(np.isfinite(m), m, 0).astype(dt)
            s = np.sum(np.exp(x - m), axis=ax, keepdims=True)
            with np.errstate(divide="ignore"):
                r = np.log(s) + m
            if not keep:
                r = np.squeeze(r, axis=ax)
            return _as(r, dt)
        raise AssertionError(name)

    def run(
        data: np.ndarray,
        axes: np.ndarray | None = None,
        *,
        keepdims: int = 1,
        noop_with_empty_axes: int = 0,
    ) -> np.ndarray:
        ax = _axes(data, axes, noop_with_empty_axes)
        if ax is None:
            return data
        if name in ("ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSum") and data.size == 0:
            pass  # the sums below already give 0 (log -> -inf) on empty sets
        return compute(data, ax, bool(keepdims))

    run.__name__ = name
    run.__doc__ = f"ONNX {name}-18: reduce over ``axes`` (all when omitted), keepdims."
    return run


for _op in (
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceSumSquare",
    "ReduceLogSum",
    "ReduceLogSumExp",
):
    kernel(_op)(_reducer(_op))


def _arg(fn):
    def run(
        data: np.ndarray, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0
    ) -> np.ndarray:
        axis = axis % data.ndim
        if select_last_index:
            n = data.shape[axis]
            idx = n - 1 - fn(np.flip(data, axis=axis), axis=axis)
        else:
            idx = fn(data, axis=axis)
        idx = idx.astype(np.int64, copy=False)
        return np.expand_dims(idx, axis) if keepdims else np.asarray(idx)

    return run


kernel("ArgMax")(_arg(np.argmax))
kernel("ArgMin")(_arg(np.argmin))


def _cumulative(fn, identity: int):
    def run(x: np.ndarray, axis: np.ndarray, *, exclusive: int = 0, reverse: int = 0) -> np.ndarray:
        ax = int(np.asarray(axis).reshape(-1)[0]) % max(x.ndim, 1)
        if x.ndim == 0:
            return x.copy()
        src = np.flip(x, axis=ax) if reverse else x
        out = fn(src, axis=ax, dtype=x.dtype)
        if exclusive:
            pad = np.full_like(np.take(out, [0], axis=ax), identity)
            out = np.concatenate(
                [pad, np.take(out, np.arange(out.shape[ax] - 1), axis=ax)], axis=ax
            )
        if reverse:
            out = np.flip(out, axis=ax)
        return out

    return run


kernel("CumSum")(_cumulative(np.cumsum, 0))
kernel("CumProd")(_cumulative(np.cumprod, 1))


@kernel("TopK")
def topk(
    x: np.ndarray, k: np.ndarray, *, axis: int = -1, largest: int = 1, sorted: int = 1
) -> tuple[np.ndarray, np.ndarray]:  # noqa: A002 - ONNX attribute name
    """ONNX TopK-24: the k largest (or smallest) values along ``axis`` and their indices.

    Equal values keep ascending index order. Output is always sorted (allowed when
    ``sorted`` is 0, since the order is then unspecified).
    """
    kk = int(np.asarray(k).reshape(-1)[0])
    axis = axis % x.ndim
    n = x.shape[axis]
    if largest:
        # Stable ascending sort of the reversed axis, flipped back: descending values
        # with ties in ascending original index order, for any dtype (no negation).
        rev = np.flip(x, axis=axis)
        order = np.flip(np.argsort(rev, axis=axis, kind="stable"), axis=axis)
        order = (n - 1) - order
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(kk), axis=axis).astype(np.int64, copy=False)
    return np.take_along_axis(x, idx, axis=axis), idx


@kernel("Einsum")
def einsum(*inputs: np.ndarray, equation: str) -> np.ndarray:
    """ONNX Einsum-12: Einstein summation per ``equation``."""
    eq = equation.replace(" ", "")
    ops = inputs
    if inputs[0].dtype.kind == "V":  # ml_dtypes (bfloat16...) are not einsum-able
        ops = tuple(x.astype(np.float32) for x in inputs)
    out = np.einsum(eq, *ops, optimize=len(inputs) > 2)
    return _as(out, inputs[0].dtype)


@kernel("Det")
def det(x: np.ndarray) -> np.ndarray:
    """ONNX Det-22: determinant of the trailing square matrices."""
    return _as(np.linalg.det(x), x.dtype)
