"""Quantized-operator kernels.

* onnxruntime ``com.microsoft`` QOperator contrib ops (QLinearAdd, QLinearMul, QLinearAveragePool,
  QLinearGlobalAveragePool, QLinearConcat, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax, QGemm,
  QLinearReduceMean, QLinearConv with ``channels_last``). Arithmetic follows onnxruntime's CPU
  kernels: integer accumulation, float32 requantization with round-half-to-even, and 256-entry
  lookup tables for the nonlinear ops.
* ``modelloader``-domain TFLite kernels (TFLiteConv, TFLiteFullyConnected, TFLiteAdd, TFLiteSub,
  TFLiteMul) reproducing the TFLite reference integer kernels bit for bit: int32 accumulation,
  fixed-point requantization (QuantizeMultiplier + MultiplyByQuantizedMultiplier, i.e.
  SaturatingRoundingDoublingHighMul then RoundingDivideByPOT) and the activation clamp.
* Helpers for other kernels/importers: ``requantize`` (float, half-to-even), ``tflite_requantize``,
  ``tflite_quantize_multiplier``, ``tflite_multiply_by_quantized_multiplier``,
  ``tflite_activation_range`` and ``int_matmul`` (exact integer matmul on float BLAS).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from modelloader.buffers import take
from modelloader.kernels.cpu import _jit
from modelloader.kernels.cpu._registry import kernel, prepares, registry
from modelloader.kernels.cpu._ufuncs import clip as _clip
from modelloader.kernels.cpu.conv import (
    _conv_float,
    conv_geometry,
    depthwise_jit,
    depthwise_kernel,
    scratch,
)
from modelloader.kernels.cpu.reduce import reduced_shape, row_sums
from modelloader.kernels.registry import KernelFn, Recipes
from modelloader.parallel import matmul

MS = "com.microsoft"
ML = "modelloader"

_F32_EXACT = 1 << 24  # float32 holds every integer of magnitude <= 2**24
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


# --------------------------------------------------------------------------- helpers


@functools.lru_cache(maxsize=32)
def _irange(dtype: np.dtype) -> tuple[int, int]:
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _f32(v: np.ndarray | float | None, default: float = 0.0) -> np.float32:
    """A per-tensor scale as float32 (first element of a scalar / 1-element tensor)."""
    if v is None:
        return np.float32(default)
    return np.float32(np.asarray(v).reshape(-1)[0])


def _zp(v: np.ndarray | int | None) -> int:
    """A per-tensor zero point as Python int (0 when omitted)."""
    if v is None:
        return 0
    return int(np.asarray(v).reshape(-1)[0])


def _along(v: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    """Reshapes a per-tensor or 1-D per-axis parameter to broadcast against rank ``ndim``."""
    v = np.asarray(v)
    if v.size == 1:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis % ndim] = v.size
    return v.reshape(shape)


def int_matmul(
    a: np.ndarray, b: np.ndarray, bound_a: int | None = None, bound_b: int | None = None
) -> np.ndarray:
    """Exact integer ``a @ b`` (any integer-valued arrays, batched like np.matmul) -> int64.

    NumPy's integer matmul does not use BLAS; instead the product runs as a float32 sgemm when
    every partial sum is below 2**24 (K * max|a| * max|b| < 2**24, e.g. K <= 1040 for int8 x int8)
    and as a float64 dgemm otherwise (exact below 2**53). ``bound_a``/``bound_b`` are upper bounds
    of |a| and |b|; they are measured when omitted.
    """
    k = a.shape[-1]
    if bound_a is None:
        bound_a = int(np.abs(a).max(initial=0))
    if bound_b is None:
        bound_b = int(np.abs(b).max(initial=0))
    ft = np.float32 if k * bound_a * bound_b < _F32_EXACT else np.float64
    y = matmul(a.astype(ft, copy=False), b.astype(ft, copy=False))
    return y.astype(np.int64)


def requantize(
    acc: np.ndarray,
    multiplier: np.ndarray | float,
    out_zp: np.ndarray | int | None,
    out_dtype: np.dtype,
    axis: int | None = None,
) -> np.ndarray:
    """int accumulator -> saturate(round_half_even(acc * multiplier) + out_zp) in ``out_dtype``.

    ``multiplier`` (float64 product, e.g. in_scale * w_scale / out_scale) and ``out_zp`` are
    per-tensor, or 1-D per-channel along ``axis`` (default: as given, numpy broadcasting).
    """
    acc = np.asarray(acc)
    m = np.asarray(multiplier, np.float64)
    zp = np.asarray(0 if out_zp is None else out_zp).astype(np.float64)
    if axis is not None:
        m = _along(m, acc.ndim, axis)
        zp = _along(zp, acc.ndim, axis)
    y = acc.astype(np.float64) * m
    np.rint(y, out=y)
    y += zp
    lo, hi = _irange(np.dtype(out_dtype))
    _clip(y, lo, hi, out=y)
    return y.astype(out_dtype)


def _lut(x: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Applies a 256-entry table indexed by the raw byte of each 8-bit element."""
    return table[x.view(np.uint8)]


def _byte_values(dtype: np.dtype) -> np.ndarray:
    """The value of each raw byte 0..255 read as ``dtype`` (int8 or uint8), as int32."""
    return np.arange(256, dtype=np.uint8).view(dtype).astype(np.int32)


def _quantize_f32(v: np.ndarray, scale: np.float32, zp: int, dtype: np.dtype) -> np.ndarray:
    """MlasQuantizeLinear: saturate(nearbyint(v / scale) + zp) in float32."""
    lo, hi = _irange(dtype)
    q = np.rint(v.astype(np.float32) / scale) + np.float32(zp)
    return np.clip(q, lo, hi).astype(dtype)


def _lookup_table(x_dtype, x_scale, x_zp, y_scale, y_zp, y_dtype, fn) -> np.ndarray:
    """onnxruntime QlinearBuildLookupTable: dequantize all 256 inputs, apply fn, quantize."""
    xs = _f32(x_scale) * (_byte_values(x_dtype) - _zp(x_zp)).astype(np.float32)
    return _quantize_f32(fn(xs), _f32(y_scale), _zp(y_zp), y_dtype)


def _out_dtype(zp: np.ndarray | None, fallback: np.dtype) -> np.dtype:
    return np.asarray(zp).dtype if zp is not None else np.dtype(fallback)


# --------------------------------------------------------------------------- elementwise


@kernel("QLinearAdd", domain=MS)
def qlinear_add(
    a: np.ndarray,
    a_scale: np.ndarray,
    a_zero_point: np.ndarray | None,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zero_point: np.ndarray | None,
    c_scale: np.ndarray,
    c_zero_point: np.ndarray | None = None,
) -> np.ndarray:
    """com.microsoft QLinearAdd-1: C = quant(deq(A) + deq(B)) with numpy broadcasting.

    As MlasQLinearAdd: (a_s/c_s)*(A-a_zp) + (b_s/c_s)*(B-b_zp) in float, rounded half to even.
    """
    dt = _out_dtype(c_zero_point, a.dtype)
    a, b = np.asarray(a), np.asarray(b)
    if (
        a.shape == b.shape
        and a.size >= 4096
        and a.dtype in _BYTE_TYPES
        and b.dtype in _BYTE_TYPES
        and dt in _BYTE_TYPES
    ):
        # every (a, b) byte pair's result, computed once by the same formula: one gather
        key = (a.dtype.str, b.dtype.str, dt.str, float(_f32(a_scale)), float(_f32(b_scale)),
               float(_f32(c_scale)), _zp(a_zero_point), _zp(b_zero_point), _zp(c_zero_point))  # fmt: skip
        table = _ADD_TABLES.get(key)
        if table is None:
            va = _byte_values(a.dtype).reshape(256, 1)
            vb = _byte_values(b.dtype).reshape(1, 256)
            table = _qadd_formula(
                va, a_scale, a_zero_point, vb, b_scale, b_zero_point, c_scale, c_zero_point, dt
            ).reshape(-1)
            if len(_ADD_TABLES) > 256:
                _ADD_TABLES.clear()
            _ADD_TABLES[key] = table
        idx = np.left_shift(a.view(np.uint8), 8, dtype=np.uint16)
        np.bitwise_or(idx, b.view(np.uint8), out=idx)
        return np.take(table, idx)
    return _qadd_formula(
        a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point, dt
    )


_BYTE_TYPES = (np.dtype(np.uint8), np.dtype(np.int8))
_ADD_TABLES: dict[tuple, np.ndarray] = {}


def _qadd_formula(a, a_scale, a_zero_point, b, b_scale, b_zero_point, c_scale, c_zero_point, dt):
    """MlasQLinearAdd's arithmetic (float32, half-to-even, saturate) on any broadcastable a, b."""
    cs = _f32(c_scale)
    ra, rb = _f32(a_scale) / cs, _f32(b_scale) / cs
    va = (a.astype(np.int32) - _zp(a_zero_point)).astype(np.float32) * ra
    vb = (b.astype(np.int32) - _zp(b_zero_point)).astype(np.float32) * rb
    lo, hi = _irange(dt)
    y = np.rint(va + vb) + np.float32(_zp(c_zero_point))
    return np.clip(y, lo, hi).astype(dt)


@kernel("QLinearMul", domain=MS)
def qlinear_mul(
    a: np.ndarray,
    a_scale: np.ndarray,
    a_zero_point: np.ndarray | None,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zero_point: np.ndarray | None,
    c_scale: np.ndarray,
    c_zero_point: np.ndarray | None = None,
) -> np.ndarray:
    """com.microsoft QLinearMul-1: C = quant(deq(A) * deq(B)) with numpy broadcasting.

    As MlasQLinearMul: exact int product (A-a_zp)*(B-b_zp) times float32(a_s*b_s/c_s), half-even.
    """
    mult = _f32(a_scale) * _f32(b_scale) / _f32(c_scale)
    prod = (a.astype(np.int32) - _zp(a_zero_point)) * (b.astype(np.int32) - _zp(b_zero_point))
    dt = _out_dtype(c_zero_point, a.dtype)
    lo, hi = _irange(dt)
    y = np.rint(prod.astype(np.float32) * mult) + np.float32(_zp(c_zero_point))
    return np.clip(y, lo, hi).astype(dt)


@kernel("QLinearLeakyRelu", domain=MS)
def qlinear_leaky_relu(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray | None,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray | None = None,
    *,
    alpha: float = 0.01,
) -> np.ndarray:
    """com.microsoft QLinearLeakyRelu-1: 256-entry table of quant(LeakyRelu(deq(x)))."""
    a = np.float32(alpha)
    table = _lookup_table(
        x.dtype, x_scale, x_zero_point, y_scale, y_zero_point, _out_dtype(y_zero_point, x.dtype),
        lambda v: np.where(v >= 0, v, v * a),
    )  # fmt: skip
    return _lut(x, table)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-v.astype(np.float64)))).astype(np.float32)


@kernel("QLinearSigmoid", domain=MS)
def qlinear_sigmoid(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray | None,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray | None = None,
) -> np.ndarray:
    """com.microsoft QLinearSigmoid-1: 256-entry table of quant(Sigmoid(deq(x)))."""
    table = _lookup_table(
        x.dtype, x_scale, x_zero_point, y_scale, y_zero_point, _out_dtype(y_zero_point, x.dtype),
        _sigmoid,
    )  # fmt: skip
    return _lut(x, table)


@kernel("QLinearSoftmax", domain=MS)
def qlinear_softmax(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray | None,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray | None = None,
    *,
    opset: int,
    axis: int | None = None,
) -> np.ndarray:
    """com.microsoft QLinearSoftmax-1: quantized Softmax; ``opset`` < 13 flattens from ``axis``
    (default 1) into one reduction, >= 13 reduces the single ``axis`` (default -1).

    As onnxruntime: exp values come from a 256-entry table of exp((x - x_max) * x_scale) (scaled
    up to keep precision), y = nearbyint(e * floor(1/y_scale) / sum(e)) + y_zp. The input zero
    point cancels out.
    """
    if axis is None:
        axis = 1 if opset < 13 else -1
    axis %= max(x.ndim, 1)
    if opset < 13:
        lead = math.prod(x.shape[:axis])
        xr = x.reshape(lead, -1)
        red = -1
    else:
        xr, red = x, axis
    d = xr.shape[red] if xr.ndim else 1
    table = _softmax_table(float(_f32(x_scale)), d)
    xi = xr.astype(np.int32)
    dist = xi.max(axis=red, keepdims=True) - xi
    e = table[dist]
    vsum = e.sum(axis=red, keepdims=True, dtype=np.float64).astype(np.float32)
    yscale = np.float32(math.floor(np.float32(1.0) / _f32(y_scale)))
    dt = _out_dtype(y_zero_point, x.dtype)
    lo, hi = _irange(dt)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.rint((e * yscale) / vsum) + np.float32(_zp(y_zero_point))
    q[np.isnan(q)] = 0  # (only from an overflowing table: as np.nan_to_num, far cheaper)
    y = np.clip(q, lo, hi).astype(dt)
    return y.reshape(x.shape)


# --------------------------------------------------------------------------- pooling / concat


def _nchw(x: np.ndarray, channels_last: int) -> np.ndarray:
    return np.moveaxis(x, -1, 1) if channels_last else x


def _nhwc(y: np.ndarray, channels_last: int) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(y, 1, -1)) if channels_last else y


@kernel("QLinearGlobalAveragePool", domain=MS)
def qlinear_global_average_pool(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray | None,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray | None = None,
    *,
    channels_last: int = 0,
) -> np.ndarray:
    """com.microsoft QLinearGlobalAveragePool-1: mean over all spatial axes (NCHW..., or
    N...C with channels_last=1), spatial dims kept as 1.

    As MlasQLinearGlobalAveragePool: exact int32 sum of (x - x_zp), times float32
    x_scale / (y_scale * image_size), rounded half to even, plus y_zp.
    """
    sp = tuple(range(1, x.ndim - 1)) if channels_last else tuple(range(2, x.ndim))
    size = math.prod(x.shape[i] for i in sp)
    acc = x.sum(axis=sp, keepdims=True, dtype=np.int64) - _zp(x_zero_point) * size
    scale = _f32(x_scale) / (_f32(y_scale) * np.float32(size))
    dt = _out_dtype(y_zero_point, x.dtype)
    lo, hi = _irange(dt)
    y = np.rint(acc.astype(np.float32) * scale) + np.float32(_zp(y_zero_point))
    return np.clip(y, lo, hi).astype(dt)


def _pool_geometry(
    in_sp: Sequence[int],
    k: Sequence[int],
    s: Sequence[int],
    pads: Sequence[int] | None,
    auto_pad: str,
    ceil_mode: int,
) -> tuple[list[int], list[int]]:
    """Begin/end pads and output size (onnxruntime PoolAttributes, no dilation)."""
    r = len(in_sp)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [-(-in_sp[i] // s[i]) for i in range(r)]
        tot = [max(0, (out[i] - 1) * s[i] + k[i] - in_sp[i]) for i in range(r)]
        lo = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in tot]
        return lo + [tot[i] - lo[i] for i in range(r)], out
    p = [0] * (2 * r) if auto_pad == "VALID" or not pads else list(pads)
    out = []
    for i in range(r):
        span = in_sp[i] + p[i] + p[i + r] - k[i]
        out.append((-(-span // s[i]) if ceil_mode else span // s[i]) + 1)
    return p, out


@kernel("QLinearAveragePool", domain=MS)
def qlinear_average_pool(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray | None,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray | None = None,
    *,
    kernel_shape: Sequence[int],
    auto_pad: str = "NOTSET",
    ceil_mode: int = 0,
    channels_last: int = 0,
    count_include_pad: int = 0,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """com.microsoft QLinearAveragePool-1: AveragePool on dequantized x, requantized to y.

    As onnxruntime: float32 sum of x_scale * (x - x_zp) over the window, divided by count (the
    kernel size with count_include_pad, else the in-image elements), then
    y = nearbyint(mean / y_scale + y_zp). channels_last=1 takes and returns N, *spatial, C.
    """
    xc = _nchw(x, channels_last)
    r = xc.ndim - 2
    k = list(kernel_shape)
    s = list(strides) if strides else [1] * r
    in_sp = xc.shape[2:]
    p, out_sp = _pool_geometry(in_sp, k, s, pads, auto_pad, ceil_mode)
    # pad far enough that every (possibly ceil-mode) window lies inside the buffer
    hi = [max(0, (out_sp[i] - 1) * s[i] + k[i] - in_sp[i] - p[i]) for i in range(r)]
    # dequantized float32 values summed tap by tap in row-major window order: the same float32
    # additions as onnxruntime's pool tasks (padding adds exact zeros), so ties round alike
    xf = (xc.astype(np.int32) - _zp(x_zero_point)).astype(np.float32) * _f32(x_scale)
    buf = np.zeros(xc.shape[:2] + tuple(in_sp[i] + p[i] + hi[i] for i in range(r)), np.float32)
    buf[(slice(None), slice(None)) + tuple(slice(p[i], p[i] + in_sp[i]) for i in range(r))] = xf
    acc = np.zeros(xc.shape[:2] + tuple(out_sp), np.float32)
    for tap in np.ndindex(*k):
        acc += buf[
            (slice(None), slice(None))
            + tuple(slice(tap[i], tap[i] + (out_sp[i] - 1) * s[i] + 1, s[i]) for i in range(r))
        ]
    if count_include_pad:
        count = np.full(out_sp, float(math.prod(k)))
    else:
        count = np.ones(out_sp)
        for i in range(r):
            start = np.arange(out_sp[i]) * s[i] - p[i]
            n = np.minimum(start + k[i], in_sp[i]) - np.maximum(start, 0)
            shape = [1] * r
            shape[i] = out_sp[i]
            count = count * n.reshape(shape)
    mean = acc / count.astype(np.float32)
    dt = _out_dtype(y_zero_point, x.dtype)
    lo, hi_ = _irange(dt)
    y = np.rint(mean / _f32(y_scale) + np.float32(_zp(y_zero_point)))
    return _nhwc(np.clip(y, lo, hi_).astype(dt), channels_last)


@kernel("QLinearConcat", domain=MS)
def qlinear_concat(y_scale: np.ndarray, y_zero_point: np.ndarray, *inputs, axis: int) -> np.ndarray:
    """com.microsoft QLinearConcat-1: inputs are (X, X_scale, X_zero_point) triples; each X is
    requantized to (y_scale, y_zero_point) through a 256-entry table (copied when its
    parameters already match), then concatenated along ``axis``."""
    dt = np.asarray(y_zero_point).dtype
    ys, yz = _f32(y_scale), _zp(y_zero_point)
    parts = []
    for i in range(0, len(inputs), 3):
        x, xs, xz = inputs[i], inputs[i + 1], inputs[i + 2]
        if _f32(xs) == ys and _zp(xz) == yz:
            parts.append(x)
        else:
            parts.append(_lut(x, _lookup_table(x.dtype, xs, xz, ys, yz, dt, lambda v: v)))
    return np.concatenate(parts, axis=axis)


@functools.lru_cache(maxsize=256)
def _softmax_table(xs: float, d: int) -> np.ndarray:
    """QLinearSoftmax's exp table for input scale ``xs`` and ``d`` values per reduction:
    entry t is for distance t = x_max - x (0..255), as QlinearBuildLookupTableUint32 (float);
    cached (read-only), since a node computes it from the same two numbers on every call."""
    bit_shift = math.log(float(np.float32(np.finfo(np.float32).max) / np.float32(max(d, 1))))
    bit_shift = max(0.0, bit_shift - 5.0) / xs
    t = np.arange(256, dtype=np.float64)
    table = np.exp((bit_shift - t) * xs).astype(np.float32)
    table.flags.writeable = False
    return table


@kernel("QLinearReduceMean", domain=MS)
def qlinear_reduce_mean(
    data: np.ndarray,
    data_scale: np.ndarray,
    data_zero_point: np.ndarray | None,
    reduced_scale: np.ndarray,
    reduced_zero_point: np.ndarray | None = None,
    *,
    axes: Sequence[int],
    keepdims: int,
) -> np.ndarray:
    """com.microsoft QLinearReduceMean-1: mean of (data - zp) over ``axes`` (exact int sum),
    requantized by data_scale / reduced_scale with round-half-to-even."""
    ax = tuple(a % data.ndim for a in axes) if len(axes) else tuple(range(data.ndim))
    n = math.prod(data.shape[a] for a in ax)
    acc = row_sums(data, tuple(sorted(ax)), bool(keepdims))
    if acc is None:
        acc = data.sum(axis=ax, keepdims=bool(keepdims), dtype=np.int64)
    acc = acc - _zp(data_zero_point) * n
    mult = float(_f32(data_scale)) / (float(_f32(reduced_scale)) * n)
    dt = _out_dtype(reduced_zero_point, data.dtype)
    return requantize(acc, mult, reduced_zero_point, dt)


@prepares("QLinearReduceMean", domain=MS)
def _prepare_qlinear_reduce_mean(consts: tuple, **attrs: Any) -> KernelFn | None:
    """QLinearReduceMean with constant scales and zero points over 8-bit data's trailing
    axes (global average pooling): one compiled pass (``_jit.mean_rows``) computing what
    the generic kernel does: the exact int sum minus zp * n, then round_half_even(sum *
    mult) + zp out, saturated."""
    if len(consts) < 4 or any(c is None for c in consts[1:4]) or not _jit.available:
        return None
    axes, keep = tuple(attrs["axes"]), bool(attrs["keepdims"])
    xs, xz, ys = float(_f32(consts[1])), _zp(consts[2]), float(_f32(consts[3]))
    yz = consts[4] if len(consts) > 4 else None

    def recipe(key: tuple) -> Callable | None:
        shape, dtype = key
        r = len(shape)
        ax = tuple(sorted(a % r for a in axes)) if axes and r else ()
        if dtype.type not in (np.int8, np.uint8) or not ax or ax != tuple(range(r - len(ax), r)):
            return None
        n = math.prod(shape[a] for a in ax)
        if not n:
            return None
        outer = math.prod(shape) // n
        dt = _out_dtype(yz, dtype)
        lo, hi = _irange(dt)
        mult = xs / (ys * n)
        out_shape = reduced_shape(shape, ax, keep)
        zp_out = float(_zp(yz))

        def compiled(data: np.ndarray) -> np.ndarray:
            x = data if data.flags.c_contiguous else np.ascontiguousarray(data)
            out = np.empty(out_shape, dt)
            return _jit.mean_rows(x.reshape(outer, n), xz, mult, zp_out, lo, hi, out)

        return compiled

    recipes = Recipes(recipe)

    def run(data: np.ndarray, *rest: Any) -> np.ndarray:
        fn = recipes.get((data.shape, data.dtype))
        return fn(data) if fn else qlinear_reduce_mean(data, *rest, **attrs)

    return run


# --------------------------------------------------------------------------- QGemm / QLinearConv


@kernel("QGemm", domain=MS)
def qgemm(
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
    """com.microsoft QGemm-1: acc = (A' - a_zp) @ (B' - b_zp) + C (int32 bias, scale a_s*b_s);
    b_scale/b_zero_point per tensor or per column (N). With y_scale: y = saturate(
    round_half_even(acc * alpha*a_s*b_s/y_s) + y_zp) (y_zp's type, uint8 if omitted); without:
    float32 y = acc * alpha*a_s*b_s."""
    am = a.T if transA else a
    bm = b.T if transB else b
    ai = am.astype(np.int32) - _zp(a_zero_point)
    bz = np.asarray(b_zero_point).astype(np.int32).reshape(-1)
    bi = bm.astype(np.int32) - (bz if bz.size > 1 else bz[0])
    lo_a, hi_a = _irange(a.dtype)
    za = _zp(a_zero_point)
    acc = int_matmul(ai, bi, max(abs(lo_a - za), abs(hi_a - za)))
    if c is not None:
        acc = acc + np.asarray(c).astype(np.int64)
    bs = np.asarray(b_scale, np.float32).reshape(-1)
    scale = np.float32(alpha) * _f32(a_scale) * bs
    if y_scale is None:
        return (acc.astype(np.float32) * scale).astype(np.float32)
    scale = scale / _f32(y_scale)
    dt = _out_dtype(y_zero_point, np.uint8)
    lo, hi = _irange(dt)
    y = np.rint(acc.astype(np.float32) * scale) + np.float32(_zp(y_zero_point))
    return np.clip(y, lo, hi).astype(dt)


@kernel("QLinearConv", domain=MS)
def qlinear_conv_ms(
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
    """com.microsoft QLinearConv-1: ONNX QLinearConv, with x and y in N, *spatial, C layout when
    channels_last=1 (w stays M, C/group, *k)."""
    # the ONNX-domain QLinearConv kernel (kernels/cpu/conv.py) does the NCHW work
    y = registry.lookup("QLinearConv")(
        _nchw(x, channels_last), x_scale, x_zero_point, w, w_scale, w_zero_point,
        y_scale, y_zero_point, b, auto_pad=auto_pad, dilations=dilations, group=group,
        kernel_shape=kernel_shape, pads=pads, strides=strides,
    )  # fmt: skip
    return _nhwc(y, channels_last)


# --------------------------------------------------------------------------- TFLite arithmetic


def tflite_quantize_multiplier(
    real_multiplier: np.ndarray | float,
) -> tuple[np.ndarray, np.ndarray]:
    """TFLite QuantizeMultiplier, vectorised: real = q * 2**shift with q a Q31 int32 in
    [2**30, 2**31), rounded half away from zero. Returns (int64 multiplier, int64 shift)."""
    real = np.asarray(real_multiplier, np.float64)
    frac, shift = np.frexp(real)
    shift = shift.astype(np.int64)
    v = frac * float(1 << 31)  # exact: frac has 53 bits
    q = (np.sign(v) * np.floor(np.abs(v) + 0.5)).astype(np.int64)  # TfLiteRound
    carry = q == (1 << 31)
    q = np.where(carry, q // 2, q)
    shift = np.where(carry, shift + 1, shift)
    tiny = shift < -31
    q = np.where(tiny, 0, q)
    shift = np.where(tiny, 0, shift)
    huge = shift > 30
    q = np.where(huge, _INT32_MAX, q)
    shift = np.where(huge, 30, shift)
    shift = np.where(real == 0, 0, shift)
    return q, shift


def _wrap32(v: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 range (C int32 arithmetic)."""
    return ((v + (1 << 31)) & 0xFFFFFFFF) - (1 << 31)


def _srdhm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """gemmlowp SaturatingRoundingDoublingHighMul on int32 values held in int64."""
    t = np.multiply(a, b, dtype=np.int64)
    neg = t >> 63  # -1 where the product is negative, else 0
    # nudge: +2**30 for ab >= 0, 1 - 2**30 = 2**30 - (2**31 - 1) for ab < 0
    t += (1 << 30) - (neg & _INT32_MAX)
    # C++ division by 2**31 truncates toward zero: bias negatives by 2**31 - 1, then shift
    t += (t >> 63) & _INT32_MAX
    t >>= 31
    if np.any(np.asarray(b) == _INT32_MIN):
        t = np.where((a == _INT32_MIN) & (b == _INT32_MIN), _INT32_MAX, t)
    return t


def _rdbpot(x: np.ndarray, exponent: np.ndarray) -> np.ndarray:
    """gemmlowp RoundingDivideByPOT: x / 2**exponent rounded half away from zero."""
    exponent = np.asarray(exponent, np.int64)
    mask = (np.int64(1) << exponent) - 1
    rem = x & mask
    thr = (mask >> 1) + (x < 0)
    return (x >> exponent) + (rem > thr)


def tflite_multiply_by_quantized_multiplier(
    x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier (int32 x, double rounding), vectorised; int64 result.

    ``multiplier``/``shift`` broadcast against x (per-channel arrays already shaped)."""
    x = np.asarray(x, np.int64)
    shift = np.asarray(shift, np.int64)
    m = np.asarray(multiplier, np.int64)
    if shift.size and m.size and shift.max() <= 0 and m.min() >= 0:
        return _mbqm_right(x, m, -shift)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    xs = _wrap32(x << left) if np.any(left) else x
    return _rdbpot(_srdhm(xs, np.asarray(multiplier, np.int64)), right)


def _mbqm_right(x: np.ndarray, m: np.ndarray, right: np.ndarray) -> np.ndarray:
    """MultiplyByQuantizedMultiplier for 0 <= m < 2**31 and shift <= 0, in few passes.

    With b >= 0 (so never INT32_MIN) SaturatingRoundingDoublingHighMul is exactly
    floor((a*b + 2**30) / 2**31) for either sign of a*b (the negative branch's nudge and
    truncation toward zero combine to the same floor), and RoundingDivideByPOT by e >= 1 is
    floor((v + 2**(e-1) - [v < 0]) / 2**e)."""
    t = np.multiply(x, m)
    t += 1 << 30
    t >>= 31
    if not right.any():
        return t
    pos = right > 0
    neg = t >> 63  # -1 where negative
    if not pos.all():
        neg &= -pos.astype(np.int64)
    t += neg
    t += np.where(pos, np.int64(1) << np.maximum(right - 1, 0), 0)
    t >>= right
    return t


def tflite_multiply_by_quantized_multiplier_int64(
    x: np.ndarray, multiplier: np.ndarray, shift: np.ndarray
) -> np.ndarray:
    """TFLite MultiplyByQuantizedMultiplier for int64 accumulators (16x8 conv / FC): the Q31
    multiplier is reduced to Q15 (rounded), then (x * m15 + 2**(14 - shift)) >> (15 - shift)."""
    m = np.asarray(multiplier, np.int64)
    m15 = np.where(m < 0x7FFF0000, (m + (1 << 15)) >> 16, 0x7FFF)
    total = 15 - np.asarray(shift, np.int64)
    return (np.asarray(x, np.int64) * m15 + (np.int64(1) << (total - 1))) >> total


def tflite_requantize(
    acc_int32: np.ndarray,
    real_multiplier: np.ndarray | float,
    out_zp: int | np.ndarray,
    out_dtype: np.dtype,
    axis: int | None = None,
) -> np.ndarray:
    """TFLite requantization: saturate(MultiplyByQuantizedMultiplier(acc, QuantizeMultiplier(
    real_multiplier)) + out_zp) in ``out_dtype``. ``real_multiplier`` (float64, e.g.
    in_scale * w_scale / out_scale) and ``out_zp`` may be per-channel along ``axis``."""
    acc = np.asarray(acc_int32, np.int64)
    q, sh = tflite_quantize_multiplier(real_multiplier)
    zp = np.asarray(out_zp, np.int64)
    if axis is not None:
        q, sh, zp = (_along(v, acc.ndim, axis) for v in (q, sh, zp))
    y = tflite_multiply_by_quantized_multiplier(acc, q, sh) + zp
    lo, hi = _irange(np.dtype(out_dtype))
    return np.clip(y, lo, hi).astype(out_dtype)


def tflite_activation_range(
    activation: str, y_scale: float, y_zp: int, dtype: np.dtype
) -> tuple[int, int]:
    """TFLite CalculateActivationRangeQuantized: (act_min, act_max) for a fused activation
    "NONE", "RELU", "RELU6", "RELU_N1_TO_1" (zp + round_half_away(f / scale), float32)."""
    lo, hi = _irange(np.dtype(dtype))
    s = np.float32(y_scale)

    def q(f: float) -> int:
        v = float(np.float32(f) / s)
        return int(y_zp) + int(math.copysign(math.floor(abs(v) + 0.5), v))

    act = activation.upper()
    if act == "RELU":
        return max(lo, q(0.0)), hi
    if act == "RELU6":
        return max(lo, q(0.0)), min(hi, q(6.0))
    if act == "RELU_N1_TO_1":
        return max(lo, q(-1.0)), min(hi, q(1.0))
    if act == "NONE":
        return lo, hi
    raise ValueError(f"unsupported fused activation {activation!r}")


def _list(v: float | int | Sequence, dtype) -> np.ndarray:
    return np.asarray(v if isinstance(v, (list, tuple, np.ndarray)) else [v], dtype).reshape(-1)


def _finish(acc, mult, y_zp, act_min, act_max, dtype, axis, wide: bool = False) -> np.ndarray:
    """acc -> MultiplyByQuantizedMultiplier + y_zp, clamped to [act_min, act_max] (or dtype);
    ``wide``: the int64-accumulator variant used by 16x8 (int16 activation) kernels."""
    if np.ndim(mult) == 0:
        q, sh = _quantize_scalar(float(mult))
    else:
        q, sh = tflite_quantize_multiplier(mult)
    if axis is not None:
        q, sh = _along(q, acc.ndim, axis), _along(sh, acc.ndim, axis)
    if wide:
        y = tflite_multiply_by_quantized_multiplier_int64(acc, q, sh)
    else:
        y = tflite_multiply_by_quantized_multiplier(acc, q, sh)
    y = np.asarray(y, np.int64)
    if y is acc or not y.flags.writeable:
        y = y.copy()
    y += int(y_zp)
    lo, hi = _act_range(dtype, act_min, act_max)
    _clip(y, lo, hi, out=y)
    return y.astype(dtype)


def _act_range(dtype: np.dtype, act_min: int | None, act_max: int | None) -> tuple[int, int]:
    """The output range of an integer kernel: ``dtype``'s, narrowed by a fused clamp's
    [act_min, act_max] where given."""
    lo, hi = _irange(dtype)
    lo = lo if act_min is None else max(lo, int(act_min))
    hi = hi if act_max is None else min(hi, int(act_max))
    return lo, hi


@kernel("TFLiteConv", domain=ML)
def tflite_conv(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    x_scale: float,
    w_scale: float | Sequence[float],
    y_scale: float,
    x_zp: int = 0,
    w_zp: int | Sequence[int] = 0,
    y_zp: int = 0,
    strides: Sequence[int] = (1, 1),
    pads: Sequence[int] = (0, 0, 0, 0),
    dilations: Sequence[int] = (1, 1),
    group: int = 1,
    act_min: int | None = None,
    act_max: int | None = None,
) -> np.ndarray:
    """modelloader TFLiteConv: TFLite int8/uint8 CONV_2D / DEPTHWISE_CONV_2D, bit-exact with the
    reference kernels (reference_ops::Conv, reference_integer_ops::ConvPerChannel / DepthwiseConv).

    x: (N, C, H, W) int8|uint8 (or int16 with int8 w and int64 bias: the 16x8 kernels, which
    requantize through the int64 MultiplyByQuantizedMultiplier); w: (M, C/group, kh, kw)
    int8|uint8 (depthwise: group=C, M = C*depth_multiplier); bias: (M,) int32 or omitted.
    Output (N, M, oh, ow) in x's dtype.
    acc = sum (x - x_zp) * (w - w_zp[m]) + bias[m] (padding contributes 0, i.e. x_zp);
    y = clamp(MultiplyByQuantizedMultiplier(acc, QuantizeMultiplier(x_scale*w_scale[m]/y_scale))
    + y_zp, act_min, act_max). w_scale/w_zp: scalar or per-output-channel list. pads:
    [top, left, bottom, right]; act_min/act_max default to the dtype range.
    """
    attrs = dict(
        x_scale=x_scale, w_scale=w_scale, y_scale=y_scale, x_zp=x_zp, w_zp=w_zp, y_zp=y_zp,
        strides=strides, pads=pads, dilations=dilations, group=group, act_min=act_min,
        act_max=act_max,
    )  # fmt: skip
    return _TflConv(w, bias, x.dtype, attrs)(x)


def _shifted_input(slot: str, x: np.ndarray, zp: int, ft: type) -> np.ndarray:
    """x - zp in float type ``ft`` (exact for 8/16-bit x), in the scratch buffer ``slot``."""
    xf = scratch(slot, x.shape, ft)
    if _jit.available and x.flags.c_contiguous:
        _jit.to_float(x, zp, xf)
    else:
        np.subtract(x, ft(zp), out=xf)
    return xf


class _TflProduct:
    """What TFLiteConv and TFLiteFullyConnected share for one node and one input dtype: the
    integer weights w - w_zp, the float type in which their products with x - x_zp are exact,
    and the requantization of an accumulator with the bias folded in (``_TflRequant``) where
    int32 holds every accumulator, else the int64 path."""

    def _setup(
        self, w: np.ndarray, bias: np.ndarray | None, dtype: np.dtype, attrs: dict
    ) -> np.ndarray:
        """Sets the shared fields from w (M output rows of K weights each, any trailing
        shape) and returns w - w_zp as int32 of w's shape."""
        self.attrs = attrs
        self.dtype = dtype = np.dtype(dtype)
        self.x_zp = x_zp = int(attrs.get("x_zp", 0))
        m, k = w.shape[0], w.size // w.shape[0]
        wz = _list(attrs.get("w_zp", 0), np.int32)
        per_row = wz.reshape((-1,) + (1,) * (w.ndim - 1))
        wi = w.astype(np.int32) - (per_row if wz.size > 1 else wz[0])
        lo_x, hi_x = _irange(dtype)
        bound_x = max(abs(lo_x - x_zp), abs(hi_x - x_zp))
        bound_w = int(np.abs(wi).max(initial=0))
        # exact float BLAS: float32 while every partial sum stays below 2**24, else float64
        self.ft = np.float32 if k * bound_x * bound_w < _F32_EXACT else np.float64
        self.bias64 = b64 = (
            None if bias is None else np.asarray(bias).astype(np.int64).reshape(1, m, 1, 1)
        )
        # |accumulator| bound: whether the int32 requantization cannot overflow
        bound = k * bound_x * bound_w + (0 if b64 is None else int(np.abs(b64).max()))
        self.mult = (
            float(attrs["x_scale"]) * _list(attrs["w_scale"], np.float64) / float(attrs["y_scale"])
        )
        self.req = None
        if dtype != np.int16:
            req = _tfl_requant(self.mult, m, b64, int(attrs.get("y_zp", 0)))
            if req is not None and bound < req.limit:
                self.req = req
        return wi

    def _finish(self, acc: np.ndarray) -> np.ndarray:
        """The exact float accumulator (N, M, ...) requantized into the output dtype."""
        a = self.attrs
        act_min, act_max = a.get("act_min"), a.get("act_max")
        if self.req is not None:
            return self.req.apply(acc, act_min, act_max, self.dtype)
        acc = acc.astype(np.int64)
        if self.bias64 is not None:
            acc += self.bias64
        wide = self.dtype == np.int16
        return _finish(acc, self.mult, a.get("y_zp", 0), act_min, act_max, self.dtype, 1, wide)


class _TflConv(_TflProduct):
    """One TFLiteConv node for one input dtype: (w - w_zp) as an exact float BLAS operand,
    the bias, the requantization, and per input shape a recipe (``recipe``)."""

    def __init__(self, w: np.ndarray, bias: np.ndarray | None, dtype: np.dtype, attrs: dict):
        wi = self._setup(w, bias, dtype, attrs)
        self.wmat = wi.astype(self.ft)
        self.group = int(attrs.get("group", 1))
        self.w_shape = w.shape
        self.geometry = (
            "NOTSET",
            *(tuple(attrs.get(k) or d) for k, d in _TFL_GEOMETRY),
        )

    def _to_float(self, x: np.ndarray) -> np.ndarray:
        # the exact integer conv is a float conv of x - x_zp (zero padding = x_zp) and w - w_zp
        return _shifted_input("tfl_x", x, self.x_zp, self.ft)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The conv of any input shape."""
        _, dilations, _, pads, strides = self.geometry
        acc = _conv_float(
            self._to_float(x), self.wmat, None, auto_pad="NOTSET", dilations=dilations,
            group=self.group, kernel_shape=None, pads=pads, strides=strides,
        )  # fmt: skip
        return self._finish(acc)

    def recipe(self, shape: tuple[int, ...]) -> KernelFn:
        """The conv of inputs of ``shape``: a pointwise or (compiled) depthwise one as int ->
        float taps, one product into a scratch accumulator and one requantization pass;
        others as ``__call__``."""
        m, cg = self.w_shape[:2]
        if len(shape) != 4 or shape[1] != cg * self.group or m % self.group or not self.req:
            return self
        k, s, d, p, out_sp = geo = conv_geometry(shape, self.w_shape, *self.geometry)
        n, c = shape[:2]
        ft = self.ft
        if self.group == 1 and n == 1 and not any(p) and k == [1, 1] and s == [1, 1]:
            w2 = np.ascontiguousarray(self.wmat.reshape(m, c))
            hw = out_sp[0] * out_sp[1]

            def product(xf: np.ndarray, acc: np.ndarray) -> None:
                matmul(w2, xf.reshape(c, hw), out=acc.reshape(m, hw))

        elif depthwise_jit(shape, ft, self.group, geo):
            product = depthwise_kernel(shape[2:], self.wmat, None, ft, geo)
        else:
            return self
        acc_shape = (n, m, *out_sp)
        if not _jit.available:

            def run(x: np.ndarray) -> np.ndarray:
                acc = scratch("tfl_conv", acc_shape, ft)
                product(self._to_float(x), acc)
                return self._finish(acc)

            return run
        # the compiled passes with their constants bound: a conv of a small map is over in
        # tens of microseconds, which per-call Python would otherwise double
        zp = ft(self.x_zp)
        shifted = _jit.shifted_fn()
        lo, hi = _act_range(self.dtype, self.attrs.get("act_min"), self.attrs.get("act_max"))
        req = _jit.requantize_fn(self.req.jit_params(), self.req.zp, lo, hi)
        dt = self.dtype

        def compiled(x: np.ndarray) -> np.ndarray:
            xf = scratch("tfl_x", shape, ft)
            shifted(x if x.flags.c_contiguous else np.ascontiguousarray(x), zp, xf)
            acc = scratch("tfl_conv", acc_shape, ft)
            product(xf, acc)
            return req(acc, take(acc_shape, dt))

        return compiled


_TFL_GEOMETRY = (
    ("dilations", (1, 1)),
    ("kernel_shape", ()),
    ("pads", (0, 0, 0, 0)),
    ("strides", (1, 1)),
)


@prepares("TFLiteConv", domain=ML)
def _prepare_tflite_conv(consts: tuple, **attrs: Any) -> KernelFn | None:
    """TFLiteConv with constant weights: per input dtype the exact float weights and the
    requantization are built once (``_TflConv``), per input shape its recipe."""
    w = consts[1] if len(consts) > 1 else None
    bias = consts[2] if len(consts) > 2 else None
    if type(w) is not np.ndarray or w.ndim != 4 or w.dtype.type not in (np.int8, np.uint8):
        return None
    convs: dict[np.dtype, _TflConv] = {}

    def recipe(key: tuple) -> KernelFn:
        shape, dtype = key
        cv = convs.get(dtype)
        if cv is None:
            cv = convs[dtype] = _TflConv(w, bias, dtype, attrs)
        return cv.recipe(shape)

    recipes = Recipes(recipe)

    def run(x: np.ndarray, w_: np.ndarray, b_: np.ndarray | None = None) -> np.ndarray:
        fn = recipes.get((x.shape, x.dtype)) if w_ is w and b_ is bias else None
        return fn(x) if fn is not None else tflite_conv(x, w_, b_, **attrs)

    return run


class _TflRequant:
    """One TFLiteConv's requantization with the bias folded in, per output channel, for
    accumulators whose magnitude (bias included) is below ``limit``.

    MultiplyByQuantizedMultiplier with Q31 multiplier q >= 0 and right shift r is
    SaturatingRoundingDoublingHighMul, v = floor((a * q + 2**30) / 2**31), then
    RoundingDivideByPOT, floor((v + 2**(r-1) - [v < 0]) / 2**r) (see _mbqm_right). With the
    bias b: a * q = acc * q + b * q, so ``c1`` = b * q + 2**30 is one constant per channel. A
    left shift l is folded into q (x * 2**l * q == x * (q << l)), exact while
    |a| * 2**l < 2**31: then |a * q| < 2**61 and v fits int32, so the rounding runs in int32.
    The output zero point joins the rounding offset (adding zp * 2**r before the shift adds zp
    after it) when that stays inside int32."""

    __slots__ = ("q", "c1", "right", "neg_mask", "off", "zp", "limit", "jit")

    def __init__(self, q, sh, bias64, zp: int) -> None:
        left = np.maximum(sh, 0)
        right = np.maximum(-sh, 0)
        self.q = q.astype(np.int64) << left
        self.limit = 1 << (30 - int(left.max()))
        c1 = np.full(q.shape, 1 << 30, np.int64)
        if bias64 is not None:
            c1 = c1 + bias64 * self.q
        self.c1 = c1
        self.zp = int(zp)
        self.jit = None  # the compiled pass's per-channel vectors, built on first use
        if not right.any():
            self.right = self.neg_mask = self.off = None
            return
        self.right = right.astype(np.int32)
        # channels without a right shift take no rounding correction
        self.neg_mask = None if (right > 0).all() else -(right > 0).astype(np.int32)
        off = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
        folded = off + (np.int64(self.zp) << right)
        if np.abs(folded).max() < (1 << 30):
            off, self.zp = folded, 0
        self.off = off.astype(np.int32)

    def jit_params(self) -> tuple:
        """The per-channel vectors of the compiled pass (``_jit.requant_params``)."""
        if self.jit is None:
            self.jit = _jit.requant_params(self.q, self.c1, self.right, self.neg_mask, self.off)
        return self.jit

    def apply(self, acc: np.ndarray, act_min, act_max, dtype: np.dtype) -> np.ndarray:
        """Requantizes the exact float accumulator ``acc`` (N, M, ...) into ``dtype``."""
        lo, hi = _act_range(dtype, act_min, act_max)
        if _jit.available and acc.flags.c_contiguous:
            return _jit.requantize(acc, self.jit_params(), self.zp, lo, hi, take(acc.shape, dtype))
        # float -> int32 converts 4x faster than float -> int64 (|acc| < 2**30)
        y = scratch("tfl_y", acc.shape, np.int32)
        np.copyto(y, acc, casting="unsafe")
        a = np.multiply(y, self.q, out=scratch("tfl_acc", acc.shape, np.int64))
        a += self.c1
        np.right_shift(a, 31, out=y, casting="unsafe")
        if self.right is not None:
            neg = scratch("tfl_neg", acc.shape, np.int32)
            np.right_shift(y, 31, out=neg)  # -1 where negative
            if self.neg_mask is not None:
                neg &= self.neg_mask
            y += neg
            y += self.off
            y >>= self.right
        if self.zp:
            y += np.int32(self.zp)
        _clip(y, lo, hi, out=y)
        out = take(acc.shape, dtype)
        np.copyto(out, y, casting="unsafe")
        return out


def _tfl_requant(mult: np.ndarray, m: int, bias64, y_zp: int) -> _TflRequant | None:
    """The _TflRequant of a TFLiteConv (None where a multiplier is negative)."""
    q, sh = tflite_quantize_multiplier(mult)
    q = np.broadcast_to(q, (m,)).reshape(1, m, 1, 1)
    sh = np.broadcast_to(sh, (m,)).reshape(1, m, 1, 1)
    return None if q.min() < 0 else _TflRequant(q, sh, bias64, y_zp)


@kernel("TFLiteFullyConnected", domain=ML)
def tflite_fully_connected(
    x: np.ndarray,
    w: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    x_scale: float,
    w_scale: float | Sequence[float],
    y_scale: float,
    x_zp: int = 0,
    w_zp: int | Sequence[int] = 0,
    y_zp: int = 0,
    act_min: int | None = None,
    act_max: int | None = None,
    keep_num_dims: int = 0,
) -> np.ndarray:
    """modelloader TFLiteFullyConnected: TFLite int8/uint8 FULLY_CONNECTED, bit-exact with
    reference_integer_ops::FullyConnected(PerChannel) / reference_ops::FullyConnected.

    x: any shape with size divisible by K, flattened to (B, K); w: (N, K); bias: (N,) int32
    (int16 x: 16x8 kernel, int64 bias and the int64 requantization, as TFLiteConv).
    acc = (x - x_zp) @ (w - w_zp).T + bias; requantized like TFLiteConv with per-tensor or
    per-output-channel w_scale/w_zp. Output (B, N), or x.shape[:-1] + (N,) with keep_num_dims=1.
    """
    attrs = dict(
        x_scale=x_scale, w_scale=w_scale, y_scale=y_scale, x_zp=x_zp, w_zp=w_zp, y_zp=y_zp,
        act_min=act_min, act_max=act_max, keep_num_dims=keep_num_dims,
    )  # fmt: skip
    return _TflFullyConnected(w, bias, x.dtype, attrs)(x)


class _TflFullyConnected(_TflProduct):
    """One TFLiteFullyConnected node for one input dtype: (w - w_zp).T as an exact float BLAS
    operand, then the shared requantization (``_TflProduct``)."""

    def __init__(self, w: np.ndarray, bias: np.ndarray | None, dtype: np.dtype, attrs: dict):
        self.wt = np.ascontiguousarray(self._setup(w, bias, dtype, attrs).T, self.ft)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        kdim, nout = self.wt.shape
        xf = _shifted_input("tfl_fc_x", x.reshape(-1, kdim), self.x_zp, self.ft)
        acc = scratch("tfl_fc_acc", (xf.shape[0], nout), self.ft)
        matmul(xf, self.wt, out=acc)
        y = self._finish(acc.reshape(-1, nout, 1, 1)).reshape(-1, nout)
        return y.reshape(x.shape[:-1] + (nout,)) if self.attrs.get("keep_num_dims") else y


@prepares("TFLiteFullyConnected", domain=ML)
def _prepare_tflite_fully_connected(consts: tuple, **attrs: Any) -> KernelFn | None:
    """TFLiteFullyConnected with constant weights: its ``_TflFullyConnected`` per input dtype,
    built once."""
    w = consts[1] if len(consts) > 1 else None
    bias = consts[2] if len(consts) > 2 else None
    if type(w) is not np.ndarray or w.ndim != 2 or w.dtype.type not in (np.int8, np.uint8):
        return None
    nodes: dict[np.dtype, _TflFullyConnected] = {}

    def run(x: np.ndarray, w_: np.ndarray, b_: np.ndarray | None = None) -> np.ndarray:
        if w_ is not w or b_ is not bias or x.size % w.shape[1]:
            return tflite_fully_connected(x, w_, b_, **attrs)
        fc = nodes.get(x.dtype)
        if fc is None:
            fc = nodes[x.dtype] = _TflFullyConnected(w, bias, x.dtype, attrs)
        return fc(x)

    return run


def _tflite_addsub(a, b, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, act_min, act_max, sign):
    dt = a.dtype
    left_shift = 15 if dt == np.int16 else 20
    # as PrepareGeneralSubOp / add.cc Prepare: float-typed 2*max(scale), then double ratios
    twice_max = float(2 * max(np.float32(a_scale), np.float32(b_scale)))
    ma = _quantize_scalar(float(np.float32(a_scale)) / twice_max)
    mb = _quantize_scalar(float(np.float32(b_scale)) / twice_max)
    mo = twice_max / float(np.float32((1 << left_shift) * np.float32(y_scale)))
    va = np.subtract(a, int(a_zp), dtype=np.int64)
    va <<= left_shift
    vb = np.subtract(b, int(b_zp), dtype=np.int64)
    vb <<= left_shift
    sa = tflite_multiply_by_quantized_multiplier(va, *ma)
    sb = tflite_multiply_by_quantized_multiplier(vb, *mb)
    if sa.shape == np.broadcast_shapes(sa.shape, sb.shape) and sa is not va:
        (np.add if sign > 0 else np.subtract)(sa, sb, out=sa)
    else:
        sa = sa + sb if sign > 0 else sa - sb
    return _finish(sa, mo, y_zp, act_min, act_max, dt, None)


@functools.lru_cache(maxsize=4096)
def _quantize_scalar(real: float) -> tuple[np.ndarray, np.ndarray]:
    """tflite_quantize_multiplier of one float, cached (kernels requantize with the same
    scales on every call); the returned 0-d arrays are read-only."""
    q, sh = tflite_quantize_multiplier(real)
    q.flags.writeable = False
    sh.flags.writeable = False
    return q, sh


_PAIR_MIN = 256  # outputs from which a pair table repays building it
_PAIR_TABLES: dict[tuple, np.ndarray] = {}


def _pairwise(fn, a: np.ndarray, b: np.ndarray, params: tuple) -> np.ndarray:
    """``fn(a, b, *params)``; for 8-bit a and b of one dtype and a large output, through a
    65,536-entry table of fn's own results for every (a, b) pair (built once per parameter
    set), indexed by the two bytes: one gather instead of a dozen int64 passes."""
    if a.dtype != b.dtype or a.dtype not in (np.int8, np.uint8) or max(a.size, b.size) < _PAIR_MIN:
        return fn(a, b, *params)
    table = _pair_table(fn, a.dtype, params)
    idx = np.left_shift(a.view(np.uint8), 8, dtype=np.uint16)
    same = idx.shape == np.broadcast_shapes(a.shape, b.shape)
    idx = np.bitwise_or(idx, b.view(np.uint8), out=idx if same else None)
    return np.take(table, idx)


def _pair_table(fn, dtype: np.dtype, params: tuple) -> np.ndarray:
    """fn's result for every (a, b) pair of 8-bit ``dtype`` values, at index a_byte * 256 +
    b_byte; cached per parameter set."""
    key = (fn, dtype.char, params)
    table = _PAIR_TABLES.get(key)
    if table is None:
        v = np.arange(256, dtype=np.uint8).view(dtype)
        table = fn(np.repeat(v, 256), np.tile(v, 256), *params)
        if len(_PAIR_TABLES) > 256:
            _PAIR_TABLES.clear()
        _PAIR_TABLES[key] = table
    return table


def _prepared_pairwise(fn, params: tuple) -> KernelFn:
    """A TFLiteAdd/Sub/Mul node: ``_pairwise`` with its pair table looked up once per input
    dtype and, for inputs of one shape, gathered by one compiled pass (``_jit.pair_lookup``)."""
    tables: dict[np.dtype, np.ndarray] = {}

    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        dt = a.dtype
        if (
            not _jit.available
            or b.dtype != dt
            or dt.type not in (np.int8, np.uint8)
            or a.shape != b.shape
            or a.size < _PAIR_MIN
        ):
            return _pairwise(fn, a, b, params)
        table = tables.get(dt)
        if table is None:
            table = tables[dt] = _pair_table(fn, dt, params)
        return _jit.pair_lookup(table, a, b, take(a.shape, dt))

    return run


def _pair_params(attrs: dict) -> tuple:
    return (
        attrs["a_scale"], attrs.get("a_zp", 0), attrs["b_scale"], attrs.get("b_zp", 0),
        attrs["y_scale"], attrs.get("y_zp", 0), attrs.get("act_min"), attrs.get("act_max"),
    )  # fmt: skip


@prepares("TFLiteAdd", domain=ML)
def _prepare_tflite_add(consts: tuple, **attrs: Any) -> KernelFn:
    return _prepared_pairwise(_tflite_addsub, (*_pair_params(attrs), 1))


@prepares("TFLiteSub", domain=ML)
def _prepare_tflite_sub(consts: tuple, **attrs: Any) -> KernelFn:
    return _prepared_pairwise(_tflite_addsub, (*_pair_params(attrs), -1))


@prepares("TFLiteMul", domain=ML)
def _prepare_tflite_mul(consts: tuple, **attrs: Any) -> KernelFn:
    return _prepared_pairwise(_tflite_mul, _pair_params(attrs))


@kernel("TFLiteAdd", domain=ML)
def tflite_add(
    a: np.ndarray,
    b: np.ndarray,
    *,
    a_scale: float,
    b_scale: float,
    y_scale: float,
    a_zp: int = 0,
    b_zp: int = 0,
    y_zp: int = 0,
    act_min: int | None = None,
    act_max: int | None = None,
) -> np.ndarray:
    """modelloader TFLiteAdd: TFLite int8/uint8/int16 ADD (numpy broadcasting), bit-exact with
    reference add: each input (v - zp) << left_shift (20; 15 for int16) is rescaled by
    QuantizeMultiplier(scale / (2*max(a_scale, b_scale))), the sum by
    QuantizeMultiplier(2*max / (2**left_shift * y_scale)), + y_zp, clamped to act range."""
    params = (a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, act_min, act_max, 1)
    return _pairwise(_tflite_addsub, a, b, params)


@kernel("TFLiteSub", domain=ML)
def tflite_sub(
    a: np.ndarray,
    b: np.ndarray,
    *,
    a_scale: float,
    b_scale: float,
    y_scale: float,
    a_zp: int = 0,
    b_zp: int = 0,
    y_zp: int = 0,
    act_min: int | None = None,
    act_max: int | None = None,
) -> np.ndarray:
    """modelloader TFLiteSub: TFLite int8/uint8 SUB; as TFLiteAdd with the rescaled b subtracted."""
    params = (a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, act_min, act_max, -1)
    return _pairwise(_tflite_addsub, a, b, params)


@kernel("TFLiteMul", domain=ML)
def tflite_mul(
    a: np.ndarray,
    b: np.ndarray,
    *,
    a_scale: float,
    b_scale: float,
    y_scale: float,
    a_zp: int = 0,
    b_zp: int = 0,
    y_zp: int = 0,
    act_min: int | None = None,
    act_max: int | None = None,
) -> np.ndarray:
    """modelloader TFLiteMul: TFLite int8/uint8/int16 MUL (numpy broadcasting), bit-exact with
    reference mul: clamp(MultiplyByQuantizedMultiplier((a - a_zp) * (b - b_zp),
    QuantizeMultiplier(a_scale * b_scale / y_scale)) + y_zp, act_min, act_max)."""
    params = (a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, act_min, act_max)
    return _pairwise(_tflite_mul, a, b, params)


def _tflite_mul(a, b, a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, act_min, act_max):
    prod = (a.astype(np.int64) - int(a_zp)) * (b.astype(np.int64) - int(b_zp))
    # mul.cc Prepare computes s1 * s2 / s_out in float (no double casts), then widens
    mult = float(np.float32(np.float32(a_scale) * np.float32(b_scale)) / np.float32(y_scale))
    return _finish(prod, mult, y_zp, act_min, act_max, a.dtype, None)
