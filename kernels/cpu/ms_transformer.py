"""com.microsoft transformer fusions that onnxruntime's transformer optimizer writes into
models (``model_optimized.onnx`` files) and its CPU provider runs: GELU variants and the
skip layer norms.

Each kernel computes the unfused formula of its contrib-op schema (onnxruntime 1.31):

* ``Gelu(X)`` = X * Phi(X) (erf form), ``BiasGelu(A, B)`` = Gelu(A + B),
  ``FastGelu(X[, bias])`` = 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3))) with
  x = X + bias, ``QuickGelu(X)`` = X * sigmoid(alpha * X) (alpha 1.702).
* ``SkipLayerNormalization(input, skip, gamma[, beta, bias])``: s = input + skip (+ bias),
  LayerNorm of s over the last axis times gamma (+ beta); outputs (Y, mean, inv_std_var, s).
* ``SkipSimplifiedLayerNormalization(input, skip, gamma[, bias])``: the same with RMS
  normalization (no mean subtraction, no beta).
"""

from __future__ import annotations

import numpy as np

from modelloader.kernels.cpu._registry import kernel
from modelloader.kernels.cpu.activation import gelu, sigmoid
from modelloader.kernels.cpu.norm import layer_normalization

MS = "com.microsoft"


def _added(x: np.ndarray, *terms: np.ndarray | None) -> np.ndarray:
    """x plus every present term, in a new array of x's dtype."""
    out = x
    for t in terms:
        if t is not None:
            out = np.add(out, t.astype(x.dtype, copy=False))
    return out if out is not x else x.copy()


@kernel("Gelu", domain=MS)
def ms_gelu(x: np.ndarray) -> np.ndarray:
    """com.microsoft Gelu-1: x * Phi(x), the erf form."""
    return gelu(x)


@kernel("BiasGelu", domain=MS)
def bias_gelu(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """com.microsoft BiasGelu-1: Gelu(A + B), B broadcast over the last axis."""
    return gelu(_added(a, b))


@kernel("FastGelu", domain=MS)
def fast_gelu(x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """com.microsoft FastGelu-1: the tanh approximation of Gelu(X + bias)."""
    return gelu(_added(x, bias), approximate="tanh")


@kernel("QuickGelu", domain=MS)
def quick_gelu(x: np.ndarray, *, alpha: float = 1.702) -> np.ndarray:
    """com.microsoft QuickGelu-1: X * sigmoid(alpha * X)."""
    y = sigmoid(x * x.dtype.type(alpha))
    y *= x
    return y


@kernel("SkipLayerNormalization", domain=MS)
def skip_layer_normalization(
    x: np.ndarray,
    skip: np.ndarray,
    gamma: np.ndarray,
    beta: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    *,
    epsilon: float = 1e-12,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """com.microsoft SkipLayerNormalization-1: (LayerNorm(s) * gamma + beta, mean, inv_std_var,
    s) with s = input + skip (+ bias), normalized over the last axis."""
    s = _added(x, skip, bias)
    y, mean, inv_std = layer_normalization(s, gamma, beta, axis=-1, epsilon=epsilon)
    return y, mean, inv_std, s


@kernel("SkipSimplifiedLayerNormalization", domain=MS)
def skip_simplified_layer_normalization(
    x: np.ndarray,
    skip: np.ndarray,
    gamma: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    epsilon: float = 1e-12,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """com.microsoft SkipSimplifiedLayerNormalization-1: (s / sqrt(mean(s^2) + eps) * gamma,
    mean (zeros: RMS normalization subtracts none), inv_std_var, s) with s = input + skip
    (+ bias), over the last axis."""
    s = _added(x, skip, bias)
    ct = np.float64 if s.dtype == np.float64 else np.float32
    sc = s.astype(ct, copy=False)
    inv = np.add.reduce(np.square(sc), axis=-1, keepdims=True)
    inv /= ct(sc.shape[-1])
    inv += ct(epsilon)
    np.sqrt(inv, out=inv)
    np.divide(1, inv, out=inv)
    y = sc * inv
    y *= gamma.astype(ct, copy=False)
    return y.astype(s.dtype, copy=False), np.zeros_like(inv), inv, s
