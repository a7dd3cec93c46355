"""Matrix-multiply kernels: MatMul, Gemm, MatMulInteger, QLinearMatMul, FusedGemm.

Float products go straight to BLAS through ``np.matmul``; alpha/beta/C/activation are
applied in place on the product buffer. Integer products run in float64 BLAS, which is
exact for 8/16-bit operands (|sum| < 2**53), and are returned as int32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from modelloader.buffers import MIN_BYTES, take
from modelloader.kernels.cpu._registry import kernel
from modelloader.kernels.cpu.conv import apply_activation, requantize
from modelloader.parallel import matmul as blas_matmul

_BLAS = (np.dtype(np.float32), np.dtype(np.float64))


def _is_float(dt: np.dtype) -> bool:
    """True for numpy floats and ml_dtypes floats (bfloat16, float8...), whose kind is 'V'."""
    return dt.kind == "f" or (dt.kind == "V" and "float" in dt.name)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype == b.dtype and a.dtype in _BLAS:
        if a.ndim < 2 or b.ndim < 2:
            return blas_matmul(a, b)
        la, lb = a.shape[:-2], b.shape[:-2]
        lead = la if la == lb or not lb else np.broadcast_shapes(la, lb)
        shape = (*lead, a.shape[-2], b.shape[-1])
        if math.prod(shape) * a.itemsize < MIN_BYTES:
            return blas_matmul(a, b)
        # a large product goes into a recycled buffer (a fresh one page-faults on every run)
        return blas_matmul(a, b, out=take(shape, a.dtype))
    if _is_float(a.dtype) and _is_float(b.dtype):
        # float16/bfloat16: accumulate in float32 BLAS, round once to the input type
        return blas_matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    if a.dtype.kind in "iu" and b.dtype.kind in "iu" and max(a.itemsize, b.itemsize) <= 2:
        out_dt = np.result_type(a.dtype, b.dtype)
        y = blas_matmul(a.astype(np.float64), b.astype(np.float64))
        return y.astype(np.int64).astype(out_dt)
    return blas_matmul(a, b)


@kernel("MatMul")
def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX MatMul-13: numpy.matmul semantics (1-D promotion, batch broadcasting)."""
    return np.asarray(_matmul(a, b))


def _gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None,
    alpha: float,
    beta: float,
    trans_a: int,
    trans_b: int,
) -> np.ndarray:
    dt = a.dtype
    cd = dt if dt in _BLAS else np.dtype(np.float32) if _is_float(dt) else dt
    aa = a.T if trans_a else a
    bb = b.T if trans_b else b
    if _is_float(cd):
        y = blas_matmul(
            aa.astype(cd, copy=False),
            bb.astype(cd, copy=False),
            out=take((aa.shape[0], bb.shape[1]), cd),
        )
    else:
        y = _matmul(aa, bb).astype(cd)
    t = y.dtype.type
    if alpha != 1.0:
        y *= t(alpha)
    if c is not None and beta != 0.0:
        cc = c.astype(cd, copy=False)
        if beta == 1.0:
            y += cc
        else:
            y += cc * t(beta)
    return y


@kernel("Gemm")
def gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,
    transB: int = 0,
) -> np.ndarray:
    """ONNX Gemm-13: alpha * op(A) @ op(B) + beta * C, C unidirectionally broadcast."""
    return _gemm(a, b, c, alpha, beta, transA, transB).astype(a.dtype, copy=False)


@kernel("FusedGemm", domain="modelloader")
def fused_gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,
    transB: int = 0,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> np.ndarray:
    """modelloader FusedGemm: act(Gemm(A, B, C)) with the activation applied in place."""
    y = _gemm(a, b, c, alpha, beta, transA, transB)
    apply_activation(y, activation, activation_params)
    return y.astype(a.dtype, copy=False)


def _int_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Exact int32 product of int32-valued operands via float64 BLAS."""
    return blas_matmul(a.astype(np.float64), b.astype(np.float64)).astype(np.int32)


@kernel("MatMulInteger")
def matmul_integer(
    a: np.ndarray,
    b: np.ndarray,
    a_zero_point: np.ndarray | None = None,
    b_zero_point: np.ndarray | None = None,
) -> np.ndarray:
    """ONNX MatMulInteger-10: int32 matmul of (A - a_zp) and (B - b_zp); a_zp per row, b_zp per column."""
    ai = a.astype(np.int32)
    if a_zero_point is not None:
        az = np.asarray(a_zero_point).astype(np.int32)
        if az.ndim == 1 and az.size > 1:
            az = az.reshape(-1, 1)
        ai -= az
    bi = b.astype(np.int32)
    if b_zero_point is not None:
        bi -= np.asarray(b_zero_point).astype(np.int32)
    return _int_matmul(ai, bi)


@kernel("QLinearMatMul")
def qlinear_matmul(
    a: np.ndarray,
    a_scale: np.ndarray,
    a_zero_point: np.ndarray,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zero_point: np.ndarray,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray,
) -> np.ndarray:
    """ONNX QLinearMatMul-21: int32 matmul requantized by a_s*b_s/y_s with round-half-even."""
    ai = a.astype(np.int32)
    if a_zero_point is not None:
        az = np.asarray(a_zero_point).astype(np.int32)
        ai -= az.reshape(-1, 1) if az.ndim == 1 and az.size > 1 else az
    bi = b.astype(np.int32)
    if b_zero_point is not None:
        bi -= np.asarray(b_zero_point).astype(np.int32)
    acc = _int_matmul(ai, bi)
    a_s = np.asarray(a_scale)
    if a_s.ndim == 1 and a_s.size > 1:
        a_s = a_s.reshape(-1, 1)
    mult = a_s * np.asarray(b_scale) / np.asarray(y_scale)
    out_dt = y_zero_point.dtype if y_zero_point is not None else a.dtype
    return requantize(acc, mult, y_zero_point, out_dt)
