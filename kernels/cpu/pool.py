"""Pooling kernels: MaxPool, AveragePool, LpPool, their Global forms, MaxUnpool, and
``modelloader.MaxPoolWithIndices`` (MaxPool nodes whose Indices output is used).

Max and sum windows are separable, so windows are reduced one spatial axis at a time with
whole-tensor ``np.maximum``/``np.add`` folds (k_i per axis, no per-pixel Python). Average
divisors are separable too: built per axis and broadcast."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from modelloader.buffers import take
from modelloader.kernels.cpu import _llvm
from modelloader.kernels.cpu._registry import kernel
from modelloader.kernels.cpu.conv import bordered, pad_input, resolve_pads, scratch, window_view


def _geometry(
    x: np.ndarray,
    kernel_shape: Sequence[int],
    strides: Sequence[int] | None,
    dilations: Sequence[int] | None,
    pads: Sequence[int] | None,
    auto_pad: str,
    ceil_mode: int,
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(k, strides, dilations, pads incl. ceil-mode overhang at the end, output spatial shape)."""
    r = x.ndim - 2
    k = list(kernel_shape)
    s = list(strides) if strides else [1] * r
    d = list(dilations) if dilations else [1] * r
    p, out = resolve_pads(x.shape[2:], k, s, d, pads, auto_pad, bool(ceil_mode))
    return k, s, d, p, out


def _padded_windows(x: np.ndarray, k, s, d, p, out, fill: float) -> tuple[np.ndarray, list[int]]:
    """Strided (N, C, *k, *out) view over x padded with ``fill``, large enough for every window."""
    r = x.ndim - 2
    extra = [
        max(0, (out[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - (x.shape[2 + i] + p[i] + p[i + r]))
        for i in range(r)
    ]
    pp = p[:r] + [p[r + i] + extra[i] for i in range(r)]
    return window_view(pad_input(x, pp, fill), k, s, d, out), pp


def _taps(view: np.ndarray, k: Sequence[int]):
    for t, idx in enumerate(np.ndindex(*k)):
        yield t, idx, view[(slice(None), slice(None)) + idx]


def _fold(x: np.ndarray, k, s, d, p, out_sp, fill: float, combine: np.ufunc) -> np.ndarray:
    """Folds every window tap into a fresh (N, C, *out) array with ``combine`` (max/add).

    Max and sum windows are separable, so the padded input is reduced one spatial axis at a
    time (rows first: those passes run over whole contiguous rows), k_i folds per axis.
    """
    r = x.ndim - 2
    whole = all(o == 1 and kk == i and dd == 1 for o, kk, i, dd in zip(out_sp, k, x.shape[2:], d))
    if whole and x.size and not any(p):
        # one window covering each whole plane: a plain reduction (ResNet's final 7x7 pool)
        n, c = x.shape[:2]
        return combine.reduce(x.reshape(n, c, -1), axis=2).reshape((n, c) + (1,) * r)
    if r == 2 and min(p) >= 0:
        return _fold2d(x, k, s, d, p, out_sp, fill, combine)
    extra = [
        max(0, (out_sp[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1 - (x.shape[2 + i] + p[i] + p[i + r]))
        for i in range(r)
    ]
    shape = x.shape[:2] + tuple(x.shape[2 + i] + p[i] + p[r + i] + extra[i] for i in range(r))
    if any(p) or any(extra):
        # kept per geometry so the fill border is written once; only the interior is copied
        cur, fresh = bordered(shape, x.dtype, fill, ("pool",) + tuple(p) + x.shape[2:])
        if fresh:
            cur.fill(fill)
        inner = tuple(slice(p[i], p[i] + x.shape[2 + i]) for i in range(r))
        cur[(slice(None), slice(None)) + inner] = x
    else:
        cur = x
    for i in range(r):
        ax = 2 + i
        last = i == r - 1
        shape = shape[:ax] + (out_sp[i],) + shape[ax + 1 :]
        nxt = take(shape, x.dtype) if last else scratch(f"pool_{i % 2}", shape, x.dtype)
        st = s[i]
        if last and st > 1:
            # split the innermost axis into stride phases so every tap is a contiguous run
            wq = -(-cur.shape[-1] // st)
            ph = scratch("pool_phase", cur.shape[:-1] + (st, wq), x.dtype)
            if wq * st != cur.shape[-1]:
                ph[..., -1] = fill
            for a in range(st):
                n_a = len(range(a, cur.shape[-1], st))
                ph[..., a, :n_a] = cur[..., a::st]
        for t in range(k[i]):
            lo = t * d[i]
            if last and st > 1:
                q, a = divmod(lo, st)
                tap = ph[..., a, q : q + out_sp[i]]
            else:
                tap = cur[(slice(None),) * ax + (slice(lo, lo + (out_sp[i] - 1) * st + 1, st),)]
            if t == 0:
                np.copyto(nxt, tap)
            else:
                combine(nxt, tap, out=nxt)
        cur = nxt
    return cur


def _fold2d(x: np.ndarray, k, s, d, p, out_sp, fill: float, combine: np.ufunc) -> np.ndarray:
    """2-D _fold over flat planes: every fold is one long contiguous 1-D ufunc call.

    The padded input lies flat in a kept buffer (all planes back to back, a fill tail
    after), so the row taps are the whole buffer shifted by ``t*d0*Wp`` and the column
    taps the row result shifted by ``t*d1``: window sums/maxima land at each window's top
    left corner (positions straddling a plane edge are junk and never read). One strided
    copy then picks the output positions. Short rows or many small channels no longer
    cost one inner numpy loop per row.
    """
    n, c, h, w = x.shape
    oh, ow = out_sp
    hp = max(h + p[0] + p[2], (oh - 1) * s[0] + (k[0] - 1) * d[0] + 1)
    wp = max(w + p[1] + p[3], (ow - 1) * s[1] + (k[1] - 1) * d[1] + 1)
    length = n * c * hp * wp
    tail_w = (k[1] - 1) * d[1]
    tail_h = (k[0] - 1) * d[0] * wp
    total = length + tail_h + tail_w
    buf, fresh = bordered((total,), x.dtype, fill, ("pool2d", n, c, h, w, hp, wp, p[0], p[1]))
    if fresh:
        buf.fill(fill)
    img = buf[:length].reshape(n, c, hp, wp)
    img[:, :, p[0] : p[0] + h, p[1] : p[1] + w] = x
    span = length + tail_w
    if k[0] > 1:
        rows = scratch("pool_rows", (span,), x.dtype)
        step = d[0] * wp
        combine(buf[:span], buf[step : step + span], out=rows)
        for t in range(2, k[0]):
            combine(rows, buf[t * step : t * step + span], out=rows)
    else:
        rows = buf[:span]
    if k[1] > 1:
        cols = scratch("pool_cols", (length,), x.dtype)
        combine(rows[:length], rows[d[1] : d[1] + length], out=cols)
        for t in range(2, k[1]):
            combine(cols, rows[t * d[1] : t * d[1] + length], out=cols)
    else:
        cols = rows[:length]
    out = take((n, c, oh, ow), x.dtype)
    cv = cols.reshape(n, c, hp, wp)
    np.copyto(out, cv[:, :, : (oh - 1) * s[0] + 1 : s[0], : (ow - 1) * s[1] + 1 : s[1]])
    return out


def _fill_min(dtype: np.dtype) -> float:
    return np.iinfo(dtype).min if dtype.kind in "iu" else -np.inf


@kernel("MaxPool")
def max_pool(
    x: np.ndarray,
    *,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    dilations: Sequence[int] | None = None,
    kernel_shape: Sequence[int],
    pads: Sequence[int] | None = None,
    storage_order: int = 0,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX MaxPool-22 without the Indices output (the importer sends nodes that use
    Indices to ``modelloader.MaxPoolWithIndices``)."""
    k, s, d, p, out_sp = _geometry(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    if _compiled_max_pool(x, k, s, d, p):
        xc = x if x.flags.c_contiguous else np.ascontiguousarray(x)
        return _llvm.max_pool(xc, k, s, p, out_sp, take(x.shape[:2] + tuple(out_sp), x.dtype))
    return _fold(x, k, s, d, p, out_sp, _fill_min(x.dtype), np.maximum)


def _compiled_max_pool(x: np.ndarray, k, s, d, p) -> bool:
    """Whether a max pool runs as llvmlite's loop (``_llvm.max_pool``: 3-6x the NumPy folds,
    bit-identical): large float 2-D inputs, square undilated kernels it has."""
    return (
        x.ndim == 4
        and x.dtype.type in (np.float32, np.float64)
        and k[0] == k[1]
        and s[0] == s[1]
        and (k[0], s[0]) in _llvm.POOL_SHAPES
        and d == [1, 1]
        and min(p) >= 0
        and _llvm.enabled(x.size)
    )


@kernel("MaxPoolWithIndices", domain="modelloader")
def max_pool_with_indices(
    x: np.ndarray,
    *,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    dilations: Sequence[int] | None = None,
    kernel_shape: Sequence[int],
    pads: Sequence[int] | None = None,
    storage_order: int = 0,
    strides: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX MaxPool-22 with Indices: flat input offsets of each max (first on ties), row-major,
    or column-major over the spatial axes when storage_order=1."""
    k, s, d, p, out_sp = _geometry(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    view, _ = _padded_windows(x, k, s, d, p, out_sp, _fill_min(x.dtype))
    y = np.empty(x.shape[:2] + tuple(out_sp), x.dtype)
    best = np.zeros(y.shape, np.int64)
    for t, _idx, tap in _taps(view, k):
        if t == 0:
            np.copyto(y, tap)
        else:
            gt = tap > y
            np.copyto(y, tap, where=gt)
            np.copyto(best, t, where=gt)
    return y, _indices(x.shape, best, k, s, d, p, out_sp, storage_order)


def _indices(
    shape: Sequence[int], best: np.ndarray, k, s, d, p, out_sp, storage_order: int
) -> np.ndarray:
    """Converts the winning tap number per output into the ONNX flat input index."""
    r = len(k)
    taps = np.array(list(np.ndindex(*k)), np.int64).reshape(-1, r)
    n, c = shape[:2]
    sp = list(shape[2:])
    coords = []
    for i in range(r):
        o = np.arange(out_sp[i], dtype=np.int64).reshape((-1,) + (1,) * (r - 1 - i)) * s[i] - p[i]
        coords.append(o + taps[:, i][best] * d[i])
    if storage_order == 0:
        flat = coords[0]
        for i in range(1, r):
            flat = flat * sp[i] + coords[i]
    else:
        flat = coords[r - 1]
        for i in range(r - 2, -1, -1):
            flat = flat * sp[i] + coords[i]
    base = (np.arange(n * c, dtype=np.int64) * math.prod(sp)).reshape((n, c) + (1,) * r)
    return flat + base


def _axis_counts(
    in_len: int, k: int, s: int, d: int, pb: int, pe: int, o: int, include_pad: bool
) -> np.ndarray:
    """Per-axis number of window taps that land in the input (or in input + explicit pads)."""
    pos = np.arange(o)[:, None] * s - pb + np.arange(k)[None, :] * d
    lo, hi = (-pb, in_len + pe) if include_pad else (0, in_len)
    return ((pos >= lo) & (pos < hi)).sum(axis=1)


@kernel("AveragePool")
def average_pool(
    x: np.ndarray,
    *,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    count_include_pad: int = 0,
    dilations: Sequence[int] | None = None,
    kernel_shape: Sequence[int],
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX AveragePool-22: windowed mean; pads count in the divisor iff count_include_pad."""
    k, s, d, p, out_sp = _geometry(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    cd = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    xf = x.astype(cd, copy=False)
    y = _fold(xf, k, s, d, p, out_sp, 0.0, np.add)
    div = _divisor(
        x.shape[2:],
        tuple(k),
        tuple(s),
        tuple(d),
        tuple(p),
        tuple(out_sp),
        bool(count_include_pad),
        cd.str,
    )
    # flattened spatial axes: one long inner loop per channel instead of one per output row
    yf = y.reshape(y.shape[:2] + (math.prod(y.shape[2:]),))
    yf /= div.reshape(1, 1, -1)
    return y.astype(x.dtype, copy=False)


@functools.lru_cache(maxsize=256)
def _divisor(
    in_sp: tuple[int, ...],
    k: tuple[int, ...],
    s: tuple[int, ...],
    d: tuple[int, ...],
    p: tuple[int, ...],
    out_sp: tuple[int, ...],
    include_pad: bool,
    dtype: str,
) -> np.ndarray:
    """Read-only (1, 1, *out) AveragePool divisor (product of per-axis tap counts), cached per
    geometry; a uniform divisor is a single broadcast element, any other one is full (1, 1, *out)."""
    r = len(in_sp)
    cd = np.dtype(dtype)
    div = np.ones((1, 1) + (1,) * r, cd)
    for i in range(r):
        cnt = _axis_counts(in_sp[i], k[i], s[i], d[i], p[i], p[i + r], out_sp[i], include_pad)
        if (cnt == cnt[0]).all():
            cnt = cnt[:1]
        div = div * cnt.astype(cd).reshape((1, 1) + (1,) * i + (-1,) + (1,) * (r - 1 - i))
    if div.size > 1:
        div = np.ascontiguousarray(np.broadcast_to(div, (1, 1) + tuple(out_sp)))
    div.flags.writeable = False
    return div


@kernel("LpPool")
def lp_pool(
    x: np.ndarray,
    *,
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    dilations: Sequence[int] | None = None,
    kernel_shape: Sequence[int],
    p: int = 2,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX LpPool-22: (sum over window of |x|**p) ** (1/p), zero padding."""
    k, s, d, pd, out_sp = _geometry(x, kernel_shape, strides, dilations, pads, auto_pad, ceil_mode)
    cd = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    xa = np.abs(x.astype(cd, copy=False))
    if p != 1:
        xa = xa**p if p != 2 else np.square(xa, out=xa if xa is not x else None)
    y = _fold(xa, k, s, d, pd, out_sp, 0.0, np.add)
    if p == 2:
        np.sqrt(y, out=y)
    elif p != 1:
        np.power(y, cd.type(1.0 / p), out=y)
    return y.astype(x.dtype, copy=False)


@kernel("GlobalAveragePool")
def global_average_pool(x: np.ndarray) -> np.ndarray:
    """ONNX GlobalAveragePool-22: mean over all spatial axes, kept as size-1 dims."""
    axes = tuple(range(2, x.ndim))
    cd = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    return np.asarray(np.mean(x, axis=axes, keepdims=True, dtype=cd)).astype(x.dtype, copy=False)


@kernel("GlobalMaxPool")
def global_max_pool(x: np.ndarray) -> np.ndarray:
    """ONNX GlobalMaxPool-22: max over all spatial axes, kept as size-1 dims."""
    return np.asarray(np.max(x, axis=tuple(range(2, x.ndim)), keepdims=True))


@kernel("GlobalLpPool")
def global_lp_pool(x: np.ndarray, *, p: int = 2) -> np.ndarray:
    """ONNX GlobalLpPool-22: (sum over spatial axes of |x|**p) ** (1/p)."""
    cd = x.dtype if x.dtype in (np.float32, np.float64) else np.dtype(np.float32)
    xa = np.abs(x.astype(cd, copy=False))
    y = np.sum(xa**p, axis=tuple(range(2, x.ndim)), keepdims=True)
    return np.asarray(y ** cd.type(1.0 / p)).astype(x.dtype, copy=False)


@kernel("MaxUnpool")
def max_unpool(
    x: np.ndarray,
    indices: np.ndarray,
    output_shape: np.ndarray | None = None,
    *,
    kernel_shape: Sequence[int],
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX MaxUnpool-22: scatters X into zeros at the flat positions given by Indices."""
    r = x.ndim - 2
    s = list(strides) if strides else [1] * r
    p = list(pads) if pads else [0] * (2 * r)
    inferred = x.shape[:2] + tuple(
        (x.shape[2 + i] - 1) * s[i] + kernel_shape[i] - p[i] - p[i + r] for i in range(r)
    )
    idx = indices.reshape(-1).astype(np.int64)
    if output_shape is None:
        shape = inferred
    else:
        # indices address the inferred shape; keep their coordinates inside the larger output
        shape = tuple(int(v) for v in output_shape)
        if shape != inferred:
            idx = np.ravel_multi_index(np.unravel_index(idx, inferred), shape)
    y = np.zeros(math.prod(shape), x.dtype)
    y[idx] = x.reshape(-1)
    return y.reshape(shape)
