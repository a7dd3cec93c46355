"""com.microsoft FusedConv, FusedGemm and FusedMatMul: what onnxruntime writes into a model it
saves after its (extended-level) graph optimizations. They map onto the kernels of the
modelloader-domain fusions:

* ``FusedConv(X, W[, B, Z])``: act(Conv(X, W, B) + Z), ``activation`` /
  ``activation_params`` as in modelloader's FusedConv.
* ``FusedGemm(A, B[, C])``: act(Gemm(A, B, C)), the activation's parameters given as
  ``activation_alpha`` / ``activation_beta`` (LeakyRelu alpha; HardSigmoid alpha, beta;
  Clip min, max).
* ``FusedMatMul(A, B)``: alpha * op(A) @ op(B) with numpy.matmul broadcasting (see
  ``fused_matmul`` for op).
* ``MatMulIntegerToFloat`` / ``DynamicQuantizeMatMul``: a dynamically quantized MatMul with
  its dequantization (and, for the latter, the quantization of A) folded in.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modelloader.kernels.cpu._registry import kernel, registry
from modelloader.kernels.cpu.conv import fused_conv
from modelloader.kernels.cpu.gemm import _matmul, fused_gemm
from modelloader.kernels.cpu.quant import dynamic_quantize_linear

MS = "com.microsoft"


@kernel("FusedConv", domain=MS)
def ms_fused_conv(
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
) -> np.ndarray:
    """com.microsoft FusedConv-1: act(Conv(X, W, B) + Z)."""
    return fused_conv(
        x, w, b, z, auto_pad=auto_pad, dilations=dilations, group=group,
        kernel_shape=kernel_shape, pads=pads, strides=strides, activation=activation,
        activation_params=list(activation_params),
    )  # fmt: skip


@kernel("FusedGemm", domain=MS)
def ms_fused_gemm(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,
    transB: int = 0,
    activation: str = "",
    activation_alpha: float | None = None,
    activation_beta: float | None = None,
    activation_gamma: float | None = None,
) -> np.ndarray:
    """com.microsoft FusedGemm-1: act(Gemm(A, B, C))."""
    params = [p for p in (activation_alpha, activation_beta) if p is not None]
    return fused_gemm(
        a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB,
        activation=activation, activation_params=params,
    )  # fmt: skip


def _op(x: np.ndarray, trans: int, trans_batch: int) -> np.ndarray:
    r = x.ndim
    if trans_batch and r > 2:
        x = x.transpose(*range(1, r - 1), 0, r - 1)
    if trans and r >= 2:
        x = np.swapaxes(x, -1, -2)
    return x


@kernel("FusedMatMul", domain=MS)
def fused_matmul(
    a: np.ndarray,
    b: np.ndarray,
    *,
    alpha: float = 1.0,
    transA: int = 0,
    transB: int = 0,
    transBatchA: int = 0,
    transBatchB: int = 0,
) -> np.ndarray:
    """com.microsoft FusedMatMul-1: alpha * op(A) @ op(B); op moves the first axis to just
    before the last (``transBatch``, a transpose by (1, ..., r-2, 0, r-1)) and then swaps
    the last two (``trans``), as onnxruntime applies them."""
    y = np.asarray(_matmul(_op(a, transA, transBatchA), _op(b, transB, transBatchB)))
    if alpha != 1.0:
        y = y * y.dtype.type(alpha)
    return y


@kernel("MatMulIntegerToFloat", domain=MS)
def matmul_integer_to_float(
    a: np.ndarray,
    b: np.ndarray,
    a_scale: np.ndarray,
    b_scale: np.ndarray,
    a_zero_point: np.ndarray | None = None,
    b_zero_point: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """com.microsoft MatMulIntegerToFloat-1: float32 (A - a_zp) @ (B - b_zp) * (a_scale *
    b_scale) + bias, the integer product exact (MatMulInteger)."""
    acc = registry.lookup("MatMulInteger", "", a.dtype)(a, b, a_zero_point, b_zero_point)
    y = acc.astype(np.float32)
    y *= np.asarray(a_scale, np.float32) * np.asarray(b_scale, np.float32)
    if bias is not None:
        y += bias.astype(np.float32, copy=False)
    return y


@kernel("DynamicQuantizeMatMul", domain=MS)
def dynamic_quantize_matmul(
    a: np.ndarray,
    b: np.ndarray,
    b_scale: np.ndarray,
    b_zero_point: np.ndarray | None = None,
    bias: np.ndarray | None = None,
) -> np.ndarray:
    """com.microsoft DynamicQuantizeMatMul-1: A quantized to uint8 as DynamicQuantizeLinear
    does, then MatMulIntegerToFloat with B."""
    aq, a_scale, a_zp = dynamic_quantize_linear(a)
    return matmul_integer_to_float(aq, b, a_scale, b_scale, a_zp, b_zero_point, bias)
