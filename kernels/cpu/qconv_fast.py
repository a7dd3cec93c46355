"""Fast exact 8-bit kernels: QLinearConv (ONNX and com.microsoft), QLinearMatMul, QGemm.

Dtype-specialised (uint8/int8 first input) versions of the generic kernels in ``conv.py``,
``gemm.py`` and ``qlinear.py``, bit-identical to them, built on float32 BLAS instead of
float64:

* The integer products run as float32 sgemm, which is exact while every partial sum is an
  integer below 2**24. Instead of the crude ``K * max|x| * max|w|`` bound, the bound is taken
  per output channel from the weights themselves: with x - x_zp in [-b, a], any partial sum of
  (x - x_zp) * (w - w_zp) lies in [-(b*S+ + a*S-), a*S+ + b*S-] where S+/S- are the sums of the
  positive/negative weights of that channel. K is split into the fewest contiguous chunks whose
  bound stays below 2**24 (one chunk for every ResNet conv up to K = 1152, two or three for
  the 3x3x512 ones); chunk results are summed exactly in float64.
* The weight side ((w - w_zp) as float32 chunks, the chunk plan, the bias) is prepared once per
  weight array (cached by identity while the array lives; weights are constants).
* im2col reads a uint8/int8 padded buffer (4x smaller than float32; its border holds x_zp) and
  writes (x - x_zp) as float32 columns in one pass; work buffers are per-thread and reused.
* Requantization repeats the generic kernels' arithmetic operation for operation (float64
  multiply by the same multiplier, np.rint half-to-even, zero point, saturate for ONNX
  QLinearConv/QLinearMatMul; float32 for QGemm), so results are identical.

Anything outside the fast paths (non-2-D convs, negative pads, per-row a_zero_point, bias
that could overflow int32...) is handed to the generic kernel.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

from modelloader.kernels.cpu import conv as _conv
from modelloader.kernels.cpu import gemm as _gemm
from modelloader.kernels.cpu import qlinear as _ql
from modelloader.kernels.cpu._registry import kernel

MS = "com.microsoft"
_INT8 = [np.uint8, np.int8]
_LIMIT = (1 << 24) - 1  # float32 holds every integer of magnitude <= 2**24
_INT32_MAX = (1 << 31) - 1

_tls = threading.local()
_KEEP = 64 << 20  # per-thread bytes of work buffers kept between calls


def _scratch(slot: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """A reusable per-thread work buffer (contents uninitialised; never returned)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > _KEEP:
        return np.empty(shape, dtype)
    bufs = getattr(_tls, "bufs", None)
    if bufs is None:
        bufs = _tls.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.size < nbytes:
        buf = bufs[slot] = np.empty(max(nbytes, 64), np.uint8)
    return buf[:nbytes].view(dtype).reshape(shape)


def _padded(x: np.ndarray, p: Sequence[int], fill: int) -> np.ndarray:
    """x (N, C, H, W) padded by [top, left, bottom, right] with ``fill``, in a kept buffer
    whose border keeps the fill between calls."""
    n, c, h, w = x.shape
    shape = (n, c, h + p[0] + p[2], w + p[1] + p[3])
    key = (shape, x.dtype.str, int(fill), p[0], p[1])
    cache = getattr(_tls, "padded", None)
    if cache is None:
        cache = _tls.padded = {}
    buf = cache.get(key)
    if buf is None:
        buf = np.full(shape, fill, x.dtype)
        if buf.nbytes <= _KEEP // 4:
            if sum(b.nbytes for b in cache.values()) + buf.nbytes > _KEEP:
                cache.clear()
            cache[key] = buf
    buf[:, :, p[0] : p[0] + h, p[1] : p[1] + w] = x
    return buf


# --------------------------------------------------------------------------- exact products


def _xrange(dtype: np.dtype, zp: int) -> tuple[int, int]:
    """(a, b): x - zp lies in [-b, a] for every value of ``dtype``."""
    info = np.iinfo(dtype)
    return max(int(info.max) - zp, 0), max(zp - int(info.min), 0)


def _chunks(wi: np.ndarray, a: int, b: int) -> list[tuple[int, int]] | None:
    """Contiguous K ranges of ``wi`` (rows, K) int64 over which every partial sum of
    x * w (x in [-b, a]) stays within float32's exact integers; None if one column can't."""
    pos = np.cumsum(np.maximum(wi, 0), axis=1)
    neg = np.cumsum(np.maximum(-wi, 0), axis=1)
    zero = np.zeros((wi.shape[0], 1), np.int64)
    pos = np.concatenate([zero, pos], axis=1)
    neg = np.concatenate([zero, neg], axis=1)
    k = wi.shape[1]
    out, k0 = [], 0
    while k0 < k:
        dp, dn = pos[:, k0 + 1 :] - pos[:, k0 : k0 + 1], neg[:, k0 + 1 :] - neg[:, k0 : k0 + 1]
        bound = np.maximum(a * dp + b * dn, b * dp + a * dn).max(axis=0)  # nondecreasing
        n_ok = int(np.searchsorted(bound, _LIMIT, side="right"))
        if n_ok == 0:
            return None
        out.append((k0, k0 + n_ok))
        k0 += n_ok
    return out


class _Prepared:
    """A constant integer operand (group, rows, K) split into exact float32 K-chunks."""

    __slots__ = ("chunks", "mats", "absmax")

    def __init__(self, wi: np.ndarray, a: int, b: int) -> None:
        g, rows, k = wi.shape
        self.chunks = _chunks(wi.reshape(g * rows, k), a, b)
        self.absmax = int(np.abs(wi).max(initial=0))
        if self.chunks is None:
            self.mats = []
        else:
            self.mats = [
                np.ascontiguousarray(wi[:, :, k0:k1], dtype=np.float32) for k0, k1 in self.chunks
            ]


_CACHE: dict[tuple, tuple] = {}


def _cached(arrays: tuple, key: tuple, build):
    """``build()`` cached while every array of ``arrays`` (by identity) lives."""
    full = (*(id(v) for v in arrays), *key)
    hit = _CACHE.get(full)
    if hit is not None and all(r() is v for r, v in zip(hit[0], arrays, strict=True)):
        return hit[1]
    val = build()
    try:
        refs = tuple(weakref.ref(v) for v in arrays)
    except TypeError:
        return val
    _CACHE[full] = (refs, val)
    for v in arrays:
        weakref.finalize(v, _CACHE.pop, full, None)
    return val


def _exact_matmul(prep: _Prepared, cols: np.ndarray) -> np.ndarray:
    """sum over K-chunks of prep.mats[c] @ cols[..., k0:k1, :] (cols: (..., group, K, hw)),
    exact: float32 for one chunk, float64 for several."""

    def mm(wm: np.ndarray, cc: np.ndarray) -> np.ndarray:
        if wm.shape[0] == 1 and cc.ndim == 3:  # one group: a plain 2-D sgemm
            return np.matmul(wm[0], cc[0])[None]
        return np.matmul(wm, cc)

    if len(prep.mats) == 1:
        return mm(prep.mats[0], cols)
    acc = None
    for (k0, k1), wm in zip(prep.chunks, prep.mats, strict=True):
        part = mm(wm, cols[..., k0:k1, :])
        if acc is None:
            acc = part.astype(np.float64)
        else:
            acc += part
    return acc


# --------------------------------------------------------------------------- QLinearConv


def _conv_prep(w: np.ndarray, w_zp, b: np.ndarray | None, group: int, a: int, bb: int):
    def build():
        m = w.shape[0]
        wi = w.astype(np.int64)
        if w_zp is not None:
            zp = np.asarray(w_zp).astype(np.int64)
            if zp.ndim == 1 and zp.size == m and zp.size > 1:
                zp = zp.reshape((-1,) + (1,) * (w.ndim - 1))
            wi = wi - zp
        wi = wi.reshape(group, m // group, -1)
        prep = _Prepared(wi, a, bb)
        bias = None
        if b is not None:
            b32 = np.asarray(b).astype(np.int32).reshape(-1)
            # the generic kernel adds the bias in int32: stay clear of any wrap-around
            bmax = int(np.abs(b32.astype(np.int64)).max(initial=0))
            total = wi.shape[-1] * max(a, bb) * prep.absmax + bmax
            if total > _INT32_MAX:
                prep.chunks = None
            bias = b32.astype(np.float64).reshape(1, m, 1)
        return prep, bias

    arrays = tuple(v for v in (w, b, w_zp) if isinstance(v, np.ndarray))
    return _cached(arrays, (b is None, w_zp is None, _scalar_key(w_zp), group, a, bb), build)


def _scalar_key(v) -> object:
    """A cache-key part for a zero point that is not an ndarray (scalar or None)."""
    return None if v is None or isinstance(v, np.ndarray) else int(np.asarray(v).reshape(-1)[0])


def _multiplier(x_scale, w_scale, y_scale, nd: int) -> np.ndarray:
    # as conv.qlinear_conv: computed in the scales' own precision, then widened to float64
    mult = np.asarray(x_scale) * np.asarray(w_scale) / np.asarray(y_scale)
    return (
        np.asarray(mult).astype(np.float64).reshape(-1, *([1] * nd))
        if mult.size > 1
        else (np.asarray(mult).astype(np.float64))
    )


def _finish_onnx(acc: np.ndarray, bias, mult, y_zero_point, out_dt) -> np.ndarray:
    """conv.requantize(int32(acc) + bias, mult, y_zp, out_dt) with acc exact in float."""
    y = np.empty(acc.shape, np.float64)
    if bias is not None:
        np.add(acc, bias, out=y)
    else:
        np.copyto(y, acc)
    y *= mult
    np.rint(y, out=y)
    if y_zero_point is not None:
        y += np.asarray(y_zero_point).astype(np.float64)
    info = np.iinfo(out_dt)
    np.clip(y, info.min, info.max, out=y)
    return y.astype(out_dt)


_BLOCK = 1 << 15  # float64 elements per requantization block (stays in L2)


def _finish_rows(acc, bias, mult, y_zero_point, out_dt, n: int) -> np.ndarray:
    """_finish_onnx for acc (n, m, hw) with per-channel (m, 1) bias/multiplier, computed in
    cache-sized row blocks, with the zero point and the cast fused: clip(rint(v), lo - zp,
    hi - zp) + zp equals clip(rint(v) + zp, lo, hi) for integer zp."""
    _, m, hw = acc.shape
    rows = acc.reshape(n * m, hw)
    mult = np.asarray(mult, np.float64)
    mult = np.broadcast_to(mult.reshape(-1, 1) if mult.size > 1 else mult.reshape(1, 1), (m, 1))
    if n > 1:
        mult = np.tile(mult, (n, 1))
        bias = None if bias is None else np.tile(bias.reshape(m, 1), (n, 1))
    elif bias is not None:
        bias = bias.reshape(m, 1)
    zp = 0 if y_zero_point is None else int(np.asarray(y_zero_point).reshape(-1)[0])
    info = np.iinfo(out_dt)
    lo, hi = float(info.min - zp), float(info.max - zp)
    out = np.empty((n * m, hw), out_dt)
    step = max(1, _BLOCK // max(hw, 1))
    blk_all = _scratch("requant", (min(step, n * m), hw), np.float64)
    zpf = np.float64(zp)
    for r0 in range(0, n * m, step):
        r1 = min(r0 + step, n * m)
        blk = blk_all[: r1 - r0]
        if bias is not None:
            np.add(rows[r0:r1], bias[r0:r1], out=blk)
        else:
            np.copyto(blk, rows[r0:r1])
        blk *= mult[r0:r1]
        np.rint(blk, out=blk)
        np.clip(blk, lo, hi, out=blk)
        np.add(blk, zpf, out=out[r0:r1], casting="unsafe")
    return out


def _fast_qconv(
    x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
    auto_pad, dilations, group, kernel_shape, pads, strides,
):  # fmt: skip
    """The fast path, or None when the generic kernel must run."""
    if x.ndim != 4 or w.ndim != 4 or w.dtype not in (np.uint8, np.int8):
        return None
    if x_zero_point is not None and np.asarray(x_zero_point).size != 1:
        return None
    n, c, h, wd = x.shape
    m, cg = w.shape[:2]
    if cg * group != c or m % group:
        return None
    k = list(kernel_shape) if kernel_shape else list(w.shape[2:])
    s = list(strides) if strides else [1, 1]
    d = list(dilations) if dilations else [1, 1]
    if list(w.shape[2:]) != k:
        return None
    p, out_sp = _conv.resolve_pads((h, wd), k, s, d, pads, auto_pad)
    if min(p) < 0 or min(out_sp) <= 0:
        return None
    xz = 0 if x_zero_point is None else int(np.asarray(x_zero_point).reshape(-1)[0])
    a, bb = _xrange(x.dtype, xz)
    prep, bias = _conv_prep(w, w_zero_point, b, group, a, bb)
    if prep.chunks is None:
        return None
    oh, ow = out_sp
    hw = oh * ow
    kk = k[0] * k[1]
    xzf = np.float32(xz)
    if kk == 1 and not any(p):
        xs = x if s == [1, 1] else x[:, :, :: s[0], :: s[1]]
        cols = _scratch("cols", (n, group, cg, hw), np.float32)
        np.subtract(xs.reshape(n, group, cg, hw) if s == [1, 1] else xs, xzf,
                    out=cols.reshape(n, c, oh, ow) if s != [1, 1] else cols, dtype=np.float32)  # fmt: skip
    else:
        xp = _padded(x, p, xz) if any(p) else x
        st = xp.strides
        view = as_strided(
            xp,
            shape=(n, c, k[0], k[1], oh, ow),
            strides=(st[0], st[1], st[2] * d[0], st[3] * d[1], st[2] * s[0], st[3] * s[1]),
            writeable=False,
        )
        cols = _scratch("cols", (n, c, k[0], k[1], oh, ow), np.float32)
        np.subtract(view, xzf, out=cols, dtype=np.float32)
        cols = cols.reshape(n, group, cg * kk, hw)
    acc = _exact_matmul(prep, cols[0] if n == 1 else cols).reshape(n, m, hw)
    mult = _multiplier(x_scale, w_scale, y_scale, 1)
    out_dt = y_zero_point.dtype if y_zero_point is not None else x.dtype
    if y_zero_point is not None and np.asarray(y_zero_point).size != 1:
        y = _finish_onnx(acc, bias, mult, y_zero_point, out_dt)
    else:
        y = _finish_rows(acc, bias, mult, y_zero_point, out_dt, n)
    return y.reshape(n, m, oh, ow)


@kernel("QLinearConv", dtypes=_INT8)
def qlinear_conv_fast(
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
    """ONNX QLinearConv-10 for 8-bit x: as the generic kernel (int32 conv + bias, requantized
    with x_s*w_s/y_s, round-half-even, saturate), bit for bit, on exact float32 BLAS."""
    y = _fast_qconv(
        x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
        auto_pad, dilations, group, kernel_shape, pads, strides,
    )  # fmt: skip
    if y is None:
        y = _conv.qlinear_conv(
            x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
            auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
            pads=pads, strides=strides,
        )  # fmt: skip
    return y


@kernel("QLinearConv", domain=MS, dtypes=_INT8)
def qlinear_conv_ms_fast(
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
    channels_last: int = 0,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """com.microsoft QLinearConv-1 for 8-bit x (channels_last=1: N, *spatial, C in and out)."""
    xc = np.moveaxis(x, -1, 1) if channels_last else x
    y = qlinear_conv_fast(
        xc, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
        auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
        pads=pads, strides=strides,
    )  # fmt: skip
    return np.ascontiguousarray(np.moveaxis(y, 1, -1)) if channels_last else y


# --------------------------------------------------------------------------- matmuls


def _mat_prep(bi_fn, b: np.ndarray, zp, key: tuple, a: int, bb: int) -> _Prepared:
    """(K, N) right operand prepared as chunks of its transpose rows, i.e. (1, N, K)."""

    def build():
        bi = bi_fn()
        return _Prepared(bi.T[None], a, bb)

    arrays = (b, zp) if isinstance(zp, np.ndarray) else (b,)
    return _cached(arrays, (*key, zp is None, _scalar_key(zp), a, bb), build)


def _right_matmul(a_f32: np.ndarray, prep: _Prepared) -> np.ndarray:
    """a (M, K) float32 times the prepared operand's (K, N), exact (float32 or float64)."""
    if len(prep.mats) == 1:
        return np.matmul(a_f32, prep.mats[0][0].T)
    acc = None
    for (k0, k1), wm in zip(prep.chunks, prep.mats, strict=True):
        part = np.matmul(a_f32[:, k0:k1], wm[0].T)
        if acc is None:
            acc = part.astype(np.float64)
        else:
            acc += part
    return acc


@kernel("QLinearMatMul", dtypes=_INT8)
def qlinear_matmul_fast(
    a: np.ndarray,
    a_scale: np.ndarray,
    a_zero_point: np.ndarray,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zero_point: np.ndarray,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray,
) -> np.ndarray:
    """ONNX QLinearMatMul-21 for 8-bit a with a 2-D b: the generic kernel's result bit for bit
    (int32 product requantized by a_s*b_s/y_s, round-half-even), on exact float32 BLAS."""
    az = None if a_zero_point is None else np.asarray(a_zero_point)
    fast = (
        b.ndim == 2
        and a.ndim >= 2
        and b.dtype in (np.uint8, np.int8)
        and (az is None or az.size == 1)
        and np.asarray(a_scale).size == 1
    )
    if fast:
        za = 0 if az is None else int(az.reshape(-1)[0])
        ra, rb = _xrange(a.dtype, za)

        def bi():
            v = b.astype(np.int64)
            if b_zero_point is not None:
                v = v - np.asarray(b_zero_point).astype(np.int64)
            return np.broadcast_to(v, b.shape)

        prep = _mat_prep(bi, b, b_zero_point, ("qmm",), ra, rb)
        kdim = b.shape[0]
        # the generic kernel accumulates in int32: stay clear of any wrap-around
        fast = prep.chunks is not None and kdim * max(ra, rb) * prep.absmax <= _INT32_MAX
    if not fast:
        return _gemm.qlinear_matmul(
            a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point
        )
    a2 = np.subtract(a.reshape(-1, a.shape[-1]), np.float32(za), dtype=np.float32)
    acc = _right_matmul(a2, prep).reshape(a.shape[:-1] + (b.shape[1],))
    mult = np.asarray(np.asarray(a_scale) * np.asarray(b_scale) / np.asarray(y_scale))
    out_dt = y_zero_point.dtype if y_zero_point is not None else a.dtype
    return _finish_onnx(acc, None, mult.astype(np.float64), y_zero_point, out_dt)


@kernel("QGemm", domain=MS, dtypes=_INT8)
def qgemm_fast(
    a: np.ndarray,
    a_scale: np.ndarray,
    a_zero_point: np.ndarray,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zero_point: np.ndarray,
    c: np.ndarray | None = None,
    y_scale: np.ndarray | None = None,
    y_zero_point: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    transA: int = 0,
    transB: int = 0,
) -> np.ndarray:
    """com.microsoft QGemm-1 for 8-bit A: the generic kernel's result bit for bit (exact
    integer product + C, float32 requantization), with B prepared once and float32 BLAS."""
    if b.ndim != 2 or a.ndim != 2 or b.dtype not in (np.uint8, np.int8):
        return _ql.qgemm(
            a, a_scale, a_zero_point, b, b_scale, b_zero_point, c, y_scale, y_zero_point,
            alpha=alpha, transA=transA, transB=transB,
        )  # fmt: skip
    za = _ql._zp(a_zero_point)
    ra, rb = _xrange(a.dtype, za)

    def bi():
        bm = b.T if transB else b
        bz = np.asarray(b_zero_point).astype(np.int64).reshape(-1)
        return bm.astype(np.int64) - (bz if bz.size > 1 else bz[0])

    prep = _mat_prep(bi, b, b_zero_point, ("qgemm", transB), ra, rb)
    if prep.chunks is None:
        return _ql.qgemm(
            a, a_scale, a_zero_point, b, b_scale, b_zero_point, c, y_scale, y_zero_point,
            alpha=alpha, transA=transA, transB=transB,
        )  # fmt: skip
    am = a.T if transA else a
    acc = _right_matmul(np.subtract(am, np.float32(za), dtype=np.float32), prep)
    acc = acc.astype(np.float64, copy=False)
    if c is not None:
        acc = acc + np.asarray(c).astype(np.float64)
    bs = np.asarray(b_scale, np.float32).reshape(-1)
    scale = np.float32(alpha) * _ql._f32(a_scale) * bs
    if y_scale is None:
        return (acc.astype(np.float32) * scale).astype(np.float32)
    scale = scale / _ql._f32(y_scale)
    dt = _ql._out_dtype(y_zero_point, np.uint8)
    lo, hi = _ql._irange(dt)
    y = np.rint(acc.astype(np.float32) * scale) + np.float32(_ql._zp(y_zero_point))
    return np.clip(y, lo, hi).astype(dt)
