"""Compiled loops (the ``jit`` extra: numba) for the work BLAS has no primitive for.

* Depthwise convolution: k*k multiply-adds per output and no operand shared between
  channels, so lowering it to BLAS (im2col plus a batch of one-row products, see ``conv.py``)
  spends most of its time copying taps and dispatching tiny GEMMs. Here each channel's padded
  plane is laid out as stride phases (``conv.flat_geometry``) so every kernel tap is one
  contiguous multiply-add over the whole output plane; 3x3 convs of small output planes
  (MobileNet's later blocks) lay their channels last instead, so each output pixel is one
  vector pass over the channels.
* Conv epilogues: bias, residual, clamp and channel shuffle in one pass over the conv output
  instead of one NumPy pass each.
* Quantized conv requantization (ONNX QLinearConv with its fused residual QLinearAdd, TFLite's
  fixed-point MultiplyByQuantizedMultiplier) in one pass instead of eight to twelve, and the
  int8 -> float32 conversion of im2col taps.
* Sparse (CSR) products: a matrix-vector row as vector partial sums over gathered inputs
  (scipy sums each row serially), a matrix product in scipy's order over cache-sized blocks.

Everything here is an optional accelerator: ``available`` is false when numba is not
installed or ``MODELLOADER_JIT=0`` is set, and callers then take their NumPy path. Integer
results are bit-identical to the NumPy path; float ones differ only in summation order
(every kernel adds the bias first, then the taps in kernel order). numba is imported and the
kernels compiled on the first call that needs one, not at import or load; machine code is
cached on disk beside this file (or in numba's cache directory when that is read-only), so
later processes only load it. Kernels release the GIL and are single-threaded; callers split
large work over channels with ``modelloader.parallel.parallel_for``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from modelloader.parallel import parallel_for

__all__ = [
    "available",
    "csr_rows",
    "depthwise_fn",
    "epilogue",
    "epilogue_fn",
    "gather_shifted",
    "load",
    "loaded",
    "mean_rows",
    "pair_lookup",
    "qconv_requantize",
    "requant_params",
    "requantize",
    "requantize_fn",
    "shifted_fn",
    "to_float",
]


def _enabled() -> bool:
    flag = os.environ.get("MODELLOADER_JIT", "1").strip().lower()
    return flag not in ("0", "false", "no", "off")


#: whether the compiled kernels can be used in this process
available: bool = _enabled() and importlib.util.find_spec("numba") is not None

_KERNELS: dict[str, dict[str, Any]] = {}
_compiled = False
_compile_lock = threading.Lock()


def _njit(fn: Callable[..., Any] | None = None, **options: Any) -> Any:
    """Registers a loop for compilation by ``load`` (it stays plain Python until then), with
    extra ``numba.njit`` options if given (``@_njit(fastmath=...)``)."""
    if fn is None:
        return lambda f: _njit(f, **options)
    _KERNELS[fn.__name__] = options
    return fn


def load() -> None:
    """Imports numba and replaces every registered loop in this module by its dispatcher, all
    at once (loops call each other through module globals, which numba resolves when
    compiling); machine code is compiled, or loaded from the cache, on each loop's first call."""
    global _compiled
    with _compile_lock:
        if _compiled:
            return
        import numba

        g = globals()
        for name, options in _KERNELS.items():
            try:
                g[name] = numba.njit(nogil=True, cache=True, boundscheck=False, **options)(g[name])
            except RuntimeError:  # no writable cache location: compile in every process
                g[name] = numba.njit(nogil=True, boundscheck=False, **options)(g[name])
        _compiled = True


def loaded() -> bool:
    """Whether the kernels are compiled (numba imported) in this process: the fixed cost of
    importing numba and starting LLVM (~0.5 s, ~120 MB RSS) is then already paid."""
    return _compiled


def _kernel(name: str) -> Callable[..., Any]:
    """The compiled loop ``name``, compiling all of them on first use."""
    if not _compiled:
        load()
    return globals()[name]


@_njit
def _clamp(v, lo, hi):  # noqa: ANN001, ANN202
    # NaN passes through, as with np.clip
    if v < lo:
        v = lo
    if v > hi:
        v = hi
    return v


# Loops index flat arrays where they can, with unsigned integers (U): numba checks every
# signed index for wrap-around (which also keeps LLVM from vectorizing), and each array view
# (a channel plane, a row) it builds costs about as much as a small plane's arithmetic
# (1.3-2x on depthwise planes up to 24x24). All such indices are non-negative.
U = np.uint64


@_njit
def _fill_rows(xf, xo, h, wd, buf, ph, pw, wq):  # noqa: ANN001, ANN202
    # copies the (H, W) plane at xf[xo:] into rows of wq at (ph, pw) of buf (one phase)
    for y in range(h):
        d0 = U((y + ph) * wq + pw)
        s0 = U(xo + y * wd)
        for j in range(U(wd)):
            buf[d0 + j] = xf[s0 + j]


@_njit
def _fill_phases(xc, buf, sh, sw, ph, pw, wq, plane):  # noqa: ANN001, ANN202
    # copies plane xc (H, W) into its stride-phase planes; the rest of buf is left alone
    h, wd = xc.shape
    for y in range(h):
        py = y + ph
        row = xc[y]
        if sw == 2:  # a constant stride the compiler vectorizes (a de-interleave)
            for rx in range(2):
                x0 = (rx - pw) % 2
                dst = buf[((py % sh) * 2 + rx) * plane + (py // sh) * wq + (x0 + pw) // 2 :]
                src = row[x0:]
                for j in range((wd - x0 + 1) // 2):
                    dst[j] = src[2 * j]
            continue
        for rx in range(sw):
            x0 = (rx - pw) % sw
            dst = buf[((py % sh) * sw + rx) * plane + (py // sh) * wq + (x0 + pw) // sw :]
            for j in range((wd - x0 + sw - 1) // sw):
                dst[j] = row[x0 + j * sw]


@_njit
def _dw_plane(x, w, b, out, c0, c1, offs, wq, hq, sh, sw, ph, pw, lo, hi, fill):  # noqa: ANN001, ANN202
    # x (N, C, H, W); w (M, kh, kw); b (M,); out (N, M, OH, OW), all C-contiguous; output
    # channels [c0, c1). Each input plane, padded with ``fill``, lies in buf as sh*sw flat
    # (hq, wq) stride phases (``conv.flat_geometry``), so tap t reads buf[offs[t]:] and the
    # whole output plane, in rows of wq (junk columns cropped at the end), is one contiguous
    # pass per tap.
    n_, c_, h, wd = x.shape
    m_, kh, kw = w.shape
    oh, ow = out.shape[2], out.shape[3]
    mult = m_ // c_
    plane = hq * wq
    buf = np.full(sh * sw * plane, fill, x.dtype)
    size = U(oh * wq)
    acc = np.empty(size, x.dtype)
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    wf = w.reshape(w.size)
    kk = kh * kw
    for n in range(n_):
        filled = -1
        for m in range(c0, c1):
            c = m // mult
            if c != filled:
                if sh == 1 and sw == 1:
                    _fill_rows(xf, (n * c_ + c) * h * wd, h, wd, buf, ph, pw, wq)
                else:
                    _fill_phases(x[n, c], buf, sh, sw, ph, pw, wq, plane)
                filled = c
            bias = b[m]
            for i in range(size):
                acc[i] = bias
            for ky in range(kh):
                t = m * kk + ky * kw
                if kw == 3:
                    w0, w1, w2 = wf[U(t)], wf[U(t + 1)], wf[U(t + 2)]
                    s0 = buf[offs[ky * 3] :]
                    s1 = buf[offs[ky * 3 + 1] :]
                    s2 = buf[offs[ky * 3 + 2] :]
                    for i in range(size):
                        acc[i] += w0 * s0[i] + w1 * s1[i] + w2 * s2[i]
                else:
                    for kx in range(kw):
                        wv = wf[U(t + kx)]
                        src = buf[offs[ky * kw + kx] :]
                        for i in range(size):
                            acc[i] += wv * src[i]
            d0 = (n * m_ + m) * oh * ow
            for oy in range(oh):
                a = U(oy * wq)
                d = U(d0 + oy * ow)
                for i in range(U(ow)):
                    of[d + i] = _clamp(acc[a + i], lo, hi)


@_njit
def _dw_small3(x, wt, b, out, c0, c1, sh, sw, ph, pw, lo, hi, fill):  # noqa: ANN001, ANN202
    # _dw_plane for undilated 3x3 kernels and small output planes, where per-channel passes
    # over a few dozen pixels cost more than their arithmetic: the planes of output channels
    # [c0, c1) are laid channels-last in one padded buffer (each output channel's own copy of
    # its input channel, so a depth multiplier needs no index arithmetic), every output pixel
    # is then one vector pass over the channels, and the result is transposed back. wt is
    # (9, M), tap-major. Same additions in the same order as _dw_plane (bias first, then each
    # kernel row's three taps summed and added), so results are identical.
    n_, c_, h, wd = x.shape
    m_ = out.shape[1]
    oh, ow = out.shape[2], out.shape[3]
    mult = m_ // c_
    hp = max(h + ph, (oh - 1) * sh + 3)
    wp = max(wd + pw, (ow - 1) * sw + 3)
    r = U(c1 - c0)
    buf = np.full(hp * wp * (c1 - c0), fill, x.dtype)
    acc = np.empty(oh * ow * (c1 - c0), x.dtype)
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    wf = wt.reshape(wt.size)
    hw = U(h * wd)
    m0 = U(c0)
    mm = U(m_)
    row = U(wp) * r
    for n in range(n_):
        base = U(n * c_) * hw
        for y in range(h):
            for xx in range(wd):
                d = U((y + ph) * wp + pw + xx) * r
                s = base + U(y * wd + xx)
                if mult == 1:
                    src = s + m0 * hw
                    for j in range(r):
                        buf[d + j] = xf[src + j * hw]
                else:
                    mu = U(mult)
                    for j in range(r):
                        buf[d + j] = xf[s + (m0 + j) // mu * hw]
        for oy in range(oh):
            for ox in range(ow):
                r0 = U(oy * sh * wp + ox * sw) * r
                r1 = r0 + row
                r2 = r1 + row
                a = U(oy * ow + ox) * r
                for j in range(r):
                    m = m0 + j
                    v = b[m] + (
                        wf[m] * buf[r0 + j] + wf[mm + m] * buf[r0 + r + j]
                        + wf[U(2) * mm + m] * buf[r0 + U(2) * r + j]
                    )  # fmt: skip
                    v += (
                        wf[U(3) * mm + m] * buf[r1 + j] + wf[U(4) * mm + m] * buf[r1 + r + j]
                        + wf[U(5) * mm + m] * buf[r1 + U(2) * r + j]
                    )  # fmt: skip
                    v += (
                        wf[U(6) * mm + m] * buf[r2 + j] + wf[U(7) * mm + m] * buf[r2 + r + j]
                        + wf[U(8) * mm + m] * buf[r2 + U(2) * r + j]
                    )  # fmt: skip
                    acc[a + j] = _clamp(v, lo, hi)
        for j in range(r):
            d = (U(n) * mm + m0 + j) * U(oh * ow)
            for q in range(U(oh * ow)):
                of[d + q] = acc[q * r + j]


def _split(m: int, work: int, fn: Callable[[int, int], None]) -> None:
    # a thread hand-off costs ~20 us: only worth it for convs of ~1M multiply-adds or more
    if work < (1 << 20):
        fn(0, m)
    else:
        parallel_for(m, fn)


def depthwise_fn(
    w: np.ndarray,
    b: np.ndarray | None,
    dtype: np.dtype,
    layout: tuple[int, int, np.ndarray],
    strides: tuple[int, int],
    pads_begin: tuple[int, int],
    lo: float = -np.inf,
    hi: float = np.inf,
    fill: float = 0.0,
    dilations: tuple[int, int] = (1, 1),
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The 2-D depthwise conv with weights w (M, 1, kh, kw), M = C * mult, plus bias, clamped
    to [lo, hi], as ``fn(x, out) -> out`` for x (N, C, H, W) and out (N, M, OH, OW), both of
    ``dtype`` (float32/float64) and C-contiguous; the weights are laid out and the bias cast
    once, for a conv run many times. ``layout``: (Wq, Hq, tap offsets) of the conv's stride
    phases (``conv.flat_geometry``, which holds kernel size and dilation; ``dilations`` must
    be those it was made for); padded positions hold ``fill``."""
    m, _, kh, kw = w.shape
    t = np.dtype(dtype).type
    wk = np.ascontiguousarray(w.reshape(m, kh, kw), t)
    bias = np.zeros(m, t) if b is None else np.ascontiguousarray(b, t)
    wq, hq, offs = layout
    args = (offs, wq, hq, *strides, *pads_begin, t(lo), t(hi), t(fill))
    kern = _kernel("_dw_plane")
    small3 = (kh, kw) == (3, 3) and tuple(dilations) == (1, 1)
    if small3:
        wt = np.ascontiguousarray(wk.reshape(m, 9).T)
        args3 = (*strides, *pads_begin, t(lo), t(hi), t(fill))
        kern3 = _kernel("_dw_small3")
        strided = tuple(strides) == (2, 2)

    def run(x: np.ndarray, out: np.ndarray) -> np.ndarray:
        plane = out.shape[2] * out.shape[3]
        if small3 and (plane <= 36 or strided and plane <= 144):  # measured crossovers
            _split(m, out.size * 9, lambda c0, c1: kern3(x, wt, bias, out, c0, c1, *args3))
            return out
        _split(m, out.size * kh * kw, lambda c0, c1: kern(x, wk, bias, out, c0, c1, *args))
        return out

    return run


@_njit
def _requant_rows(acc, q, c1, shifts, right, neg_mask, off, zp, lo, hi, out):  # noqa: ANN001, ANN202
    # acc (N, M, L) float holding exact integers, out (N, M, L), both C-contiguous; per
    # channel m: see requantize
    n_, m_, ln = acc.shape
    af = acc.reshape(acc.size)
    of = out.reshape(out.size)
    for n in range(n_):
        for m in range(m_):
            qm, cm, rm, mm, om = q[m], c1[m], right[m], neg_mask[m], off[m]
            o = U((n * m_ + m) * ln)
            for i in range(U(ln)):
                v = (np.int64(np.int32(af[o + i])) * qm + cm) >> 31
                if shifts:
                    v = (v + ((v >> 63) & mm) + om) >> rm
                of[o + i] = _clamp(v + zp, lo, hi)


def requant_params(
    q: np.ndarray,
    c1: np.ndarray,
    right: np.ndarray | None,
    neg_mask: np.ndarray | None,
    off: np.ndarray | None,
) -> tuple:
    """The per-channel vectors ``requantize`` takes, from ``qlinear._TflRequant``'s arrays
    (each broadcastable to (M,) once flattened; None: no rounding shift / no mask / 0)."""
    m = max(a.size for a in (q, c1, right, neg_mask, off) if a is not None)

    def vec(a: np.ndarray | None, fill: int) -> np.ndarray:
        if a is None:
            return np.full(m, fill, np.int64)
        return np.ascontiguousarray(np.broadcast_to(a.reshape(-1), (m,)), np.int64)

    return vec(q, 0), vec(c1, 0), right is not None, vec(right, 0), vec(neg_mask, -1), vec(off, 0)


def requantize(
    acc: np.ndarray, params: tuple, zp: int, lo: int, hi: int, out: np.ndarray
) -> np.ndarray:
    """One pass of TFLite's per-channel MultiplyByQuantizedMultiplier with the bias folded in
    (``qlinear._TflRequant``: v = (int32(acc) * q + c1) >> 31, then the rounding right shift
    (v + (neg_mask & -[v < 0]) + off) >> right, plus zp, clamped to [lo, hi]) from acc
    (N, M, ...) float holding exact integers into out (N, M, ...) int; ``params`` from
    ``requant_params``."""
    return requantize_fn(params, zp, lo, hi)(acc, out)


def requantize_fn(params: tuple, zp: int, lo: int, hi: int) -> Callable[..., np.ndarray]:
    """``requantize`` with everything but acc and out bound: ``fn(acc, out) -> out``."""
    kern = _kernel("_requant_rows")
    tail = (int(zp), int(lo), int(hi))

    def run(acc: np.ndarray, out: np.ndarray) -> np.ndarray:
        shape = acc.shape[:2] + (-1,)
        dst = out if out.flags.c_contiguous else np.empty(out.shape, out.dtype)
        kern(np.ascontiguousarray(acc).reshape(shape), *params, *tail, dst.reshape(shape))
        if dst is not out:
            np.copyto(out, dst)
        return out

    return run


@_njit
def _row_at(n, m_, c, channels, ln):  # noqa: ANN001, ANN202
    # flat start of row (n, channels[c]) (channels None: the identity) of an (N, M, L) array
    return U((n * m_ + (c if channels is None else channels[c])) * ln)


@_njit
def _epilogue_rows(src, dst, src_ch, dst_ch, b, z, lo, hi):  # noqa: ANN001, ANN202
    # all (N, M, L) C-contiguous; rows are picked through channel maps only for shuffles: in
    # place, the maps are None; numba compiles each combination of None arguments without
    # the branches it rules out
    n_, m_, ln = dst.shape
    df = dst.reshape(dst.size)
    sf = df if src is None else src.reshape(src.size)
    if z is not None:
        zf = z.reshape(z.size)
        for n in range(n_):
            for c in range(m_):
                d = _row_at(n, m_, c, dst_ch, ln)
                s = d if src is None else _row_at(n, m_, c, src_ch, ln)
                zr = U((n * m_ + c) * ln)
                bias = b[c]
                for i in range(U(ln)):
                    df[d + i] = _clamp(sf[s + i] + bias + zf[zr + i], lo, hi)
        return
    for n in range(n_):
        for c in range(m_):
            d = _row_at(n, m_, c, dst_ch, ln)
            s = d if src is None else _row_at(n, m_, c, src_ch, ln)
            bias = b[c]
            for i in range(U(ln)):
                df[d + i] = _clamp(sf[s + i] + bias, lo, hi)


def epilogue(
    dst: np.ndarray,
    b: np.ndarray | None,
    z: np.ndarray | None,
    lo: float,
    hi: float,
    src: np.ndarray | None = None,
    src_channels: np.ndarray | None = None,
    dst_channels: np.ndarray | None = None,
) -> np.ndarray:
    """dst[:, dst_channels[c]] = clamp(src[:, src_channels[c]] + b[c] + z[:, c], lo, hi) for
    every conv channel c, in that order of float additions (as the separate NumPy passes).
    ``src`` None: in place, src is dst (read through dst_channels too); channel maps None:
    the identity. dst and src (N, M, ...) C-contiguous of one float dtype; z, if given,
    (N, M, ...) in conv channel order; a missing b adds 0 (exact: x + 0.0 == x, and
    -0.0 + 0.0 only changes a zero's sign). Returns dst."""
    fn = epilogue_fn(b, dst.shape[1], dst.dtype, lo, hi, src_channels, dst_channels)
    return fn(dst, z, src)


def epilogue_fn(
    b: np.ndarray | None,
    m: int,
    dtype: np.dtype,
    lo: float,
    hi: float,
    src_channels: np.ndarray | None = None,
    dst_channels: np.ndarray | None = None,
) -> Callable[..., np.ndarray]:
    """``epilogue`` for one conv of M channels with the bias, bounds and channel maps bound:
    ``fn(dst, z=None, src=None) -> dst``."""
    t = np.dtype(dtype).type
    bias = np.zeros(m, t) if b is None else np.ascontiguousarray(b, t)
    lo_, hi_ = t(lo), t(hi)
    kern = _kernel("_epilogue_rows")

    def run(
        dst: np.ndarray, z: np.ndarray | None = None, src: np.ndarray | None = None
    ) -> np.ndarray:
        # the loop does not check bounds: a residual or source of another size stops here
        if (z is not None and z.size != dst.size) or (src is not None and src.size != dst.size):
            raise ValueError(
                f"conv epilogue: output {dst.shape}, residual "
                f"{None if z is None else z.shape}, source {None if src is None else src.shape}"
                " must have the same size"
            )
        shape = (dst.shape[0], m, -1)
        zz = None if z is None else np.ascontiguousarray(z).reshape(shape)
        kern(
            None if src is None else src.reshape(shape), dst.reshape(shape), src_channels,
            dst_channels, bias, zz, lo_, hi_,
        )  # fmt: skip
        return dst

    return run


@_njit
def _qconv_requant_rows(acc, mult, bias, zp, lo, hi, out, z, za, ra, zb, rb, zc, tlo, thi):  # noqa: ANN001, ANN202
    # acc (N, M, OH, WQ) exact integers (WQ >= OW: junk columns past OW); out (N, M, OH, OW);
    # z None (numba compiles that case without the tail): no QLinearAdd tail
    n_, m_, oh, _ = acc.shape
    ow = out.shape[3]
    conv = np.empty(ow, np.float32)  # with a tail: the requantized conv minus zp, one row
    for n in range(n_):
        for m in range(m_):
            bm, mm = bias[m], mult[m]
            for y in range(oh):
                src = acc[n, m, y]
                dst = out[n, m, y]
                if z is None:
                    for i in range(ow):
                        v = np.rint((np.float64(src[i]) + bm) * mm) + zp
                        dst[i] = np.int32(_clamp(v, lo, hi))
                else:
                    zr = z[n, m, y]
                    for i in range(ow):
                        v = np.rint((np.float64(src[i]) + bm) * mm)
                        conv[i] = np.float32(_clamp(v, lo - zp, hi - zp))
                    for i in range(ow):
                        a = (conv[i] + za) * ra
                        t = np.rint((np.float32(zr[i]) - zb) * rb + a)
                        dst[i] = np.int32(_clamp(t, tlo, thi) + zc)


def qconv_requantize(
    acc: np.ndarray,
    mult: np.ndarray,
    bias: np.ndarray,
    zp: int,
    clamp: tuple[int, int],
    out: np.ndarray,
    tail: tuple | None = None,
) -> np.ndarray:
    """QLinearConv requantization in one pass: out = clamp(rint((acc + bias[m]) * mult[m]) +
    zp) in float64, round half to even, as ``conv.requantize`` (acc (N, M, OH, WQ) exact
    integers, columns past out's OW ignored; mult, bias (M,) float64). ``tail``: the fused
    com.microsoft QLinearAdd of ``qconv_fast._AddTail`` as (z, za, ra, zb, rb, zc, lo, hi),
    float32 arithmetic: clamp(rint((z - zb) * rb + (y - zp + za) * ra), lo, hi) + zc."""
    lo, hi = float(clamp[0]), float(clamp[1])
    n, m, oh, ow = out.shape
    if acc.shape[3] == ow and acc.flags.c_contiguous and out.flags.c_contiguous:
        # no junk columns: each channel is one long row (short rows do not vectorize)
        flat = (n, m, 1, oh * ow)
        acc, out = acc.reshape(flat), out.reshape(flat)
        if tail is not None and tail[0].flags.c_contiguous:
            tail = (tail[0].reshape(flat), *tail[1:])
        elif tail is not None:
            tail = (np.ascontiguousarray(tail[0]).reshape(flat), *tail[1:])
    if tail is None:
        tail = (None, *(np.float32(0),) * 7)
    _kernel("_qconv_requant_rows")(acc, mult, bias, float(zp), lo, hi, out, *tail)
    return out.reshape(n, m, oh, ow)


@_njit
def _gather_rows(src, offsets, zp, out):  # noqa: ANN001, ANN202
    n_, c_, kk, ln = out.shape
    for n in range(n_):
        for c in range(c_):
            s = src[n, c]
            for t in range(kk):
                r = s[offsets[t] :]
                d = out[n, c, t]
                for i in range(ln):
                    d[i] = r[i] - zp


def gather_shifted(src: np.ndarray, offsets: np.ndarray, zp: float, out: np.ndarray) -> np.ndarray:
    """out[n, c, t, :] = src[n, c, offsets[t] : offsets[t] + L] - zp, converted to out's float
    dtype (exact for 8/16-bit src): the "extended row" im2col of a flat padded input (one
    shifted slice per kernel tap). src (N, C, S) and out (N, C, T, L) C-contiguous."""
    _kernel("_gather_rows")(src, offsets, out.dtype.type(zp), out)
    return out


@_njit
def _pair_rows(table, a, b, out):  # noqa: ANN001, ANN202
    for i in range(a.size):
        out[i] = table[(np.int32(a[i]) << 8) | np.int32(b[i])]


def pair_lookup(table: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = table[a_byte * 256 + b_byte] elementwise, for 8-bit a and b of out's shape (a
    65,536-entry table of a binary op's results, ``qlinear._pair_table``)."""
    _kernel("_pair_rows")(
        table, np.ascontiguousarray(a).reshape(-1).view(np.uint8),
        np.ascontiguousarray(b).reshape(-1).view(np.uint8), out.reshape(-1),
    )  # fmt: skip
    return out


@_njit
def _mean_rows(x, zp, mult, zp_out, lo, hi, out):  # noqa: ANN001, ANN202
    rows, n = x.shape
    for r in range(rows):
        row = x[r]
        s = np.int64(0)
        for i in range(n):
            s += row[i]
        v = np.rint(np.float64(s - np.int64(zp) * n) * mult) + zp_out
        out[r] = min(max(v, lo), hi)


def mean_rows(
    x: np.ndarray, zp: int, mult: float, zp_out: float, lo: int, hi: int, out: np.ndarray
) -> np.ndarray:
    """out (any shape of x's row count) = saturate(round_half_even((sum(row) - zp * len(row))
    * mult) + zp_out) to [lo, hi] for each row of x (R, L) of 8-bit integers, in float64 as
    ``qlinear.requantize``."""
    _kernel("_mean_rows")(
        x, int(zp), float(mult), float(zp_out), float(lo), float(hi), out.reshape(-1)
    )
    return out


@_njit
def _shifted(src, zp, out):  # noqa: ANN001, ANN202
    for i in range(src.size):
        out[i] = src[i] - zp


def to_float(src: np.ndarray, zp: float, out: np.ndarray) -> np.ndarray:
    """out = src - zp in out's float dtype (exact for 8/16-bit src); out C-contiguous of
    src's shape. About 3x faster than NumPy's casting subtract."""
    s = src if src.flags.c_contiguous else np.ascontiguousarray(src)
    return shifted_fn()(s, out.dtype.type(zp), out)


def shifted_fn() -> Callable[[np.ndarray, Any, np.ndarray], np.ndarray]:
    """``to_float`` for C-contiguous src with zp already of out's dtype: ``fn(src, zp, out)``."""
    kern = _kernel("_shifted")

    def run(src: np.ndarray, zp: Any, out: np.ndarray) -> np.ndarray:
        kern(src.reshape(-1), zp, out.reshape(-1))
        return out

    return run


@_njit(fastmath={"reassoc", "contract"})
def _csr_rows(indptr, indices, data, x, out, r0, r1):  # noqa: ANN001, ANN202
    # each row a plain sum, which reassociation lets the compiler split into vector partial
    # sums over gathered x (a serial sum makes every multiply-add wait for the last, as
    # scipy's csr_matvec does); no finite-math flags, so NaN and inf propagate as usual;
    # unsigned indices (U) spare a wrap-around check per load
    for r in range(r0, r1):
        acc = out.dtype.type(0)
        for j in range(U(indptr[r]), U(indptr[r + 1])):
            acc += data[j] * x[U(indices[j])]
        out[r] = acc


@_njit
def _csr_mat_rows(indptr, indices, data, x, out, r0, r1, block):  # noqa: ANN001, ANN202
    # scipy's csr_matvecs order (each output row starts at 0 and adds data[j] * x[row j] for
    # its non-zeros in order), column block by column block so the output block stays in L1
    n = x.shape[1]
    xf = x.reshape(x.size)
    of = out.reshape(out.size)
    for c0 in range(0, n, block):
        w = U(min(n, c0 + block) - c0)
        for r in range(r0, r1):
            o = U(r * n + c0)
            for i in range(w):
                of[o + i] = 0
            for j in range(U(indptr[r]), U(indptr[r + 1])):
                v = data[j]
                s = U(indices[j] * n + c0)
                for i in range(w):
                    of[o + i] += v * xf[s + i]


def csr_rows(
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    x: np.ndarray,
    out: np.ndarray,
    rows: tuple[int, int],
) -> None:
    """Rows ``range(*rows)`` of ``out = A @ x`` for the CSR matrix A (indptr, indices, data)
    and x a vector (K,) or matrix (K, N), out (M,) or (M, N), all C-contiguous of data's
    dtype; ``indices`` of any integer type (uint16 where A has at most 65,536 columns saves
    a third of the bytes). A vector: each row summed in vector partial sums, so results
    differ from a serial sum only in rounding (2-2.7x scipy's loop on one thread).
    A matrix: scipy's CSR product bit for bit (the same additions in the same order),
    1.5-2.5x faster on one thread, as the additions vectorize to the machine's full width
    and run over column blocks of 1,024 that stay in L1."""
    if x.ndim == 1:
        _kernel("_csr_rows")(indptr, indices, data, x, out, rows[0], rows[1])
    else:
        _kernel("_csr_mat_rows")(indptr, indices, data, x, out, rows[0], rows[1], 1024)
