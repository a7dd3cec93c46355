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
  weight array (cached by identity while the array lives; weights are constants), and so is
  each conv call's geometry and requantization parameters.
* im2col reads a uint8/int8 padded buffer (4x smaller than float32; its border holds x_zp) and
  writes float32 columns in one pass, as contiguous "extended row" slices when the output is
  wide (like the float Conv); work buffers are per-thread and reused. Where exact, the bias
  rides in the sgemm as one more weight column against a row of ones, and a nonzero x_zp
  moves into that bias (-x_zp * sum(w)) instead of being subtracted from every column.
* QLinearConv requantization is float32 where that is provably identical to the generic
  kernel's float64 (see ``_requant``: only products that land exactly on a half-integer are
  recomputed in float64); float64 as the generic kernel otherwise. QLinearMatMul repeats the
  generic float64 arithmetic, QGemm its float32 arithmetic, so results are identical.
* ``modelloader.QLinearConvAdd`` / ``QLinearConvClip`` (from ``modelloader.qpasses``): the
  residual com.microsoft QLinearAdd and/or integer clamp that follow a QLinearConv, applied
  in the same pass over the requantized conv output (bit for bit as the separate ops).

* With the ``jit`` extra (``_jit``): depthwise convs run on the compiled depthwise loops
  (their float32 accumulator is exact under the same bound), requantization with its tail
  is one compiled float64 pass (the generic kernel's arithmetic, so no tie handling is
  needed), and the int8 -> float32 tap conversion is a compiled gather.

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

from modelloader.kernels.cpu import _jit
from modelloader.kernels.cpu import conv as _conv
from modelloader.kernels.cpu import gemm as _gemm
from modelloader.kernels.cpu import qlinear as _ql
from modelloader.kernels.cpu._registry import kernel
from modelloader.kernels.cpu._ufuncs import clip
from modelloader.parallel import matmul

try:  # outputs from the executor's pool of dead intermediates (no fresh page faults)
    from modelloader.buffers import take as _take
except ImportError:  # pragma: no cover - older executor
    _take = np.empty

MS = "com.microsoft"
ML = "modelloader"
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
    try:
        bufs = _tls.bufs
    except AttributeError:
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
            return matmul(wm[0], cc[0])[None]
        return matmul(wm, cc)

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


class _ConvPrep:
    """Everything about a QLinearConv's constant operands that the fast path needs: the
    prepared weights, the bias (float64 (1, m, 1)), ``f32`` (every acc + bias is an integer of
    magnitude <= 2**24, see _requant) and, then, for group 1, ``wb``: the float32 weights with
    the bias as one more column (cols get a row of ones: the sgemm adds the bias, exactly).
    ``raw``: the columns hold x itself, not x - x_zp; the bias carries -x_zp * sum(w) instead
    (exact integers either way; saves the subtraction when x_zp != 0)."""

    __slots__ = ("prep", "bias", "f32", "wb", "raw")

    def __init__(self, prep: _Prepared, bias, f32: bool, wb, raw: bool) -> None:
        self.prep, self.bias, self.f32, self.wb, self.raw = prep, bias, f32, wb, raw

    def unusable(self) -> _ConvPrep:
        self.prep.chunks = None
        return self


def _conv_prep(w: np.ndarray, w_zp, b: np.ndarray | None, group: int, xdt: np.dtype, xz: int):
    def plan(wi: np.ndarray, b64: np.ndarray | None, a: int, bb: int, raw: bool) -> _ConvPrep:
        m = wi.shape[0] * wi.shape[1]
        prep = _Prepared(wi, a, bb)
        f32, wb = False, None
        bias = None if b64 is None else b64.astype(np.float64).reshape(1, m, 1)
        if prep.chunks is not None and len(prep.chunks) == 1:
            # |acc + bias| per channel, over every input: float32 holds it exactly when <= 2**24
            # (the bound covers every partial sum of the products and the bias, in any order)
            wr = wi.reshape(m, -1)
            sp, sn = np.maximum(wr, 0).sum(axis=1), np.maximum(-wr, 0).sum(axis=1)
            bound = np.maximum(a * sp + bb * sn, bb * sp + a * sn)
            if b64 is not None:
                bound = bound + np.abs(b64)
            f32 = int(bound.max(initial=0)) <= _LIMIT + 1
            if f32 and group == 1 and bias is not None:
                wb = np.concatenate([prep.mats[0][0], bias.reshape(m, 1)], axis=1, dtype=np.float32)
        return _ConvPrep(prep, bias, f32, wb, raw)

    def build():
        m = w.shape[0]
        wi = w.astype(np.int64)
        if w_zp is not None:
            zp = np.asarray(w_zp).astype(np.int64)
            if zp.ndim == 1 and zp.size == m and zp.size > 1:
                zp = zp.reshape((-1,) + (1,) * (w.ndim - 1))
            wi = wi - zp
        wi = wi.reshape(group, m // group, -1)
        a, bb = _xrange(xdt, xz)
        b64 = None
        if b is not None:
            b64 = np.asarray(b).astype(np.int32).reshape(-1).astype(np.int64) * np.ones(m, np.int64)
            # the generic kernel adds the bias in int32: stay clear of any wrap-around
            absmax = int(np.abs(wi).max(initial=0))
            if wi.shape[-1] * max(a, bb) * absmax + int(np.abs(b64).max(initial=0)) > _INT32_MAX:
                return _ConvPrep(_Prepared(wi, a, bb), None, False, None, False).unusable()
        if xz:
            ra, rb = _xrange(xdt, 0)
            braw = (0 if b64 is None else b64) - xz * wi.reshape(m, -1).sum(axis=1)
            cp = plan(wi, braw, ra, rb, True)
            if cp.f32:
                return cp
        return plan(wi, b64, a, bb, False)

    arrays = tuple(v for v in (w, b, w_zp) if isinstance(v, np.ndarray))
    key = ("conv", b is None, w_zp is None, _scalar_key(w_zp), group, np.dtype(xdt).char, xz)
    return _cached(arrays, key, build)


def _scalar_key(v) -> object:
    """A cache-key part for a zero point that is not an ndarray (scalar or None)."""
    return None if v is None or isinstance(v, np.ndarray) else int(np.asarray(v).reshape(-1)[0])


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
    clip(y, info.min, info.max, out=y)
    return y.astype(out_dt)


class _AddTail:
    """com.microsoft QLinearAdd(a, a_s, a_zp, z, z_s, z_zp, c_s, c_zp) applied to the conv's
    quantized output a, then clamped to ``clamp``: _qadd_formula's float32 arithmetic."""

    __slots__ = ("z", "za", "ra", "zb", "rb", "zc", "lo", "hi", "dt")

    def __init__(self, z, za, ra, zb, rb, zc, lo, hi, dt) -> None:
        self.z, self.za, self.ra, self.zb, self.rb = z, za, ra, zb, rb
        self.zc, self.lo, self.hi, self.dt = zc, lo, hi, dt

    def apply(
        self, a: np.ndarray, ow: int, z: np.ndarray, tmp: np.ndarray, out: np.ndarray
    ) -> None:
        """a (float32, in place; a[..., :ow] counts) holds A - a_zp; z the block's B; writes
        C into out."""
        a *= self.ra
        if self.zb:
            np.subtract(z, self.zb, out=tmp, dtype=np.float32)
        else:
            np.copyto(tmp, z, casting="unsafe")
        tmp *= self.rb
        tmp += a[..., :ow]
        np.rint(tmp, out=tmp)
        # clip(rint(y) + zc, lo, hi) == clip(rint(y), lo - zc, hi - zc) + zc: exact integers
        # (or both saturated when |rint(y)| >= 2**24)
        clip(tmp, self.lo, self.hi, out=tmp)
        if self.zc:
            np.add(tmp, self.zc, out=out, casting="unsafe")
        else:
            np.copyto(out, tmp, casting="unsafe")


_BLOCK = 1 << 15  # float64 elements per requantization block (stays in L2)
_BLOCK32 = 1 << 18  # float32 elements per requantization block


class _Req:
    """A conv's requantization: clip(rint((acc + bias) * mult) + zp, lo + zp, hi + zp) with
    mult (rows, 1, 1) and bias (rows, 1, 1) (or None) in the working precision ``ft``."""

    __slots__ = ("f32", "ft", "mult", "bias", "zp", "lo", "hi", "jit")

    def __init__(self, f32: bool, mult, bias, zp: int, clamp: tuple[int, int]) -> None:
        self.f32, self.ft = f32, np.float32 if f32 else np.float64
        self.mult, self.bias, self.zp = mult, bias, zp
        self.lo, self.hi = self.ft(clamp[0] - zp), self.ft(clamp[1] - zp)
        # (mult, bias) as float64 vectors for the compiled pass; None: multipliers not finite
        m64 = mult.reshape(-1).astype(np.float64)
        b64 = np.zeros_like(m64) if bias is None else bias.reshape(-1).astype(np.float64)
        self.jit = (m64, b64) if np.isfinite(m64).all() else None

    @staticmethod
    def make(f32: bool, mult, bias, zp: int, clamp: tuple[int, int], m: int) -> _Req:
        """``mult``: the multiplier in the scales' own precision, as conv.qlinear_conv has it
        (per tensor or per output channel); ``bias``: float64 per channel, still to add."""
        mult = np.asarray(mult)
        f32 = f32 and mult.dtype == np.float32 and bool(np.isfinite(mult).all())
        ft = np.float32 if f32 else np.float64
        mrow = np.ascontiguousarray(np.broadcast_to(mult.astype(ft).reshape(-1, 1, 1), (m, 1, 1)))
        brow = None if bias is None else bias.reshape(m, 1, 1).astype(ft)
        return _Req(f32, mrow, brow, zp, clamp)


def _requant(
    acc: np.ndarray, ow: int, req: _Req, out: np.ndarray, tail: _AddTail | None = None
) -> None:
    """Requantizes acc[..., :ow] (acc (n, m, oh, wq): exact integers in float32/float64, rows
    contiguous; wq > ow: junk columns of extended-row im2col, processed and then dropped) into
    ``out`` (n, m, oh, ow) as ``req`` says, as conv.requantize computes it (float64, half to
    even), then ``tail`` if given.

    Float32 when that is exact: ``req.f32`` says every v = acc + bias is an integer with |v| <=
    2**24, so v is exact in float32, and with a float32 multiplier m, v*m (24 x 24 significant
    bits) is exact in float64: the generic kernel rounds p = v*m itself. q = float32(v*m) is p
    rounded once to nearest; rounding to nearest is monotonic and every half-integer h with
    |h| < 2**23 is a float32, so q never crosses one: p < h gives q <= h, p > h gives q >= h.
    So rint(q) == rint(p) unless q is exactly a half-integer, i.e. |q - rint(q)| == 0.5 (that
    difference is exact), and only those elements are recomputed in float64. Clipping q to the
    integer range before rounding changes nothing (rint commutes with a clip to integers, and a
    clipped q means p saturates too).
    """
    if _jit.available and req.jit is not None:
        t = None
        if tail is not None:
            za = np.float32(req.zp - tail.za)
            t = (
                tail.z.reshape(out.shape),
                za,
                tail.ra,
                tail.zb,
                tail.rb,
                tail.zc,
                tail.lo,
                tail.hi,
            )
        clamp = (int(req.lo) + req.zp, int(req.hi) + req.zp)
        _jit.qconv_requantize(acc, *req.jit, req.zp, clamp, out, t)
        return
    n, m, oh, wq = acc.shape
    rows = n * m
    a3 = acc.reshape(rows, oh, wq)
    o3 = out.reshape(rows, oh, ow)
    f32, ft, mrow, bias, zp, lo, hi = req.f32, req.ft, req.mult, req.bias, req.zp, req.lo, req.hi
    if n > 1:
        mrow = np.tile(mrow, (n, 1, 1))
        bias = None if bias is None else np.tile(bias, (n, 1, 1))
    step = max(1, (_BLOCK32 if f32 else _BLOCK) // max(oh * wq, 1))
    nb = min(step, rows)
    qbuf = _scratch("rq", (nb, oh, wq), ft)
    tbuf = _scratch("rt", (nb, oh, wq), np.float32) if f32 or tail else None
    zpf = ft(zp)
    if tail is not None:
        z3 = tail.z.reshape(rows, oh, ow)
        za = np.float32(zp - tail.za)
        zbuf = _scratch("rz", (nb, oh, ow), np.float32)
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        q = qbuf[: r1 - r0]
        if bias is not None:
            np.add(a3[r0:r1], bias[r0:r1], out=q)
            q *= mrow[r0:r1]
        else:
            np.multiply(a3[r0:r1], mrow[r0:r1], out=q)
        clip(q, lo, hi, out=q)
        if f32:
            t = tbuf[: r1 - r0]
            np.rint(q, out=t)
            q -= t
            if q.max() == 0.5 or q.min() == -0.5:  # q exactly a half-integer: see above
                k = np.flatnonzero(np.abs(q) == 0.5)
                i, j, l = np.unravel_index(k, q.shape)
                v = a3[r0 + i, j, l].astype(np.float64)
                if bias is not None:
                    v += bias[r0 + i, 0, 0].astype(np.float64)
                v *= mrow[r0 + i, 0, 0].astype(np.float64)
                t.reshape(-1)[k] = np.clip(np.rint(v), lo, hi)
        else:
            np.rint(q, out=q)
            t = q
        if tail is None:
            if zp:
                np.add(t[..., :ow], zpf, out=o3[r0:r1], casting="unsafe")
            else:
                np.copyto(o3[r0:r1], t[..., :ow], casting="unsafe")
            continue
        a = tbuf[: r1 - r0]
        if za or a is not t:
            np.add(t, za, out=a, casting="same_kind")
        tail.apply(a, ow, z3[r0:r1], zbuf[: r1 - r0], o3[r0:r1])


def _to_f32(src: np.ndarray, zp: int, out: np.ndarray) -> None:
    """out = float32(src) - zp (exact integers)."""
    if zp:
        np.subtract(src, np.float32(zp), out=out, dtype=np.float32)
    else:
        np.copyto(out, src, casting="unsafe")


def _cols_buf(n: int, c: int, kk: int, ln: int, ones: bool) -> tuple[np.ndarray, np.ndarray]:
    """A kept im2col buffer: (all (n, K [+ 1], L), body (n, c, kk, L)); with ``ones`` the
    last row is ones (the bias row)."""
    k = c * kk
    buf = _scratch("cols", (n, k + ones, ln), np.float32)
    if ones:
        buf[:, k] = 1.0
    return buf, buf[:, :k].reshape(n, c, kk, ln)


def _columns(x, fill, xz, p, k, s, d, out_sp, group, ones=False):
    """(cols (n, group, K, L) float32 holding x - xz, wq): im2col of 8-bit x padded with
    ``fill``, L = oh * wq with wq > ow when the columns carry junk (extended rows), else
    oh * ow. ``ones`` (group 1): one more row of ones, K = c*kh*kw + 1."""
    n, c, h, wd = x.shape
    oh, ow = out_sp
    kk = k[0] * k[1]
    if kk == 1 and not any(p):
        xs = x if s == [1, 1] else x[:, :, :: s[0], :: s[1]]
        cols, body = _cols_buf(n, c, 1, oh * ow, ones)
        if _jit.available and xs.flags.c_contiguous:
            _jit.to_float(xs, xz, body)
        else:
            _to_f32(xs, xz, body.reshape(n, c, oh, ow))
        return cols.reshape(n, group, -1, oh * ow), ow
    wq = -(-(wd + p[1] + p[3]) // s[1])
    if wq <= 1.1 * ow:  # extended rows: kk contiguous slice copies, few junk columns
        geo = (h, wd, *map(tuple, (p, k, s, d, out_sp)))
        wq, hq, taps, offs = _conv.flat_geometry(*geo)
        xp = _padded(x, (p[0], p[1], hq * s[0] - h - p[0], wq * s[1] - wd - p[1]), fill)
        ext = oh * wq
        cols, body = _cols_buf(n, c, kk, ext, ones)
        if _jit.available:
            # every tap is one shifted slice of a flat stride phase: see conv.flat_geometry
            if s == [1, 1]:
                src = xp.reshape(n, c, hq * wq)
            else:
                src = _scratch("phases", (n, c, s[0], s[1], hq, wq), x.dtype)
                np.copyto(src, xp.reshape(n, c, hq, s[0], wq, s[1]).transpose(0, 1, 3, 5, 2, 4))
                src = src.reshape(n, c, -1)
            _jit.gather_shifted(src, offs, xz, body)
        elif s == [1, 1]:
            src = xp.reshape(n, c, hq * wq)
            st = src.strides
            view = as_strided(
                src,
                (n, c, k[0], k[1], ext),
                (st[0], st[1], st[2] * d[0] * wq, st[2] * d[1], st[2]),
                writeable=False,
            )
            _to_f32(view, xz, body.reshape(n, c, k[0], k[1], ext))
        else:
            ph = _scratch("phases", (n, c, s[0], s[1], hq, wq), x.dtype)
            np.copyto(ph, xp.reshape(n, c, hq, s[0], wq, s[1]).transpose(0, 1, 3, 5, 2, 4))
            ph = ph.reshape(n, c, s[0], s[1], hq * wq)
            for t, (a, b, off) in enumerate(taps):
                _to_f32(ph[:, :, a, b, off : off + ext], xz, body[:, :, t])
        return cols.reshape(n, group, -1, ext), wq
    xp = _padded(x, p, fill) if any(p) else x
    st = xp.strides
    view = as_strided(
        xp,
        shape=(n, c, k[0], k[1], oh, ow),
        strides=(st[0], st[1], st[2] * d[0], st[3] * d[1], st[2] * s[0], st[3] * s[1]),
        writeable=False,
    )
    cols, body = _cols_buf(n, c, kk, oh * ow, ones)
    _to_f32(view, xz, body.reshape(n, c, k[0], k[1], oh, ow))
    return cols.reshape(n, group, -1, oh * ow), ow


def _conv_acc(prep: _Prepared, cols: np.ndarray, m: int, wb=None) -> np.ndarray:
    """The exact integer products (n, m, L): float32 for one K-chunk (into a kept buffer),
    float64 for several; ``wb``: the weights with the bias column (cols carry the ones row)."""
    n, group, _, ln = cols.shape
    if len(prep.mats) > 1:
        return _exact_matmul(prep, cols[0] if n == 1 else cols).reshape(n, m, ln)
    wm = prep.mats[0] if wb is None else wb[None]
    acc = _scratch("acc", (n, group, m // group, ln), np.float32)
    if n == 1 and group == 1:
        matmul(wm[0], cols[0, 0], out=acc[0, 0])
    else:
        matmul(wm, cols, out=acc)
    return acc.reshape(n, m, ln)


class _Layer:
    """What a QLinearConv call needs besides x, prepared once per (constants, geometry)."""

    __slots__ = ("cp", "p", "k", "s", "d", "out_sp", "req", "out_dt")

    def __init__(self, cp, p, k, s, d, out_sp, req, out_dt) -> None:
        self.cp, self.p, self.k, self.s, self.d = cp, p, k, s, d
        self.out_sp, self.req, self.out_dt = out_sp, req, out_dt


def _vkey(v) -> object:
    """A cache-key part for a parameter that is not an ndarray (ndarrays go by identity)."""
    return ("none",) if v is None else tuple(np.asarray(v).reshape(-1).tolist())


def _layer(
    x, x_scale, xz, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
    auto_pad, dilations, group, kernel_shape, pads, strides, clamp,
) -> _Layer | None:  # fmt: skip
    def build() -> _Layer | None:
        if x.ndim != 4 or w.ndim != 4 or w.dtype not in (np.uint8, np.int8):
            return None
        if y_zero_point is not None and np.asarray(y_zero_point).size != 1:
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
        cp = _conv_prep(w, w_zero_point, b, group, x.dtype, xz)
        if cp.prep.chunks is None:
            return None
        out_dt = y_zero_point.dtype if y_zero_point is not None else x.dtype
        info = np.iinfo(out_dt)
        lo, hi = int(info.min), int(info.max)
        if clamp is not None:
            lo, hi = max(lo, clamp[0]), min(hi, clamp[1])
        zp = 0 if y_zero_point is None else int(np.asarray(y_zero_point).reshape(-1)[0])
        # the multiplier in the scales' own precision, as conv.qlinear_conv computes it
        mult = np.asarray(x_scale) * np.asarray(w_scale) / np.asarray(y_scale)
        bias = None if cp.wb is not None else cp.bias
        req = _Req.make(cp.f32, mult, bias, zp, (lo, hi), m)
        return _Layer(cp, p, k, s, d, tuple(out_sp), req, out_dt)

    params = (w, b, w_zero_point, w_scale, x_scale, y_scale, y_zero_point)
    arrays = tuple(v for v in params if isinstance(v, np.ndarray))
    key = (
        "layer", x.shape, x.dtype.char, xz, auto_pad, group, _tkey(dilations),
        _tkey(kernel_shape), _tkey(pads), _tkey(strides), clamp,
        *(_vkey(v) for v in params if not isinstance(v, np.ndarray)),
    )  # fmt: skip
    return _cached(arrays, key, build)


def _tkey(v) -> tuple | None:
    return None if v is None else tuple(v)


def _fast_qconv(
    x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
    auto_pad, dilations, group, kernel_shape, pads, strides,
    clamp: tuple[int, int] | None = None, tail=None,
):  # fmt: skip
    """The fast path (clamped to ``clamp``, then ``tail``), or None when the generic kernel
    must run."""
    if x_zero_point is None:
        xz = 0
    elif isinstance(x_zero_point, np.ndarray) and x_zero_point.size == 1:
        xz = int(x_zero_point.reshape(-1)[0])
    elif np.asarray(x_zero_point).size == 1:
        xz = int(np.asarray(x_zero_point).reshape(-1)[0])
    else:
        return None
    lay = _layer(
        x, x_scale, xz, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
        auto_pad, dilations, group, kernel_shape, pads, strides, clamp,
    )  # fmt: skip
    if lay is None:
        return None
    n, m = x.shape[0], w.shape[0]
    oh, ow = lay.out_sp
    cp = lay.cp
    if _jit.available and group == x.shape[1] > 1 and len(cp.prep.mats) == 1 and cp.wb is None:
        y = _take((n, m, oh, ow), lay.out_dt if tail is None else tail.dt)
        _requant(_depthwise_acc(x, xz, lay), ow, lay.req, y, tail)
        return y
    cols, wq = _columns(
        x, xz, 0 if cp.raw else xz, lay.p, lay.k, lay.s, lay.d, lay.out_sp, group, cp.wb is not None
    )
    acc = _conv_acc(cp.prep, cols, m, cp.wb).reshape(n, m, oh, wq)
    y = _take((n, m, oh, ow), lay.out_dt if tail is None else tail.dt)
    _requant(acc, ow, lay.req, y, tail)
    return y


def _depthwise_acc(x: np.ndarray, xz: int, lay: _Layer) -> np.ndarray:
    """The exact accumulator (n, m, oh, ow) of a depthwise QLinearConv, bias excluded (the
    requantization adds it), by the compiled depthwise loops on float32 x: x - x_zp with zero
    padding, or raw x padded with x_zp where ``cp.raw`` moved x_zp into the bias (see
    _ConvPrep). The single K-chunk bounds every partial sum below 2**24: exact in any order."""
    n, c = x.shape[:2]
    cp = lay.cp
    shift = 0 if cp.raw else xz
    xf = _scratch("dw_x", x.shape, np.float32)
    _jit.to_float(x if x.flags.c_contiguous else np.ascontiguousarray(x), shift, xf)
    wf = cp.prep.mats[0].reshape((-1, 1) + tuple(lay.k))
    acc = _scratch("dw_acc", (n, wf.shape[0]) + lay.out_sp, np.float32)
    geometry = (lay.k, lay.s, lay.d, lay.p, lay.out_sp)
    return _conv.depthwise_kernel(x.shape[2:], wf, None, np.float32, geometry, fill=xz - shift)(
        xf, acc
    )


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


# --------------------------------------------------------------------------- fused tails
# modelloader.qpasses folds what follows a QLinearConv into it: the integer clamp of a Relu/Clip
# (QLinearConvClip) and a residual com.microsoft QLinearAdd with its clamp (QLinearConvAdd).


def _clamped(y: np.ndarray, act_min: int | None, act_max: int | None) -> np.ndarray:
    """Clip(y, act_min, act_max) as the Clip kernel computes it for act_min <= act_max."""
    if act_min is None and act_max is None:
        return y
    lo, hi = _ql._act_range(y.dtype, act_min, act_max)
    return clip(y, y.dtype.type(lo), y.dtype.type(hi), out=y)


@kernel("QLinearConvClip", domain=ML)
def qlinear_conv_clip(
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
    act_min: int | None = None,
    act_max: int | None = None,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """modelloader QLinearConvClip: Clip(QLinearConv(...), act_min, act_max), the bounds in the
    output's integers (act_min <= act_max): the clamp is part of the requantization's."""
    out_dt = y_zero_point.dtype if y_zero_point is not None else x.dtype
    y = None
    if x.dtype in _INT8:
        y = _fast_qconv(
            x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
            auto_pad, dilations, group, kernel_shape, pads, strides,
            clamp=_ql._act_range(out_dt, act_min, act_max),
        )  # fmt: skip
    if y is None:
        y = _conv.qlinear_conv(
            x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
            auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
            pads=pads, strides=strides,
        )  # fmt: skip
        y = _clamped(y, act_min, act_max)
    return y


def _add_tail(y_dt, shape, a_scale, a_zero_point, z, z_scale, z_zero_point, c_scale,
              c_zero_point, act_min, act_max) -> _AddTail | None:  # fmt: skip
    """The QLinearAdd tail for a conv output of dtype ``y_dt`` and ``shape``, or None when it
    must run on its own (broadcasting, other dtypes, scales whose ratios aren't plain)."""
    dt = _ql._out_dtype(c_zero_point, y_dt)
    z = np.asarray(z)
    if z.shape != tuple(shape) or z.dtype not in _INT8 or dt not in _INT8:
        return None
    if any(v is not None and np.asarray(v).size != 1 for v in (a_zero_point, z_zero_point)):
        return None
    cs = _ql._f32(c_scale)
    ra, rb = _ql._f32(a_scale) / cs, _ql._f32(z_scale) / cs
    if not (np.isfinite(ra) and np.isfinite(rb) and abs(ra) < 1e30 and abs(rb) < 1e30):
        return None
    zc = _ql._zp(c_zero_point)
    lo, hi = _ql._act_range(dt, act_min, act_max)
    return _AddTail(
        z, _ql._zp(a_zero_point), ra, np.float32(_ql._zp(z_zero_point)), rb, np.float32(zc),
        np.float32(lo - zc), np.float32(hi - zc), dt,
    )  # fmt: skip


@kernel("QLinearConvAdd", domain=ML)
def qlinear_conv_add(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray,
    w: np.ndarray,
    w_scale: np.ndarray,
    w_zero_point: np.ndarray,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray,
    b: np.ndarray | None,
    a_scale: np.ndarray,
    a_zero_point: np.ndarray | None,
    z: np.ndarray,
    z_scale: np.ndarray,
    z_zero_point: np.ndarray | None,
    c_scale: np.ndarray,
    c_zero_point: np.ndarray | None = None,
    *,
    act_min: int | None = None,
    act_max: int | None = None,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """modelloader QLinearConvAdd: Clip(com.microsoft.QLinearAdd(Y, a_scale, a_zero_point, Z,
    z_scale, z_zero_point, c_scale, c_zero_point), act_min, act_max) with Y =
    QLinearConv(x, ..., y_scale, y_zero_point, b): the conv's quantized output Y (exactly as
    QLinearConv gives it) goes through the add in the same pass, never stored."""
    conv_kw = dict(
        auto_pad=auto_pad, dilations=dilations, group=group, kernel_shape=kernel_shape,
        pads=pads, strides=strides,
    )  # fmt: skip
    y = None
    if x.dtype in _INT8 and x.ndim == 4 and w.ndim == 4:
        out_dt = y_zero_point.dtype if y_zero_point is not None else x.dtype
        p, out_sp = _conv.resolve_pads(
            x.shape[2:], list(kernel_shape) if kernel_shape else list(w.shape[2:]),
            list(strides) if strides else [1, 1], list(dilations) if dilations else [1, 1],
            pads, auto_pad,
        )  # fmt: skip
        tail = _add_tail(
            out_dt, (x.shape[0], w.shape[0], *out_sp), a_scale, a_zero_point, z, z_scale,
            z_zero_point, c_scale, c_zero_point, act_min, act_max,
        )  # fmt: skip
        if tail is not None:
            y = _fast_qconv(
                x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b,
                auto_pad, dilations, group, kernel_shape, pads, strides, tail=tail,
            )  # fmt: skip
            if y is not None:
                return y
    fn = qlinear_conv_fast if x.dtype in _INT8 else _conv.qlinear_conv
    y = fn(x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, b, **conv_kw)
    c = _ql.qlinear_add(y, a_scale, a_zero_point, z, z_scale, z_zero_point, c_scale, c_zero_point)
    return _clamped(c, act_min, act_max)


# --------------------------------------------------------------------------- matmuls


def _mat_prep(bi_fn, b: np.ndarray, zp, key: tuple, a: int, bb: int) -> _Prepared:
    """(K, N) right operand prepared as chunks of its transpose rows, i.e. (1, N, K)."""

    def build():
        bi = bi_fn()
        return _Prepared(bi.T[None], a, bb)

    arrays = (b, zp) if isinstance(zp, np.ndarray) else (b,)
    return _cached(arrays, (*key, zp is None, _scalar_key(zp), a, bb), build)


def _right_operand(
    a_dtype: np.dtype, az: np.ndarray | None, b: np.ndarray, b_zero_point, tag: str
) -> tuple[int, int, int, _Prepared]:
    """For a @ b with 8-bit a (scalar zero point ``az``) and a 2-D 8-bit b: (a's zero point,
    the bounds (a, b) of a - a_zp as _xrange gives them, b - b_zp prepared in K-chunks)."""
    za = 0 if az is None else int(az.reshape(-1)[0])
    ra, rb = _xrange(a_dtype, za)

    def bi():
        v = b.astype(np.int64)
        if b_zero_point is not None:
            v = v - np.asarray(b_zero_point).astype(np.int64)
        return np.broadcast_to(v, b.shape)

    return za, ra, rb, _mat_prep(bi, b, b_zero_point, (tag,), ra, rb)


def _right_matmul(a_f32: np.ndarray, prep: _Prepared) -> np.ndarray:
    """a (M, K) float32 times the prepared operand's (K, N), exact (float32 or float64)."""
    if len(prep.mats) == 1:
        return matmul(a_f32, prep.mats[0][0].T)
    acc = None
    for (k0, k1), wm in zip(prep.chunks, prep.mats, strict=True):
        part = matmul(a_f32[:, k0:k1], wm[0].T)
        if acc is None:
            acc = part.astype(np.float64)
        else:
            acc += part
    return acc


@kernel("MatMulInteger", dtypes=_INT8)
def matmul_integer_fast(
    a: np.ndarray,
    b: np.ndarray,
    a_zero_point: np.ndarray | None = None,
    b_zero_point: np.ndarray | None = None,
) -> np.ndarray:
    """ONNX MatMulInteger-10 for 8-bit a with a 2-D 8-bit b (dynamic quantization's
    products): the generic kernel's int32 result, on exact float32 K-chunks instead of
    float64 BLAS."""
    az = None if a_zero_point is None else np.asarray(a_zero_point)
    if (
        b.ndim != 2
        or a.ndim < 2
        or b.dtype not in (np.uint8, np.int8)
        or (az is not None and az.size != 1)
        or a.shape[-1] != b.shape[0]
    ):
        return _gemm.matmul_integer(a, b, a_zero_point, b_zero_point)
    za, ra, rb, prep = _right_operand(a.dtype, az, b, b_zero_point, "mmi")
    if prep.chunks is None:
        return _gemm.matmul_integer(a, b, a_zero_point, b_zero_point)
    rows = a.reshape(-1, a.shape[-1])
    a2 = np.subtract(rows, np.float32(za), out=_conv.scratch("mmi_a", rows.shape, np.float32))
    if len(prep.mats) == 1:
        y = matmul(
            a2, prep.mats[0][0].T, out=_conv.scratch("mmi_y", (len(rows), b.shape[1]), np.float32)
        )
    else:
        y = _right_matmul(a2, prep)
    out = _take((*a.shape[:-1], b.shape[1]), np.int32)
    np.copyto(out.reshape(y.shape), y, casting="unsafe")
    return out


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
        za, ra, rb, prep = _right_operand(a.dtype, az, b, b_zero_point, "qmm")
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
