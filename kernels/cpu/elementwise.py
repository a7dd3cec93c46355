"""Elementwise math, comparison, logic, bitwise and cast kernels (ONNX newest opsets).

Binary ops follow NumPy (multidirectional) broadcasting, as ONNX does from opset 7 on;
the importer rewrites older ``broadcast``/``axis`` forms. Every kernel returns the
dtype the ONNX spec gives: same-typed inputs stay in their dtype (float32 is never
upcast), comparisons and logic return bool.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import ml_dtypes
import numpy as np
from onnx import TensorProto, helper

from modelloader.buffers import MIN_BYTES, take
from modelloader.kernels.cpu._registry import kernel
from modelloader.kernels.cpu._ufuncs import clip as clip_


def _as(x: np.ndarray | np.generic, dtype: np.dtype) -> np.ndarray:
    """``x`` as an ndarray of ``dtype`` (no copy when it already is one)."""
    return np.asarray(x).astype(dtype, copy=False)


_BLOCK = 1 << 16


def blockwise(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
    """Applies the elementwise, dtype-preserving ``fn`` to cache-sized blocks of ``x``.

    Multi-pass formulas (erf, gelu, ...) then keep their temporaries in cache instead
    of streaming several full-size arrays through memory.
    """
    if x.size <= 2 * _BLOCK:
        return fn(x)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = take(flat.shape, x.dtype)
    for i in range(0, flat.size, _BLOCK):
        out[i : i + _BLOCK] = fn(flat[i : i + _BLOCK])
    return out.reshape(x.shape)


def pooled_out(x: np.ndarray) -> np.ndarray | None:
    """A recycled output buffer shaped like ``x`` for a same-dtype elementwise result, or None
    where x is small or not a plain numeric array (the ufunc then allocates as usual)."""
    if type(x) is np.ndarray and x.nbytes >= MIN_BYTES and x.dtype.kind in "biufc":
        return take(x.shape, x.dtype)
    return None


def broadcast_out(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """A recycled output buffer for ``fn(a, b)`` where both are plain arrays of one numeric
    dtype (so the ufunc result has that dtype), else None."""
    if (
        type(a) is not np.ndarray
        or type(b) is not np.ndarray
        or a.dtype != b.dtype
        or max(a.nbytes, b.nbytes) < MIN_BYTES
        or a.dtype.kind not in "biufc"
    ):
        return None
    sa, sb = a.shape, b.shape
    if sa == sb:
        shape = sa
    elif _covers(sa, sb):
        shape = sa
    elif _covers(sb, sa):
        shape = sb
    else:
        shape = np.broadcast_shapes(sa, sb)
    return take(shape, a.dtype)


def _covers(big: tuple[int, ...], small: tuple[int, ...]) -> bool:
    """Whether ``small`` broadcasts to ``big`` unchanged."""
    if len(small) > len(big):
        return False
    for i in range(1, len(small) + 1):
        if small[-i] != 1 and small[-i] != big[-i]:
            return False
    return True


def _unary(fn: np.ufunc):
    def run(x: np.ndarray) -> np.ndarray:
        if x.dtype.kind in "fc":
            out = pooled_out(x)
            if out is not None:
                return fn(x, out=out)
        return _as(fn(x), x.dtype)

    return run


for _names, _fn in (
    (("Abs",), np.abs),
    (("Neg",), np.negative),
    (("Sqrt",), np.sqrt),
    (("Exp",), np.exp),
    (("Log",), np.log),
    (("Ceil",), np.ceil),
    (("Floor",), np.floor),
    (("Round",), np.rint),  # rint rounds half to even, as ONNX Round does
    (("Sign",), np.sign),
    (("Sin",), np.sin),
    (("Cos",), np.cos),
    (("Tan",), np.tan),
    (("Asin",), np.arcsin),
    (("Acos",), np.arccos),
    (("Atan",), np.arctan),
    (("Sinh",), np.sinh),
    (("Cosh",), np.cosh),
    (("Asinh",), np.arcsinh),
    (("Acosh",), np.arccosh),
    (("Atanh",), np.arctanh),
    (("BitwiseNot",), np.invert),
):
    kernel(*_names)(_unary(_fn))


@kernel("Reciprocal")
def reciprocal(x: np.ndarray) -> np.ndarray:
    """ONNX Reciprocal-13: 1/x, same dtype."""
    return _as(np.divide(x.dtype.type(1), x), x.dtype)


@kernel("Not")
def logical_not(x: np.ndarray) -> np.ndarray:
    """ONNX Not-1: logical negation of a bool tensor."""
    return np.logical_not(x)


_ERF_P = [
    -2.72614225801306e-10,
    2.77068142495902e-08,
    -2.10102402082508e-06,
    -5.69250639462346e-05,
    -7.34990630326855e-04,
    -2.95459980854025e-03,
    -1.60960333262415e-02,
]
_ERF_Q = [
    -1.45660718464996e-05,
    -2.13374055278905e-04,
    -1.68282697438203e-03,
    -7.37332916720468e-03,
    -1.42647390514189e-02,
]


_ERF_P32 = tuple(np.float32(c) for c in _ERF_P)
_ERF_Q32 = tuple(np.float32(c) for c in _ERF_Q)
_F32_4 = (np.float32(-4), np.float32(4))


def erf(x: np.ndarray) -> np.ndarray:
    """The error function elementwise, in ``x``'s dtype (blockwise for large inputs)."""
    if x.dtype == np.float64:
        return _erf(x)
    return blockwise(_erf, x)


def _erf(x: np.ndarray) -> np.ndarray:
    """The error function elementwise, in ``x``'s dtype.

    16/32-bit floats use a float32 rational approximation on [-4, 4] (Eigen's; max
    relative error ~4e-7); float64 uses SciPy when present, else ``math.erf``.
    """
    if x.dtype == np.float64:
        try:
            from scipy.special import erf as sp_erf
        except ImportError:  # pragma: no cover - scipy ships with the test extras
            return np.vectorize(math.erf, otypes=[np.float64])(x)
        return np.asarray(sp_erf(x))
    xf = clip_(x.astype(np.float32, copy=False), _F32_4[0], _F32_4[1])
    x2 = xf * xf
    p = _horner(x2, _ERF_P32)
    p *= xf
    p /= _horner(x2, _ERF_Q32)
    return _as(p, x.dtype)


def _horner(t: np.ndarray, coeffs: tuple[np.float32, ...]) -> np.ndarray:
    """c0*t^n + ... + cn by Horner's rule, in a new array (the first step is c0 * t + c1)."""
    p = np.multiply(t, coeffs[0])
    p += coeffs[1]
    for c in coeffs[2:]:
        p *= t
        p += c
    return p


@kernel("Erf")
def erf_kernel(x: np.ndarray) -> np.ndarray:
    """ONNX Erf-13: Gauss error function elementwise."""
    if x.dtype.kind in "iu":
        return _as(erf(x.astype(np.float64)), x.dtype)
    return erf(x)


@kernel("IsNaN")
def isnan(x: np.ndarray) -> np.ndarray:
    """ONNX IsNaN-20: bool mask of NaNs."""
    return np.isnan(x)


@kernel("IsInf")
def isinf(x: np.ndarray, *, detect_negative: int = 1, detect_positive: int = 1) -> np.ndarray:
    """ONNX IsInf-20: bool mask of +inf (detect_positive) and/or -inf (detect_negative)."""
    if detect_negative and detect_positive:
        return np.isinf(x)
    if detect_positive:
        return np.isposinf(x)
    if detect_negative:
        return np.isneginf(x)
    return np.zeros(x.shape, dtype=bool)


# ----------------------------------------------------------------------------- binary


def _binary(fn: np.ufunc):
    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = broadcast_out(a, b)
        if out is not None:
            return fn(a, b, out=out)
        return _as(fn(a, b), a.dtype)

    return run


kernel("Add")(_binary(np.add))
kernel("Sub")(_binary(np.subtract))
kernel("Mul")(_binary(np.multiply))
kernel("BitwiseAnd")(_binary(np.bitwise_and))
kernel("BitwiseOr")(_binary(np.bitwise_or))
kernel("BitwiseXor")(_binary(np.bitwise_xor))


@kernel("Div")
def div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX Div-14: a / b; integer division truncates toward zero (C semantics)."""
    if a.dtype.kind in "iu":
        with np.errstate(divide="ignore", invalid="ignore"):
            q = np.floor_divide(a, b)
            if a.dtype.kind == "i":
                r = np.remainder(a, b)
                q = q + ((r != 0) & ((a < 0) ^ (b < 0))).astype(q.dtype)
        return _as(q, a.dtype)
    out = broadcast_out(a, b)
    if out is not None:
        return np.divide(a, b, out=out)
    return _as(np.divide(a, b), a.dtype)


@kernel("Pow")
def power(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ONNX Pow-15: x ** y with the result in x's dtype (y may be another type)."""
    if x.dtype.kind == "f":
        if y.size == 1 and y.ndim <= x.ndim:
            e = float(y.reshape(-1)[0])
            if e == 2.0:
                return np.square(x).reshape(np.broadcast_shapes(x.shape, y.shape))
            if e == 1.0:
                return np.broadcast_to(x, np.broadcast_shapes(x.shape, y.shape))
            if e == 0.5:
                return np.sqrt(x).reshape(np.broadcast_shapes(x.shape, y.shape))
        if y.dtype.kind in "iub" or y.dtype.itemsize <= x.dtype.itemsize:
            # Exponents fit the base's float type; avoids a float64 round trip.
            return _as(np.power(x, y.astype(x.dtype, copy=False)), x.dtype)
        return _as(np.power(x.astype(y.dtype), y), x.dtype)
    if y.dtype.kind == "f" or x.dtype.kind not in "iu":
        return _as(np.power(x.astype(np.float64), y.astype(np.float64)), x.dtype)
    return _as(np.power(x, y.astype(x.dtype, copy=False)), x.dtype)


@kernel("Mod")
def mod(a: np.ndarray, b: np.ndarray, *, fmod: int = 0) -> np.ndarray:
    """ONNX Mod-13: remainder with the divisor's sign (fmod=0) or the dividend's (fmod=1)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.fmod(a, b) if fmod else np.mod(a, b)
    return _as(r, a.dtype)


@kernel("BitShift")
def bit_shift(x: np.ndarray, y: np.ndarray, *, direction: str) -> np.ndarray:
    """ONNX BitShift-28: logical left / arithmetic right shift; out-of-range amounts
    (negative or >= bit width) give the sign fill alone (-1 or 0)."""
    bits = np.iinfo(x.dtype).bits
    udt = np.dtype(f"u{x.dtype.itemsize}")
    yi = y.astype(np.int64, copy=False) if y.dtype != np.uint64 else y
    bad = (yi < 0) | (yi >= bits)
    amount = np.where(bad, 0, yi).astype(udt)
    if direction == "LEFT":
        r = np.left_shift(x.view(udt) if x.dtype != udt else x, amount).view(x.dtype)
        fill = np.zeros((), x.dtype)
    elif direction == "RIGHT":
        r = np.right_shift(x, amount.astype(x.dtype))
        fill = np.where(x < 0, x.dtype.type(-1), x.dtype.type(0)) if x.dtype.kind == "i" else 0
    else:
        raise ValueError(f"BitShift direction must be LEFT or RIGHT, got {direction!r}")
    if bad.any():
        r = np.where(bad, fill, r)
    return _as(r, x.dtype)


def _variadic(fn: np.ufunc):
    def run(*xs: np.ndarray) -> np.ndarray:
        dtype = xs[0].dtype
        return _as(functools.reduce(fn, xs), dtype)

    return run


kernel("Sum")(_variadic(np.add))
kernel("Max")(_variadic(np.maximum))
kernel("Min")(_variadic(np.minimum))


@kernel("Mean")
def mean(*xs: np.ndarray) -> np.ndarray:
    """ONNX Mean-13: elementwise mean of broadcast inputs."""
    s = functools.reduce(np.add, xs)
    return _as(np.divide(s, s.dtype.type(len(xs))), xs[0].dtype)


def _compare(fn: np.ufunc):
    def run(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _as(fn(a, b), np.dtype(bool))

    return run


kernel("Equal")(_compare(np.equal))
kernel("Less")(_compare(np.less))
kernel("LessOrEqual")(_compare(np.less_equal))
kernel("Greater")(_compare(np.greater))
kernel("GreaterOrEqual")(_compare(np.greater_equal))
kernel("And")(_compare(np.logical_and))
kernel("Or")(_compare(np.logical_or))
kernel("Xor")(_compare(np.logical_xor))


@kernel("Where")
def where(cond: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ONNX Where-16: elementwise select with broadcasting."""
    return _as(np.where(cond, x, y), x.dtype)


@kernel("Clip")
def clip(x: np.ndarray, min: np.ndarray | None = None, max: np.ndarray | None = None) -> np.ndarray:  # noqa: A002 - ONNX input names
    """ONNX Clip-13: clamp to [min, max] (omitted bounds are open); min > max gives max."""
    if min is None and max is None:
        return x
    out = pooled_out(x)
    if min is not None and max is not None:
        return clip_(x, _as(min, x.dtype), _as(max, x.dtype), out=out)
    if min is not None:
        return np.maximum(x, _as(min, x.dtype), out=out)
    return np.minimum(x, _as(max, x.dtype), out=out)


# ----------------------------------------------------------------------------- casts

_FLOAT8 = {
    TensorProto.FLOAT8E4M3FN,
    TensorProto.FLOAT8E4M3FNUZ,
    TensorProto.FLOAT8E5M2,
    TensorProto.FLOAT8E5M2FNUZ,
}


def onnx_dtype(to: int) -> np.dtype:
    """The NumPy dtype of an ONNX TensorProto data type (object for STRING)."""
    if to == TensorProto.STRING:
        return np.dtype(object)
    return np.dtype(helper.tensor_dtype_to_np_dtype(to))


def cast_array(x: np.ndarray, to: int, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """Casts ``x`` to ONNX type ``to`` following Cast-25 (saturate/round_mode included)."""
    dtype = onnx_dtype(to)
    if x.dtype == dtype:
        return x
    if dtype.kind == "O":
        return x.astype(np.str_).astype(object)
    if x.dtype == object:
        # String -> number: parse as float first (handles "1e-5", "INF", "NaN").
        src = x.astype(np.str_)
        if dtype.kind in "iub":
            try:
                return src.astype(dtype)
            except ValueError:
                return src.astype(np.float64).astype(dtype)
        return src.astype(np.float64 if dtype.itemsize < 8 else dtype).astype(dtype)
    if to == TensorProto.FLOAT8E8M0:
        from onnx.numpy_helper import to_float8e8m0

        return np.asarray(to_float8e8m0(x, bool(saturate), round_mode)).astype(dtype)
    if to in _FLOAT8 and saturate and x.dtype.kind in "fV":
        lim = float(ml_dtypes.finfo(dtype).max)
        xf = x.astype(np.float32, copy=False) if x.dtype.kind == "V" else x
        # NaN passes through clip; +-inf and out-of-range values saturate to +-max.
        return np.clip(xf, -lim, lim).astype(dtype)
    if x.dtype.kind == "V" and dtype.kind in "iub":
        # ml_dtypes floats (bfloat16, float8...) go through float32 to reach ints/bool.
        return x.astype(np.float32).astype(dtype)
    if dtype.kind in "biuf" and x.dtype.kind in "biuf" and type(x) is np.ndarray:
        out = take(x.shape, dtype)  # recycled memory, the same conversion as astype
        np.copyto(out, x, casting="unsafe")
        return out
    return x.astype(dtype)


@kernel("Cast")
def cast(x: np.ndarray, *, to: int, saturate: int = 1, round_mode: str = "up") -> np.ndarray:
    """ONNX Cast-25: converts to type ``to`` (incl. string, bfloat16, float8, int4, float4)."""
    return cast_array(x, to, saturate, round_mode)


@kernel("CastLike")
def cast_like(
    x: np.ndarray, target: np.ndarray, *, saturate: int = 1, round_mode: str = "up"
) -> np.ndarray:
    """ONNX CastLike-25: Cast to the element type of ``target``."""
    if target.dtype == object:
        return cast_array(x, TensorProto.STRING, saturate, round_mode)
    to = helper.np_dtype_to_tensor_dtype(target.dtype)
    return cast_array(x, to, saturate, round_mode)


@kernel("BitCast")
def bit_cast(x: np.ndarray, *, to: int) -> np.ndarray:
    """ONNX BitCast-26: reinterprets the bits as type ``to`` (same bit width)."""
    dtype = onnx_dtype(to)
    if dtype.kind == "O" or x.dtype.kind == "O":
        raise TypeError("BitCast does not support string tensors")
    if dtype.itemsize != x.dtype.itemsize:
        raise ValueError(f"BitCast needs equal bit widths, got {x.dtype} -> {dtype}")
    src = x if x.flags.c_contiguous else x.copy()
    return src.view(dtype)
