"""Convolution kernels: Conv, ConvTranspose, ConvInteger, QLinearConv, DeformConv, Col2Im,
CausalConvWithState and the fused ``modelloader.FusedConv``.

Float convolutions are lowered to BLAS: 1x1 convs are one matmul over the input as it lies
(after subsampling when strided); kxk convs build an im2col buffer (one copy per kernel tap,
from contiguous "extended row" slices of the padded input where that is cheap, else from one
strided window view) and run one sgemm, or one batched matmul over groups. Depthwise convs are
the one-channel-per-group case of that batched matmul, or, with the ``jit`` extra, compiled
loops (``_jit.depthwise_fn``), which also finish FusedConv's bias/residual/clamp/shuffle in
one pass once loaded. Conv and FusedConv nodes with constant weights are prepared at plan
time (``prepared_float_conv``): pointwise and depthwise shapes then skip the generic
kernel's geometry and dispatch work, which on small maps costs as much as the arithmetic,
and 3x3 stride-1 "same" convs of 64+ channels run as Winograd F(2x2, 3x3) products
(``winograd_recipe``: 2.25x fewer multiply-adds, llvmlite transforms, no im2col).
Work buffers are per-thread scratch, reused between calls; outputs are always fresh arrays
(from the run's buffer pool, ``modelloader.buffers``). Integer convolutions run the same
engine in float64, which is exact for 8/16-bit operands."""

from __future__ import annotations

import ctypes
import functools
import math
import threading
from collections.abc import Callable, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from modelloader.buffers import take
from modelloader.kernels.cpu import _jit, _llvm
from modelloader.kernels.cpu._registry import kernel, prepares
from modelloader.kernels.cpu._ufuncs import clip
from modelloader.kernels.registry import KernelFn, Recipes
from modelloader.parallel import matmul

_FLOATS = (np.float32, np.float64)

_scratch = threading.local()
_SCRATCH_MAX = 64 << 20  # larger buffers are not kept alive between calls


def scratch(slot: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """A reusable per-thread work buffer (never returned to callers).

    Fresh multi-megabyte allocations are served by mmap and page-faulted on every call;
    reusing im2col/padding buffers avoids that. Contents are uninitialised.
    """
    views = getattr(_scratch, "views", None)
    if views is None:
        views = _scratch.views = {}
        _scratch.bufs = {}
    bufs = _scratch.bufs
    key = (slot, shape, dtype)
    hit = views.get(key)
    if hit is not None and hit[0] is bufs.get(slot):  # the slot still holds that memory
        return hit[1]
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _SCRATCH_MAX:
        return np.empty(shape, dtype)
    buf = bufs.get(slot)
    if buf is None or buf.size < nbytes:
        buf = bufs[slot] = np.empty(max(nbytes, 64), np.uint8)
    view = buf[:nbytes].view(dtype).reshape(shape)
    if len(views) >= 256:
        views.clear()  # bounded: a view per (slot, shape, dtype) recently asked for
    views[key] = (buf, view)
    return view


# --------------------------------------------------------------------------- geometry


def resolve_pads(
    in_sp: Sequence[int],
    k: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str,
    ceil_mode: bool = False,
) -> tuple[list[int], list[int]]:
    """ONNX conv/pool output geometry: returns (pads [b..., e...], output spatial shape)."""
    r = len(in_sp)
    eff = [(k[i] - 1) * dilations[i] + 1 for i in range(r)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-in_sp[i] // strides[i]) for i in range(r)]
        total = [max(0, (out[i] - 1) * strides[i] + eff[i] - in_sp[i]) for i in range(r)]
        if auto_pad == "SAME_UPPER":
            p = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            p = [t - t // 2 for t in total] + [t // 2 for t in total]
        return p, out
    if auto_pad == "VALID":
        p = [0] * (2 * r)
    else:
        p = list(pads) if pads else [0] * (2 * r)
    out = []
    for i in range(r):
        span = in_sp[i] + p[i] + p[i + r] - eff[i]
        if ceil_mode:
            o = -(-span // strides[i]) + 1
            # a window must start inside the input or the begin padding
            if (o - 1) * strides[i] >= in_sp[i] + p[i]:
                o -= 1
        else:
            o = span // strides[i] + 1
        out.append(o)
    return p, out


def pad_input(
    x: np.ndarray, pads: Sequence[int], value: float = 0.0, slot: str | None = None
) -> np.ndarray:
    """Zero (or ``value``) pads the spatial axes of an (N, C, *S) array; no copy without pads."""
    r = x.ndim - 2
    if not any(pads):
        return x
    lo = [max(0, p) for p in pads[:r]]
    hi = [max(0, p) for p in pads[r:]]
    shape = x.shape[:2] + tuple(x.shape[2 + i] + lo[i] + hi[i] for i in range(r))
    if slot is None:
        buf = np.full(shape, value, x.dtype)
    else:
        buf = scratch(slot, shape, x.dtype)
        buf.fill(value)
    # negative pads crop the input
    src = x[
        (slice(None), slice(None))
        + tuple(slice(max(0, -pads[i]), x.shape[2 + i] - max(0, -pads[i + r])) for i in range(r))
    ]
    dst = (slice(None), slice(None)) + tuple(
        slice(lo[i], lo[i] + src.shape[2 + i]) for i in range(r)
    )
    buf[dst] = src
    return buf


def window_view(
    xp: np.ndarray,
    k: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    out_sp: Sequence[int],
) -> np.ndarray:
    """Read-only strided view (N, C, *k, *out) of the padded input: element [n,c,*t,*o] is
    xp[n, c, *(o*stride + t*dilation)]."""
    st = xp.strides
    r = len(k)
    shape = xp.shape[:2] + tuple(k) + tuple(out_sp)
    strides_ = (
        st[:2]
        + tuple(st[2 + i] * dilations[i] for i in range(r))
        + tuple(st[2 + i] * strides[i] for i in range(r))
    )
    return as_strided(xp, shape=shape, strides=strides_, writeable=False)


def _tup(v: Sequence[int] | None) -> tuple[int, ...] | None:
    return None if v is None else tuple(v)


@functools.lru_cache(maxsize=1024)
def conv_geometry(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    auto_pad: str,
    dilations: tuple[int, ...] | None,
    kernel_shape: tuple[int, ...] | None,
    pads: tuple[int, ...] | None,
    strides: tuple[int, ...] | None,
) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    """(kernel, strides, dilations, pads, out spatial) of a conv, cached per shapes/attrs.

    Callers must not mutate the returned lists."""
    r = len(x_shape) - 2
    k = list(kernel_shape) if kernel_shape else list(w_shape[2:])
    s = list(strides) if strides else [1] * r
    d = list(dilations) if dilations else [1] * r
    p, out_sp = resolve_pads(x_shape[2:], k, s, d, pads, auto_pad)
    return k, s, d, p, out_sp


def _defaults(
    x: np.ndarray, kshape: Sequence[int] | None, w_shape: Sequence[int], strides, dilations
) -> tuple[list[int], list[int], list[int]]:
    r = x.ndim - 2
    k = list(kshape) if kshape else list(w_shape[2:])
    s = list(strides) if strides else [1] * r
    d = list(dilations) if dilations else [1] * r
    return k, s, d


# --------------------------------------------------------------------------- engine


def phase_taps(
    x: np.ndarray,
    p: Sequence[int],
    k: Sequence[int],
    s: Sequence[int],
    d: Sequence[int],
    out_sp: Sequence[int],
    fill: float = 0.0,
) -> tuple[np.ndarray, int, list[tuple[int, int, int]]]:
    """2-D taps as contiguous flat slices (the "extended row" trick).

    The padded input is split into stride phases, each flattened to (N, C, Hq*Wq). Tap (ki, kj)
    is then the slice ``src[:, :, a, b, off:off + oh*Wq]``: an (oh, Wq) image whose first ow
    columns are the tap's values and whose last Wq - ow columns are junk to be cropped.
    """
    n, c, h, w = x.shape
    wq, hq, taps, _ = flat_geometry(h, w, *map(tuple, (p, k, s, d, out_sp)))
    shape = (n, c, hq * s[0], wq * s[1])
    xp, fresh = bordered(shape, x.dtype, fill, (p[0], p[1], h, w))
    if fresh:
        # fill only the border once; later calls of this geometry rewrite only the interior
        xp[:, :, : p[0]] = fill
        xp[:, :, p[0] + h :] = fill
        xp[:, :, p[0] : p[0] + h, : p[1]] = fill
        xp[:, :, p[0] : p[0] + h, p[1] + w :] = fill
    xp[:, :, p[0] : p[0] + h, p[1] : p[1] + w] = x
    if s[0] == 1 and s[1] == 1:
        src = xp.reshape(n, c, 1, 1, hq * wq)
    else:
        src = scratch("phases", (n, c, s[0], s[1], hq, wq), x.dtype)
        np.copyto(src, xp.reshape(n, c, hq, s[0], wq, s[1]).transpose(0, 1, 3, 5, 2, 4))
        src = src.reshape(n, c, s[0], s[1], hq * wq)
    return src, wq, taps


@functools.lru_cache(maxsize=256)
def flat_geometry(
    h: int,
    w: int,
    p: tuple[int, ...],
    k: tuple[int, ...],
    s: tuple[int, ...],
    d: tuple[int, ...],
    out_sp: tuple[int, ...],
) -> tuple[int, int, list[tuple[int, int, int]], np.ndarray]:
    """(Wq, Hq, taps, offsets) of phase_taps for one geometry, cached (callers must not
    mutate them): tap t (kernel order) is ``(a, b, off)``, the slice ``off : off + oh*Wq`` of
    stride phase (a, b); ``offsets[t]`` is the same slice's start with the (s0, s1, Hq, Wq)
    phases back to back and flat (read-only)."""
    oh = out_sp[0]
    taps = []
    for ki in range(k[0]):
        qa, a = divmod(ki * d[0], s[0])
        for kj in range(k[1]):
            qb, b = divmod(kj * d[1], s[1])
            taps.append((a, b, qa, qb))
    wq = -(-(w + p[1] + p[3]) // s[1])
    hq = max(-(-(h + p[0] + p[2]) // s[0]), oh + max(t[2] for t in taps)) + 1
    flat = [(a, b, qa * wq + qb) for a, b, qa, qb in taps]
    offs = np.array([(a * s[1] + b) * hq * wq + off for a, b, off in flat], np.int64)
    offs.flags.writeable = False
    return wq, hq, flat, offs


def bordered(
    shape: tuple[int, ...], dtype: np.dtype, fill: float, interior: tuple[int, ...]
) -> tuple[np.ndarray, bool]:
    """A per-thread padded-input buffer kept per (shape, dtype, fill, interior box), so its
    border keeps the fill value between calls; returns (buffer, whether the border needs
    filling). Only the interior may be written by callers."""
    dtype = np.dtype(dtype)
    if math.prod(shape) * dtype.itemsize > _SCRATCH_MAX // 4:
        return np.empty(shape, dtype), True
    cache = getattr(_scratch, "bordered", None)
    if cache is None:
        cache = _scratch.bordered = {}
    key = (shape, dtype.str, float(fill), interior)
    buf = cache.get(key)
    if buf is not None:
        return buf, False
    buf = np.empty(shape, dtype)
    if sum(b.nbytes for b in cache.values()) + buf.nbytes > _SCRATCH_MAX:
        cache.clear()  # bounded: at most _SCRATCH_MAX bytes kept per thread
    cache[key] = buf
    return buf, True


def _conv_float(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    *,
    auto_pad: str,
    dilations: Sequence[int] | None,
    group: int,
    kernel_shape: Sequence[int] | None,
    pads: Sequence[int] | None,
    strides: Sequence[int] | None,
    crop: Callable[[np.ndarray, np.ndarray], object] | None = None,
) -> np.ndarray:
    """Conv (+ bias) in x's dtype (float32/float64); returns a fresh C-contiguous (N, M, *out).

    Where the product comes out with junk columns past each row (the "extended row" taps),
    ``crop(src, out)``, if given, writes the cropped product ``src`` into ``out`` instead of
    a NumPy copy (a compiled epilogue crops, adds bias and residual and clamps in one pass);
    it is the caller's to know whether it was called."""
    n, c = x.shape[:2]
    m = w.shape[0]
    r = x.ndim - 2
    k, s, d, p, out_sp = conv_geometry(
        x.shape,
        w.shape,
        auto_pad,
        _tup(dilations),
        _tup(kernel_shape),
        _tup(pads),
        _tup(strides),
    )
    hw = math.prod(out_sp)
    if group == 1 and n == 1 and not any(p) and all(v == 1 for v in k) and all(v == 1 for v in s):
        # pointwise: one matmul straight from the input into the output, no copies
        out = take((1, m) + tuple(out_sp), x.dtype)
        xs = x.reshape(c, hw) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(c, hw)
        matmul(w.reshape(m, c), xs, out=out.reshape(m, hw))
        if b is not None:
            out += b.astype(x.dtype, copy=False).reshape((m,) + (1,) * r)
        return out
    if depthwise_jit(x.shape, x.dtype, group, (k, s, d, p, out_sp)):
        return _depthwise_compiled(x, w, b, (k, s, d, p, out_sp))
    cg, mg = c // group, m // group
    kk = math.prod(k)
    if (
        group == c
        and group > 1
        and r == 2
        and kk > 1
        and s == [1, 1]
        and d == [1, 1]
        and min(p) >= 0
        and p[0] + p[2] == k[0] - 1
        and p[1] + p[3] == k[1] - 1
    ):
        return _depthwise_same(x, w, b, p, k)
    bias = None if b is None else b.astype(x.dtype, copy=False).reshape((m,) + (1,) * r)
    depthwise = group == c and mg == 1 and group > 1

    # flat taps pay for Wq - ow junk columns per row (and a phase split when strided): worth it
    # for wide outputs and stride-1 depthwise convs; a strided conv of many channels copies
    # its windows straight from the padded input faster than it splits phases
    wq = -(-(x.shape[3] + p[1] + p[3]) // s[1]) if r == 2 else 0
    flat = r == 2 and (
        s == [1, 1] if depthwise else wq <= 1.1 * out_sp[1] and (s == [1, 1] or cg < 16)
    )
    if r == 2 and kk > 1 and min(p) >= 0 and flat:
        src, wq, taps = phase_taps(x, p, k, s, d, out_sp)
        ext = out_sp[0] * wq
        # depthwise convs are the cg == 1 case: a batch of (1, k*k) @ (k*k, ext) products
        cols = scratch("cols", (n, c, kk, ext), x.dtype)
        if s == [1, 1]:
            # every tap is one flat slice of the single phase: one strided copy of them all
            st = src.strides
            view = as_strided(
                src,
                (n, c, k[0], k[1], ext),
                (st[0], st[1], st[4] * d[0] * wq, st[4] * d[1], st[4]),
                writeable=False,
            )
            np.copyto(cols.reshape(n, c, k[0], k[1], ext), view)
        else:
            for t, (a, bb, off) in enumerate(taps):
                cols[:, :, t] = src[:, :, a, bb, off : off + ext]
        cols = cols.reshape(n, group, cg * kk, ext)
        acc = scratch("acc", (n, group, mg, ext), x.dtype)
        wg = w.reshape(group, mg, cg * kk)
        if n == 1 and group == 1:
            matmul(wg[0], cols[0, 0], out=acc[0, 0])
        else:
            matmul(wg, cols, out=acc)
        acc = acc.reshape(n, m, out_sp[0], wq)[..., : out_sp[1]]
        out = take((n, m) + tuple(out_sp), x.dtype)
        if crop is not None:
            crop(acc, out)
        elif bias is not None:
            np.add(acc, bias, out=out)
        else:
            np.copyto(out, acc)
        return out

    out = take((n, m) + tuple(out_sp), x.dtype)
    o3 = out.reshape(n, group, mg, hw)
    if kk == 1 and not any(p):
        # pointwise: strided subsampling (if any) then a plain matmul
        xs = (
            x if all(v == 1 for v in s) else x[(Ellipsis,) + tuple(slice(None, None, v) for v in s)]
        )
        xs = np.ascontiguousarray(xs).reshape(n, group, cg, hw)
        wg = w.reshape(group, mg, cg)
        if n == 1 and group == 1:
            matmul(wg[0], xs[0, 0], out=o3[0, 0])
        else:
            matmul(wg, xs, out=o3)
    else:
        if r == 2 and any(p) and min(p) >= 0:
            xp = _zero_bordered(x, p)
        else:
            xp = pad_input(x, p, slot="pad")
        view = window_view(xp, k, s, d, out_sp)
        cols = scratch("cols", (n, c) + tuple(k) + tuple(out_sp), x.dtype)
        np.copyto(cols, view)
        cols = cols.reshape(n, group, cg * kk, hw)
        wg = w.reshape(group, mg, cg * kk)
        if n == 1 and group == 1:
            matmul(wg[0], cols[0, 0], out=o3[0, 0])
        else:
            matmul(wg, cols, out=o3)
    if bias is not None:
        out += bias
    return out


def depthwise_jit(shape: tuple[int, ...], dtype: np.dtype, group: int, geometry: tuple) -> bool:
    """Whether a grouped conv of inputs of ``shape`` computed in ``dtype`` is a 2-D depthwise
    one the compiled loops (``_jit``) run."""
    return (
        _jit.available
        and len(shape) == 4
        and group == shape[1]
        and group > 1
        and np.dtype(dtype).type in _FLOATS
        and min(geometry[3]) >= 0
    )


def _depthwise_compiled(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    geometry: tuple,
    lo: float = -np.inf,
    hi: float = np.inf,
) -> np.ndarray:
    """2-D depthwise conv (+ bias, clamped to [lo, hi]) by the compiled loops of ``_jit``."""
    out = take((x.shape[0], w.shape[0]) + tuple(geometry[4]), x.dtype)
    xc = x if x.flags.c_contiguous else np.ascontiguousarray(x)
    return depthwise_kernel(x.shape[2:], w, b, x.dtype, geometry, lo, hi)(xc, out)


def depthwise_kernel(
    in_sp: Sequence[int],
    w: np.ndarray,
    b: np.ndarray | None,
    dtype: np.dtype,
    geometry: tuple,
    lo: float = -np.inf,
    hi: float = np.inf,
    fill: float = 0.0,
) -> KernelFn:
    """The compiled depthwise conv (``_jit.depthwise_fn``, ``fn(x, out) -> out``) of inputs of
    spatial size ``in_sp``, from the conv's (kernel, strides, dilations, pads, out size)."""
    k, s, d, p, out_sp = geometry
    wq, hq, _, offs = flat_geometry(*in_sp, *map(tuple, (p, k, s, d, out_sp)))
    layout = (wq, hq, offs)
    return _jit.depthwise_fn(w, b, dtype, layout, tuple(s), (p[0], p[1]), lo, hi, fill, tuple(d))


def _depthwise_same(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, p: Sequence[int], k: Sequence[int]
) -> np.ndarray:
    """Stride-1, undilated, size-preserving 2-D depthwise conv (group == C, any multiplier).

    The input is flattened per channel into a kept buffer with zero runs before and after, so
    tap (i, j) is the contiguous run starting at ``i*W + j``: every tap lands in the im2col
    buffer with one copy and no junk columns (so no crop), except the few positions that
    wrap around a row edge, which are zeroed. A constant ones row in the column buffer
    carries the bias through the batched matmul, which writes the output directly."""
    n, c, h, wd = x.shape
    m = w.shape[0]
    mg = m // c
    kk = k[0] * k[1]
    hw = h * wd
    key = (x.shape, x.dtype.str, tuple(p), tuple(k))
    plans = getattr(_scratch, "dw_plans", None)
    if plans is None:
        plans = _scratch.dw_plans = {}
    plan = plans.get(key)
    if plan is None:
        plan = _depthwise_plan(x.shape, x.dtype, p, k)
        if plan[-1].nbytes <= _SCRATCH_MAX // 4:
            if len(plans) >= 64:
                plans.clear()  # bounded: at most 64 geometries (each <= 16 MiB) per thread
            plans[key] = plan
    xin, view, taps, edges, cols = plan
    np.copyto(xin, x.reshape(n, c, hw))
    np.copyto(taps, view)
    for e in edges:
        e.fill(0)
    wk = w.reshape(c, mg, kk)
    if b is None:
        wg = np.concatenate((wk, np.zeros((c, mg, 1), wk.dtype)), axis=2)
    else:
        wg = np.concatenate((wk, b.astype(x.dtype, copy=False).reshape(c, mg, 1)), axis=2)
    out = take((n, m, h, wd), x.dtype)
    matmul(wg, cols, out=out.reshape(n, c, mg, hw))
    return out


def _depthwise_plan(shape: tuple[int, ...], dtype: np.dtype, p: Sequence[int], k: Sequence[int]):
    """Buffers and views of _depthwise_same for one geometry: (input slot, tap view of the
    flat padded input, tap rows of the column buffer, wrap-around edges to zero, columns)."""
    n, c, h, wd = shape
    kh, kw = k
    kk = kh * kw
    hw = h * wd
    lead = p[0] * wd + p[1]
    xp = np.zeros((n, c, lead + hw + p[2] * wd + p[3]), dtype)
    cols = np.ones((n, c, kk + 1, hw), dtype)  # row kk stays ones: it multiplies the bias
    st = xp.strides
    view = np.ndarray((n, c, kh, kw, hw), dtype, xp, 0, (st[0], st[1], st[2] * wd, st[2], st[2]))
    taps = cols[:, :, :kk].reshape(n, c, kh, kw, hw)
    rows = taps.reshape(n, c, kh, kw, h, wd)
    edges = []
    for j in range(kw):
        # tap column j reads input column x + j - p[1]; outside [0, W) it wrapped a row edge
        sh = j - p[1]
        if sh < 0:
            edges.append(rows[:, :, :, j, :, : min(-sh, wd)])
        elif sh > 0:
            edges.append(rows[:, :, :, j, :, max(wd - sh, 0) :])
    return xp[:, :, lead : lead + hw], view, taps, edges, cols


def _zero_bordered(x: np.ndarray, p: Sequence[int]) -> np.ndarray:
    """x zero-padded by non-negative 2-D pads [top, left, bottom, right] in a kept buffer."""
    n, c, h, w = x.shape
    shape = (n, c, h + p[0] + p[2], w + p[1] + p[3])
    xp, fresh = bordered(shape, x.dtype, 0.0, (p[0], p[1], h, w))
    if fresh:
        xp.fill(0)
    xp[:, :, p[0] : p[0] + h, p[1] : p[1] + w] = x
    return xp


def _compute_dtype(x: np.ndarray) -> np.dtype:
    return x.dtype if x.dtype in _FLOATS else np.dtype(np.float32)


def const_like(value: float, like: np.ndarray) -> np.ndarray:
    """A read-only array shaped like ``like`` filled with ``value`` (cached per thread).

    np.maximum/np.minimum against a same-shape array take numpy's SIMD path; against a
    scalar they do not (about 3.5x slower), and masked writes are slower still.
    """
    key = (like.dtype.str, float(value))
    consts = getattr(_scratch, "consts", None)
    if consts is None:
        consts = _scratch.consts = {}
    buf = consts.get(key)
    if buf is None or buf.size < like.size:
        buf = np.full(max(like.size, 1024), value, like.dtype)
        buf.flags.writeable = False
        if buf.nbytes <= _SCRATCH_MAX:
            consts[key] = buf
    return buf[: like.size].reshape(like.shape)


def apply_activation(y: np.ndarray, activation: str, params: Sequence[float]) -> np.ndarray:
    """Applies a fused activation in place on ``y`` (the kernel's own buffer) and returns it."""
    if not activation:
        return y
    t = y.dtype.type
    if activation == "Relu":
        np.maximum(y, const_like(0.0, y), out=y)
    elif activation == "LeakyRelu":
        alpha = t(params[0] if params else 0.01)
        if alpha >= 0:
            # max(y, a*y) for a <= 1, min(y, a*y) for a > 1
            ay = np.multiply(y, alpha, out=scratch("act_tmp", y.shape, y.dtype))
            (np.maximum if alpha <= 1 else np.minimum)(y, ay, out=y)
        else:
            np.copyto(y, y * alpha, where=y < 0)
    elif activation == "Clip":
        if len(params) > 1:
            # one pass (NaN stays NaN; lo > hi gives hi everywhere, as max-then-min does)
            clip(y, t(params[0]), t(params[1]), out=y)
            return y
        if len(params) > 0:
            np.maximum(y, const_like(params[0], y), out=y)
        if len(params) > 1:
            np.minimum(y, const_like(params[1], y), out=y)
    elif activation == "Sigmoid":
        with np.errstate(over="ignore"):
            np.negative(y, out=y)
            np.exp(y, out=y)
            y += t(1)
            np.reciprocal(y, out=y)
    elif activation == "Tanh":
        np.tanh(y, out=y)
    elif activation == "HardSigmoid":
        alpha = t(params[0] if len(params) > 0 else 0.2)
        beta = t(params[1] if len(params) > 1 else 0.5)
        y *= alpha
        y += beta
        np.maximum(y, const_like(0.0, y), out=y)
        np.minimum(y, const_like(1.0, y), out=y)
    else:
        raise ValueError(f"unsupported fused activation {activation!r}")
    return y


# --------------------------------------------------------------------------- float ops


@kernel("Conv")
def conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX Conv-22: N-d grouped, strided, dilated, padded cross-correlation plus bias
    (added by the compiled epilogue where ``fused_conv`` would use one)."""
    geometry = dict(
        auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
        pads=pads, strides=strides,
    )  # fmt: skip
    if b is not None and _may_compile(x, w, group):
        return fused_conv(x, w, b, **geometry)
    cd = _compute_dtype(x)
    y = _conv_float(x.astype(cd, copy=False), w.astype(cd, copy=False), b, **geometry)
    return y.astype(x.dtype, copy=False)


@kernel("FusedConv", domain="modelloader")
def fused_conv(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    z: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    activation: str = "",
    activation_params: Sequence[float] = (),
    shuffle: int = 0,
) -> np.ndarray:
    """modelloader FusedConv: act(Conv(X, W, B) + Z); Z is an optional residual of output shape.

    ``shuffle = g > 0`` appends a channel shuffle with g groups: output channel ``j*g + i``
    is channel ``i*(M/g) + j`` of the result (ONNX's Reshape/Transpose/Reshape idiom)."""
    cd = _compute_dtype(x)
    xc, wc = x.astype(cd, copy=False), w.astype(cd, copy=False)
    geometry = dict(
        auto_pad=auto_pad,
        dilations=dilations,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    bounds = clamp_bounds(activation, activation_params)
    bare = b is None and z is None and not shuffle and bounds == (-np.inf, np.inf)
    # the epilogue pass alone does not pay for loading numba: it runs compiled once a
    # depthwise conv has loaded it, else through llvmlite for large outputs (outputs are
    # identical either way); a bare conv has no epilogue
    compiled = _may_compile(x, w, group)
    if bounds is not None and compiled and not bare and (z is None or z.dtype == cd):
        y = _fused_compiled(xc, wc, b, z, group, geometry, bounds, shuffle)
        if y is not None:
            return y.astype(x.dtype, copy=False)
    if shuffle and _shuffles_in_matmul(wc, group, shuffle, geometry):
        y, in_conv_order = _pointwise_shuffled(xc, wc, b, group)
    else:
        y = in_conv_order = _conv_float(xc, wc, b, group=group, **geometry)
    if z is not None:
        np.add(in_conv_order, z.reshape(in_conv_order.shape), out=in_conv_order, casting="unsafe")
    apply_activation(y, activation, activation_params)
    if shuffle and y is in_conv_order:  # not written shuffled: shuffle a copy
        n, m = y.shape[:2]
        out = take(y.shape, y.dtype)
        g = shuffle
        np.copyto(out.reshape(n, m // g, g, -1), y.reshape(n, g, m // g, -1).transpose(0, 2, 1, 3))
        y = out
    return y.astype(x.dtype, copy=False)


def _may_compile(x: np.ndarray, w: np.ndarray, group: int) -> bool:
    """Whether a conv may run through the compiled kernels (``_fused_compiled``), judged
    before any geometry is worked out: numba is loaded; or llvmlite is there and the output
    may be large enough for it (bounded by the input's spatial size: outputs of unusually
    wide pads are left to NumPy); or the conv is depthwise (its compiled loop loads numba)."""
    if _jit.loaded() or (_jit.available and group > 1 and group == x.shape[1]):
        return True
    n, c = x.shape[:2]
    return _llvm.available and n * w.shape[0] * (x.size // max(n * c, 1)) >= _llvm.MIN_SIZE


def _fused_compiled(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    z: np.ndarray | None,
    group: int,
    geometry: dict,
    bounds: tuple[float, float],
    shuffle: int,
) -> np.ndarray | None:
    """fused_conv with a clamp (or no) activation through the compiled kernels: depthwise
    convs clamp as they go; other convs leave bias, residual, clamp and shuffle to one pass
    (``_jit.epilogue``) instead of one NumPy pass each once numba is loaded, or without a
    shuffle to llvmlite's pass for large outputs (None: run the NumPy passes)."""
    geo = conv_geometry(
        x.shape,
        w.shape,
        geometry["auto_pad"],
        *map(_tup, (geometry["dilations"], geometry["kernel_shape"])),
        _tup(geometry["pads"]),
        _tup(geometry["strides"]),
    )
    depthwise = depthwise_jit(x.shape, x.dtype, group, geo)
    if depthwise and z is None and not shuffle:
        return _depthwise_compiled(x, w, b, geo, *bounds)
    if not depthwise and not _jit.loaded():
        size = x.shape[0] * w.shape[0] * math.prod(geo[4])
        if shuffle or not _llvm.enabled(size):
            return None
        epilogue = _llvm.epilogue_fn(b, w.shape[0], x.dtype, *bounds)
        cropped: list[bool] = []

        def crop(src: np.ndarray, out: np.ndarray) -> None:
            epilogue(out, z, src)
            cropped.append(True)

        y = _conv_float(x, w, None, group=group, crop=crop, **geometry)
        return y if cropped else epilogue(y, z)
    if shuffle and _shuffles_in_matmul(w, group, shuffle, geometry):
        y, _ = _pointwise_shuffled(x, w, None, group)
        perm = _channel_map(w.shape[0], shuffle)
        return _jit.epilogue(y, b, z, *bounds, dst_channels=perm)
    y = _conv_float(x, w, None, group=group, **geometry)
    if shuffle:
        out = take(y.shape, y.dtype)
        perm = _channel_map(w.shape[0], shuffle)
        return _jit.epilogue(out, b, z, *bounds, src=y, dst_channels=perm)
    return _jit.epilogue(y, b, z, *bounds)


@prepares("Conv")
def _prepare_conv(consts: tuple, **attrs: object) -> KernelFn | None:
    return prepared_float_conv(conv, consts, attrs)


@prepares("FusedConv", domain="modelloader")
def _prepare_fused_conv(consts: tuple, **attrs: object) -> KernelFn | None:
    return prepared_float_conv(fused_conv, consts, attrs)


def prepared_float_conv(generic: KernelFn, consts: tuple, attrs: dict) -> KernelFn | None:
    """A float Conv/FusedConv node with constant weights, run through one recipe per input
    shape: a pointwise conv is one matmul into the output plus one epilogue pass, a 2-D
    depthwise conv the compiled loops with the weights laid out once. Other shapes, dtypes
    and inputs (a weight that is not the constant, a shuffle, a non-clamp activation) call
    ``generic`` with the node's attributes, as an unprepared node does."""
    w = consts[1] if len(consts) > 1 else None
    b = consts[2] if len(consts) > 2 else None
    if type(w) is not np.ndarray or w.ndim != 4 or w.dtype.type not in _FLOATS:
        return None
    if b is not None and (type(b) is not np.ndarray or b.shape != (w.shape[0],)):
        return None
    activation = str(attrs.get("activation", ""))
    params = tuple(attrs.get("activation_params", ()))  # type: ignore[arg-type]
    bounds = clamp_bounds(activation, params)
    if bounds is None:
        return None
    shuffle = int(attrs.get("shuffle", 0))  # type: ignore[call-overload]
    group = int(attrs.get("group", 1))  # type: ignore[call-overload]
    geo_attrs = (
        attrs.get("auto_pad", "NOTSET"),
        *(_tup(attrs.get(k)) for k in ("dilations", "kernel_shape", "pads", "strides")),  # type: ignore[arg-type]
    )
    dt = w.dtype
    m = w.shape[0]
    b3 = None if b is None else b.astype(dt).reshape(m, 1, 1)
    epilogues: dict = {}  # the compiled epilogue passes, each built on first use

    def finish(out: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        # numba's pass once it is loaded, else llvmlite's for large outputs (identical results)
        lib = _jit if _jit.loaded() else _llvm if _llvm.enabled(out.size) else None
        if lib is not None:
            fn = epilogues.get(lib)
            if fn is None:
                fn = epilogues[lib] = lib.epilogue_fn(b, m, dt, *bounds)
            return fn(out, z)
        if b3 is not None:
            out += b3
        if z is not None:
            np.add(out, z.reshape(out.shape), out=out, casting="unsafe")
        return apply_activation(out, activation, params)

    plain = b is None and not activation

    def recipe(shape: tuple[int, ...]) -> KernelFn | None:
        if len(shape) != 4 or shape[1] != w.shape[1] * group or m % group:
            return None
        geo = conv_geometry(shape, w.shape, *geo_attrs)
        k, s, d, p, out_sp = geo
        n, c = shape[:2]
        oshape = (n, m, *out_sp)
        if shuffle:
            if not _shuffles_in_matmul(
                w, group, shuffle, {"pads": p, "strides": s, "auto_pad": "NOTSET"}
            ):
                return None
            return _shuffled_recipe(w, b, bounds, group)
        if group == 1 and n == 1 and not any(p) and k == [1, 1] and s == [1, 1]:
            w2 = np.ascontiguousarray(w.reshape(m, c))
            hw = out_sp[0] * out_sp[1]

            def pointwise(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
                out = take(oshape, dt)
                matmul(w2, x.reshape(c, hw), out=out.reshape(m, hw))
                return out if plain and z is None else finish(out, z)

            return pointwise
        if _winograd_fits(shape, dt, group, geo, w.shape):
            return winograd_recipe(shape, w, b, bounds)
        if depthwise_jit(shape, dt, group, geo):
            dw = depthwise_kernel(shape[2:], w, b, dt, geo, *bounds)

            def depthwise(x: np.ndarray, z: np.ndarray | None) -> np.ndarray | None:
                if z is not None:
                    return None
                return dw(x if x.flags.c_contiguous else np.ascontiguousarray(x), take(oshape, dt))

            return depthwise
        return None

    recipes = Recipes(recipe)

    def run(x: np.ndarray, w_: np.ndarray, b_: np.ndarray | None = None, z=None) -> np.ndarray:  # noqa: ANN001
        if w_ is w and b_ is b and x.dtype == dt and (z is None or z.dtype == dt):
            fn = recipes.get(x.shape)
            if fn is not None:
                y = fn(x, z)
                if y is not None:
                    return y
        return generic(x, w_, b_, **attrs) if z is None else generic(x, w_, b_, z, **attrs)

    return run


# Winograd F(2x2, 3x3): B^T d B of 4x4 patches, A^T m A of the products (_llvm_wino)
_WINO_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])


def _winograd_fits(shape: tuple[int, ...], dt: np.dtype, group: int, geo: tuple, wshape) -> bool:
    """Whether a conv runs as Winograd F(2x2, 3x3) products: float32, one image, ungrouped
    3x3 at stride 1 with pads 1 ("same"), at least 64 input channels (with fewer the 16
    products are too thin for BLAS to gain: SqueezeNet's expand convs) and an output large
    enough for llvmlite's loops."""
    k, s, d, p, out_sp = geo
    return (
        dt == np.float32 and group == 1 and shape[0] == 1 and k == [3, 3] and s == [1, 1]
        and d == [1, 1] and list(p) == [1, 1, 1, 1] and wshape[1] >= 64
        and _llvm.enabled(wshape[0] * out_sp[0] * out_sp[1]) and _llvm._compiled("wino")
    )  # fmt: skip


def winograd_recipe(
    shape: tuple[int, ...], w: np.ndarray, b: np.ndarray | None, bounds: tuple[float, float]
) -> KernelFn:
    """``fn(x, z) -> y``: clamp(conv3x3(x, w) + b (+ z), *bounds) for float32 x of ``shape``
    (1, C, H, W) with pads 1 as 16 products (M, C) @ (C, tiles) of Winograd-transformed
    filters and 4x4 input patches, 2.25x fewer multiply-adds than the im2col product; the
    transforms and the epilogue are llvmlite loops (``_llvm_wino``)."""
    _, c, h, wd = shape
    m = w.shape[0]
    g = _WINO_G
    u = np.einsum("ij,mcjk,lk->ilmc", g, w.astype(np.float64), g)
    filters = np.ascontiguousarray(u.reshape(16, m, c), np.float32)
    bias = np.zeros(m, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
    th, tw = (h + 1) // 2, (wd + 1) // 2
    hp, wp, tt = 2 * th + 2, 2 * tw + 2, th * tw
    transform_in = _llvm._kernel("wino_in")
    out_fns = {z: _llvm._kernel("wino_out", z) for z in (False, True)}
    lo_c, hi_c = ctypes.c_float(bounds[0]), ctypes.c_float(bounds[1])

    def run(x: np.ndarray, z: np.ndarray | None) -> np.ndarray:
        # (C + 1) planes: the patch loads of the last row reach up to 32 floats past a plane
        xp, fresh = bordered((c + 1, hp, wp), np.float32, 0.0, (1, 1, h, wd))
        if fresh:
            xp[...] = 0
        xp[:c, 1 : h + 1, 1 : wd + 1] = x[0]
        v = scratch("cols", (16, c, tt), np.float32)  # the im2col slot: one buffer serves both
        transform_in(v.ctypes.data, xp.ctypes.data, c, hp, wp, th, tw)
        prod = scratch("acc", (16 * m * tt + 16,), np.float32)
        np.matmul(filters, v, out=prod[: 16 * m * tt].reshape(16, m, tt))
        out = take((1, m, h, wd), np.float32)
        zz = None if z is None else np.ascontiguousarray(z, np.float32).reshape(out.shape)
        out_fns[zz is not None](
            out.ctypes.data, prod.ctypes.data, bias.ctypes.data,
            None if zz is None else zz.ctypes.data, m, th, tw, h, wd, lo_c, hi_c,
        )  # fmt: skip
        return out

    return run


def _shuffled_recipe(
    w: np.ndarray, b: np.ndarray | None, bounds: tuple[float, float], group: int
) -> KernelFn:
    """The prepared form of FusedConv's compiled shuffle path (``_fused_compiled``): the
    pointwise grouped conv written in shuffled order (``_pointwise_shuffled``), then one
    epilogue pass with the channel map bound once; None (the generic kernel) until numba
    is loaded, as there."""
    m = w.shape[0]
    perm = _channel_map(m, group)
    epilogues: list = []

    def shuffled(x: np.ndarray, z: np.ndarray | None) -> np.ndarray | None:
        if not _jit.loaded():
            return None
        if not epilogues:
            epilogues.append(_jit.epilogue_fn(b, m, w.dtype, *bounds, dst_channels=perm))
        y, _ = _pointwise_shuffled(x, w, None, group)
        return epilogues[0](y, z)

    return shuffled


@functools.lru_cache(maxsize=256)
def _channel_map(m: int, shuffle: int) -> np.ndarray:
    """Where conv channel c lands after a channel shuffle with ``shuffle`` groups."""
    c = np.arange(m)
    mg = m // shuffle
    perm = (c % mg) * shuffle + c // mg
    perm.flags.writeable = False  # cached and shared
    return perm


def clamp_bounds(activation: str, params: Sequence[float]) -> tuple[float, float] | None:
    """The [lo, hi] a fused activation clamps to, or None when it is not a clamp."""
    if not activation:
        return (-np.inf, np.inf)
    if activation == "Relu":
        return (0.0, np.inf)
    if activation == "Clip" and len(params) > 1 and params[0] <= params[1]:
        return (float(params[0]), float(params[1]))
    return None


def _shuffles_in_matmul(w: np.ndarray, group: int, shuffle: int, geometry: dict) -> bool:
    """Whether a conv is pointwise with ``group == shuffle``, so its grouped matmul can write
    the shuffled layout directly (``_pointwise_shuffled``)."""
    return (
        group == shuffle
        and all(v == 1 for v in w.shape[2:])
        and not any(geometry["pads"] or ())
        and all(v == 1 for v in geometry["strides"] or ())
        and geometry["auto_pad"] in ("NOTSET", "VALID")
    )


def _pointwise_shuffled(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, group: int
) -> tuple[np.ndarray, np.ndarray]:
    """A pointwise grouped conv (+ bias) written in channel-shuffled order: (the output, its
    (n, group, M/group, hw) view in the conv's own channel order)."""
    n, m = x.shape[0], w.shape[0]
    hw, mg = math.prod(x.shape[2:]), m // group
    out = take((n, m) + tuple(x.shape[2:]), x.dtype)
    # group i, row j of the conv is channel j*group + i of the shuffled output
    view = out.reshape(n, mg, group, hw).transpose(0, 2, 1, 3)
    xs = np.ascontiguousarray(x).reshape(n, group, x.shape[1] // group, hw)
    matmul(w.reshape(group, mg, -1), xs, out=view)
    if b is not None:
        np.add(view, b.astype(x.dtype, copy=False).reshape(group, mg, 1), out=view)
    return out, view


def col2im_add(
    cols: np.ndarray,
    in_sp: Sequence[int],
    k: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads_b: Sequence[int],
    out_sp: Sequence[int],
) -> np.ndarray:
    """Scatter-adds cols (N, C, *k, *in_sp) into an (N, C, *out_sp) image.

    Column [t, i] lands at image position i*stride + t*dilation - pad_begin; positions
    outside the image are dropped. Loops over kernel taps only.
    """
    n, c = cols.shape[:2]
    r = len(k)
    off = [max(0, -pb) for pb in pads_b]
    full = [
        off[i]
        + max((in_sp[i] - 1) * strides[i] + (k[i] - 1) * dilations[i] + 1, pads_b[i] + out_sp[i])
        for i in range(r)
    ]
    buf = np.zeros((n, c) + tuple(full), cols.dtype)
    for idx in np.ndindex(*k):
        dst = (slice(None), slice(None)) + tuple(
            slice(
                off[i] + idx[i] * dilations[i],
                off[i] + idx[i] * dilations[i] + (in_sp[i] - 1) * strides[i] + 1,
                strides[i],
            )
            for i in range(r)
        )
        buf[dst] += cols[(slice(None), slice(None)) + idx]
    crop = (slice(None), slice(None)) + tuple(
        slice(off[i] + pads_b[i], off[i] + pads_b[i] + out_sp[i]) for i in range(r)
    )
    return buf[crop]


@kernel("ConvTranspose")
def conv_transpose(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    output_padding: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX ConvTranspose-22: gradient of Conv; one sgemm per group then a tap-wise col2im."""
    cd = _compute_dtype(x)
    xf = x.astype(cd, copy=False)
    wf = w.astype(cd, copy=False)
    n, c = x.shape[:2]
    r = x.ndim - 2
    in_sp = list(x.shape[2:])
    k, s, d = _defaults(x, kernel_shape, w.shape, strides, dilations)
    op = list(output_padding) if output_padding else [0] * r
    mg = w.shape[1]
    m = mg * group
    cg = c // group
    full = [s[i] * (in_sp[i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 for i in range(r)]
    if output_shape:
        out_sp = list(output_shape)[-r:]
        total = [full[i] - out_sp[i] for i in range(r)]
        if auto_pad == "SAME_UPPER":
            pb = [t // 2 for t in total]
        else:
            pb = [t - t // 2 for t in total]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_sp = [in_sp[i] * s[i] for i in range(r)]
        total = [full[i] - out_sp[i] for i in range(r)]
        if auto_pad == "SAME_UPPER":
            pb = [t // 2 for t in total]
        else:
            pb = [t - t // 2 for t in total]
    else:
        p = list(pads) if pads and auto_pad != "VALID" else [0] * (2 * r)
        pb = p[:r]
        out_sp = [full[i] - p[i] - p[i + r] for i in range(r)]
    kk = math.prod(k)
    hw = math.prod(in_sp)
    # cols[n, g, (mg, *k), hw] = W_g^T @ X_g
    wt = wf.reshape(group, cg, mg * kk).transpose(0, 2, 1)
    cols = matmul(wt, np.ascontiguousarray(xf).reshape(n, group, cg, hw))
    cols = cols.reshape((n, m) + tuple(k) + tuple(in_sp))
    y = col2im_add(cols, in_sp, k, s, d, pb, out_sp)
    y = np.ascontiguousarray(y)
    if b is not None:
        y.reshape(n, m, -1)[...] += b.astype(cd, copy=False).reshape(m, 1)
    return y.astype(x.dtype, copy=False)


@kernel("Col2Im")
def col2im(
    x: np.ndarray,
    image_shape: np.ndarray,
    block_shape: np.ndarray,
    *,
    dilations: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX Col2Im-18: rearranges (N, C*prod(block), L) columns into (N, C, *image) summing overlaps."""
    img = [int(v) for v in image_shape]
    k = [int(v) for v in block_shape]
    r = len(img)
    s = list(strides) if strides else [1] * r
    d = list(dilations) if dilations else [1] * r
    p = list(pads) if pads else [0] * (2 * r)
    _, in_sp = resolve_pads(img, k, s, d, p, "NOTSET")
    n = x.shape[0]
    c = x.shape[1] // math.prod(k)
    cols = x.reshape((n, c) + tuple(k) + tuple(in_sp))
    return np.ascontiguousarray(col2im_add(cols, in_sp, k, s, d, p[:r], img))


# --------------------------------------------------------------------------- integer ops


def _conv_exact(
    x: np.ndarray, w: np.ndarray, *, auto_pad, dilations, group, kernel_shape, pads, strides
) -> np.ndarray:
    """Integer conv of zero-point-shifted operands, accumulated exactly (float64 BLAS) -> int32."""
    y = _conv_float(
        x.astype(np.float64),
        w.astype(np.float64),
        None,
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    return y.astype(np.int32)


def _shift_w(w: np.ndarray, zp: np.ndarray | None) -> np.ndarray:
    wi = w.astype(np.int32)
    if zp is not None:
        zp = np.asarray(zp).astype(np.int32)
        if zp.ndim == 1 and zp.size == w.shape[0] and zp.size > 1:
            zp = zp.reshape((-1,) + (1,) * (w.ndim - 1))
        wi -= zp
    return wi


@kernel("ConvInteger")
def conv_integer(
    x: np.ndarray,
    w: np.ndarray,
    x_zero_point: np.ndarray | None = None,
    w_zero_point: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX ConvInteger-10: int32 conv of (x - x_zp) and (w - w_zp); padding contributes 0."""
    xi = x.astype(np.int32)
    if x_zero_point is not None:
        xi -= np.asarray(x_zero_point).astype(np.int32)
    return _conv_exact(
        xi,
        _shift_w(w, w_zero_point),
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )


def requantize(
    acc: np.ndarray, multiplier: np.ndarray, zero_point: np.ndarray | None, dtype: np.dtype
) -> np.ndarray:
    """int32 accumulator -> saturate(round_half_even(acc * multiplier) + zero_point) in ``dtype``."""
    y = acc.astype(np.float64) * np.asarray(multiplier).astype(np.float64)
    np.rint(y, out=y)
    if zero_point is not None:
        y += np.asarray(zero_point).astype(np.float64)
    info = np.iinfo(dtype)
    clip(y, info.min, info.max, out=y)
    return y.astype(dtype)


@kernel("QLinearConv")
def qlinear_conv(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray,
    w: np.ndarray,
    w_scale: np.ndarray,
    w_zero_point: np.ndarray,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX QLinearConv-10: int32 conv (+ int32 bias) requantized with x_s*w_s/y_s, round-half-even."""
    xi = x.astype(np.int32)
    if x_zero_point is not None:
        xi -= np.asarray(x_zero_point).astype(np.int32)
    acc = _conv_exact(
        xi,
        _shift_w(w, w_zero_point),
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
    )
    if b is not None:
        acc += b.astype(np.int32).reshape((-1,) + (1,) * (x.ndim - 2))
    ws = np.asarray(w_scale)
    # multiplier computed in the scales' own precision, as the reference does
    mult = np.asarray(x_scale) * ws / np.asarray(y_scale)
    if mult.size > 1:
        mult = mult.reshape((-1,) + (1,) * (x.ndim - 2))
    out_dt = y_zero_point.dtype if y_zero_point is not None else x.dtype
    return requantize(acc, mult, y_zero_point, out_dt)


# --------------------------------------------------------------------------- DeformConv


@kernel("DeformConv")
def deform_conv(
    x: np.ndarray,
    w: np.ndarray,
    offset: np.ndarray,
    b: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    offset_group: int = 1,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX DeformConv-22 (2-D): conv sampling bilinearly at offset positions, times the mask."""
    cd = _compute_dtype(x)
    xf = x.astype(cd, copy=False)
    n, c, h, wd = x.shape
    m = w.shape[0]
    k, s, d = _defaults(x, kernel_shape, w.shape, strides, dilations)
    p = list(pads) if pads else [0] * 4
    oh, ow = offset.shape[2:]
    kh, kw = k
    kk = kh * kw
    og = offset_group
    cpg = c // og
    off = offset.astype(cd, copy=False).reshape(n, og, kk, 2, oh, ow)
    ti, tj = np.meshgrid(np.arange(kh), np.arange(kw), indexing="ij")
    base_h = (np.arange(oh) * s[0] - p[0])[None, :, None] + (ti.reshape(-1) * d[0])[:, None, None]
    base_w = (np.arange(ow) * s[1] - p[1])[None, None, :] + (tj.reshape(-1) * d[1])[:, None, None]
    ph = base_h[None, None] + off[:, :, :, 0]  # (n, og, kk, oh, ow)
    pw = base_w[None, None] + off[:, :, :, 1]
    h0 = np.floor(ph)
    w0 = np.floor(pw)
    lh = ph - h0
    lw = pw - w0
    h0 = h0.astype(np.int64)
    w0 = w0.astype(np.int64)
    xg = xf.reshape(n, og, cpg, h, wd)
    ni = np.arange(n)[:, None, None, None, None]
    gi = np.arange(og)[None, :, None, None, None]
    samples = np.zeros((n, og, kk, oh, ow, cpg), cd)
    for dh, dw, wt in (
        (0, 0, (1 - lh) * (1 - lw)),
        (0, 1, (1 - lh) * lw),
        (1, 0, lh * (1 - lw)),
        (1, 1, lh * lw),
    ):
        hh = h0 + dh
        ww = w0 + dw
        valid = (hh >= 0) & (hh < h) & (ww >= 0) & (ww < wd)
        vals = xg[ni, gi, :, np.clip(hh, 0, h - 1), np.clip(ww, 0, wd - 1)]
        samples += vals * (wt * valid)[..., None]
    if mask is not None:
        samples *= mask.astype(cd, copy=False).reshape(n, og, kk, oh, ow)[..., None]
    # -> cols (n, c, kk, oh*ow)
    cols = samples.transpose(0, 1, 5, 2, 3, 4).reshape(n, group, (c // group) * kk, oh * ow)
    wg = w.astype(cd, copy=False).reshape(group, m // group, (c // group) * kk)
    y = matmul(wg, cols).reshape(n, m, oh, ow)
    if b is not None:
        y += b.astype(cd, copy=False).reshape(m, 1, 1)
    return y.astype(x.dtype, copy=False)


@kernel("CausalConvWithState")
def causal_conv_with_state(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    past_state: np.ndarray | None = None,
    *,
    activation: str = "none",
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX CausalConvWithState-27: depthwise causal 1-D conv over [past_state, x] (+ bias,
    optional SiLU); present_state is the last k-1 positions of that concatenation."""
    cd = _compute_dtype(x)
    n, c, length = x.shape
    k = w.shape[-1]
    if past_state is None:
        past = np.zeros((n, c, k - 1), cd)
    else:
        past = past_state.astype(cd, copy=False)
    full = np.concatenate([past, x.astype(cd, copy=False)], axis=2)
    wf = w.astype(cd, copy=False).reshape(c, k)
    y = full[:, :, 0:length] * wf[:, 0:1]
    for j in range(1, k):
        y += full[:, :, j : j + length] * wf[:, j : j + 1]
    if b is not None:
        y += b.astype(cd, copy=False).reshape(c, 1)
    if activation in ("silu", "swish"):
        with np.errstate(over="ignore"):
            y *= 1 / (1 + np.exp(-y))
    present = np.ascontiguousarray(full[:, :, full.shape[2] - (k - 1) :])
    return y.astype(x.dtype, copy=False), present.astype(x.dtype, copy=False)
