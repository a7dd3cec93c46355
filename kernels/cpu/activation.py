"""Activation kernels and Softmax/LogSoftmax/Hardmax (ONNX newest opsets).

Everything is computed in the input dtype (float32 stays float32); scalar attributes
are converted to the input's scalar type before they meet the array.
"""

from __future__ import annotations

import functools

import numpy as np

from modelloader.kernels.cpu._registry import kernel
from modelloader.kernels.cpu.conv import const_like
from modelloader.kernels.cpu.elementwise import _BLOCK, blockwise, erf, pooled_out


def _s(x: np.ndarray, v: float) -> np.generic:
    """Python scalar ``v`` as ``x``'s scalar type, so it does not promote ``x``."""
    return x.dtype.type(v)


def _as(x: np.ndarray | np.generic, dtype: np.dtype) -> np.ndarray:
    return np.asarray(x).astype(dtype, copy=False)


def _half_via_f32(fn):
    """Runs ``fn`` in float32 for 16-bit float inputs and rounds once at the end."""

    @functools.wraps(fn)
    def run(x: np.ndarray, *args: np.ndarray, **attrs: object) -> np.ndarray:
        if x.dtype.kind in "fV" and x.dtype.itemsize < 4:
            ups = [a.astype(np.float32) if a.dtype == x.dtype else a for a in args]
            return _as(fn(x.astype(np.float32), *ups, **attrs), x.dtype)
        return fn(x, *args, **attrs)

    return run


def _sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    y = np.negative(x, out=out)
    with np.errstate(over="ignore"):  # exp(-x) -> inf gives the correct 0
        np.exp(y, out=y)
    y += _s(x, 1)
    np.reciprocal(y, out=y)
    return y


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)) in x's dtype, computed in cache-sized blocks."""
    if x.size <= 2 * _BLOCK and x.dtype.kind == "f":
        return _sigmoid(x, pooled_out(x))
    return blockwise(_sigmoid, x)


@kernel("Relu")
def relu(x: np.ndarray) -> np.ndarray:
    """ONNX Relu-14: max(x, 0)."""
    out = pooled_out(x)
    if out is None:
        return np.maximum(x, _s(x, 0))
    # against a same-shape zeros array numpy takes its SIMD path (a scalar does not)
    zero = const_like(0.0, x) if x.dtype.kind == "f" else _s(x, 0)
    return np.maximum(x, zero, out=out)


@kernel("LeakyRelu")
def leaky_relu(x: np.ndarray, *, alpha: float = 0.01) -> np.ndarray:
    """ONNX LeakyRelu-16: x if x >= 0 else alpha * x."""
    a = _s(x, alpha)
    if 0 <= alpha <= 1:
        return np.maximum(x, x * a)
    return np.where(x >= 0, x, x * a)


@kernel("PRelu")
def prelu(x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    """ONNX PRelu-16: x if x >= 0 else slope * x (slope broadcasts to x)."""
    return _as(np.where(x < 0, x * slope.astype(x.dtype, copy=False), x), x.dtype)


@kernel("Elu")
@_half_via_f32
def elu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """ONNX Elu-22: x if x > 0 else alpha * (exp(x) - 1)."""
    return np.where(x > 0, x, _s(x, alpha) * np.expm1(np.minimum(x, _s(x, 0))))


@kernel("Selu")
@_half_via_f32
def selu(
    x: np.ndarray,
    *,
    alpha: float = 1.67326319217681884765625,
    gamma: float = 1.05070102214813232421875,
) -> np.ndarray:
    """ONNX Selu-22: gamma * (x if x > 0 else alpha * (exp(x) - 1))."""
    neg = _s(x, alpha) * np.expm1(np.minimum(x, _s(x, 0)))
    return _s(x, gamma) * np.where(x > 0, x, neg)


@kernel("Celu")
@_half_via_f32
def celu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """ONNX Celu-12: max(0, x) + min(0, alpha * (exp(x / alpha) - 1))."""
    a = _s(x, alpha)
    neg = a * np.expm1(np.minimum(x, _s(x, 0)) / a)
    return np.where(x > 0, x, neg)


@kernel("Gelu")
@_half_via_f32
def gelu(x: np.ndarray, *, approximate: str = "none") -> np.ndarray:
    """ONNX Gelu-20: x * Phi(x); approximate="tanh" uses the tanh formula."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"Gelu approximate must be 'none' or 'tanh', got {approximate!r}")
    half = _s(x, 0.5)

    def run(v: np.ndarray) -> np.ndarray:
        if approximate == "tanh":
            y = np.tanh(_s(v, np.sqrt(2.0 / np.pi)) * (v + _s(v, 0.044715) * v * v * v))
        else:
            y = erf(v * _s(v, 0.7071067811865476))
        y += _s(v, 1.0)
        y *= v
        y *= half
        return y

    return blockwise(run, x)


@kernel("HardSigmoid")
@_half_via_f32
def hard_sigmoid(x: np.ndarray, *, alpha: float = 0.2, beta: float = 0.5) -> np.ndarray:
    """ONNX HardSigmoid-22: max(0, min(1, alpha * x + beta))."""
    return np.clip(_s(x, alpha) * x + _s(x, beta), _s(x, 0), _s(x, 1))


@kernel("HardSwish")
@_half_via_f32
def hard_swish(x: np.ndarray) -> np.ndarray:
    """ONNX HardSwish-22: x * max(0, min(1, x / 6 + 0.5))."""
    return x * np.clip(x * _s(x, 1 / 6) + _s(x, 0.5), _s(x, 0), _s(x, 1))


def softplus(x: np.ndarray) -> np.ndarray:
    """log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): overflow-free, in x's dtype."""

    def run(v: np.ndarray) -> np.ndarray:
        y = np.abs(v)
        np.negative(y, out=y)
        np.exp(y, out=y)
        np.log1p(y, out=y)
        y += np.maximum(v, _s(v, 0))
        return y

    return blockwise(run, x)


@kernel("Softplus")
@_half_via_f32
def softplus_kernel(x: np.ndarray) -> np.ndarray:
    """ONNX Softplus-22: ln(exp(x) + 1)."""
    return softplus(x)


@kernel("Mish")
@_half_via_f32
def mish(x: np.ndarray) -> np.ndarray:
    """ONNX Mish-22: x * tanh(softplus(x))."""

    def run(v: np.ndarray) -> np.ndarray:
        # tanh(log(1 + e^v)) = n / (n + 2) with n = e^v (e^v + 2); it is 1 past v = 20.
        e = np.exp(np.minimum(v, _s(v, 20)))
        n = e + _s(v, 2)
        n *= e
        e = n + _s(v, 2)
        n /= e
        n *= v
        return n

    return blockwise(run, x)


@kernel("Softsign")
@_half_via_f32
def softsign(x: np.ndarray) -> np.ndarray:
    """ONNX Softsign-22: x / (1 + |x|)."""
    return x / (_s(x, 1) + np.abs(x))


@kernel("Sigmoid")
@_half_via_f32
def sigmoid_kernel(x: np.ndarray) -> np.ndarray:
    """ONNX Sigmoid-13: 1 / (1 + exp(-x))."""
    return sigmoid(x)


@kernel("Tanh")
@_half_via_f32
def tanh(x: np.ndarray) -> np.ndarray:
    """ONNX Tanh-13."""
    return np.tanh(x)


@kernel("Swish")
@_half_via_f32
def swish(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """ONNX Swish-24: x * sigmoid(alpha * x)."""
    a = _s(x, alpha)
    return blockwise(lambda v: v * _sigmoid(v * a if alpha != 1.0 else v), x)


@kernel("SwiGLU")
@_half_via_f32
def swiglu(a: np.ndarray, b: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """ONNX SwiGLU-28: a * sigmoid(alpha * a) * b (a, b of identical shape)."""
    if a.shape != b.shape:
        raise ValueError(f"SwiGLU needs identical shapes, got {a.shape} and {b.shape}")
    return swish(a, alpha=alpha) * b


@kernel("ThresholdedRelu")
def thresholded_relu(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """ONNX ThresholdedRelu-22: x if x > alpha else 0."""
    return np.where(x > _s(x, alpha), x, _s(x, 0))


@kernel("Shrink")
def shrink(x: np.ndarray, *, bias: float = 0.0, lambd: float = 0.5) -> np.ndarray:
    """ONNX Shrink-9: x+bias if x < -lambd, x-bias if x > lambd, else 0."""
    if x.dtype.kind == "f":
        b, lo, hi = _s(x, bias), _s(x, -lambd), _s(x, lambd)
        return np.where(x < lo, x + b, np.where(x > hi, x - b, _s(x, 0)))
    xf = x.astype(np.float64)
    y = np.where(xf < -lambd, xf + bias, np.where(xf > lambd, xf - bias, 0.0))
    return y.astype(x.dtype)


@kernel("Softmax")
def softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """ONNX Softmax-13: exp(x - max) / sum along ``axis``."""
    e = np.subtract(x, np.max(x, axis=axis, keepdims=True), out=pooled_out(x))
    np.exp(e, out=e)
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


@kernel("LogSoftmax")
def log_softmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """ONNX LogSoftmax-13: x - max - log(sum(exp(x - max))) along ``axis``."""
    shifted = x - np.max(x, axis=axis, keepdims=True)
    shifted -= np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))
    return shifted


@kernel("Hardmax")
def hardmax(x: np.ndarray, *, axis: int = -1) -> np.ndarray:
    """ONNX Hardmax-13: 1 at the first maximum along ``axis``, 0 elsewhere."""
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    out = np.zeros_like(x)
    np.put_along_axis(out, idx, x.dtype.type(1), axis=axis)
    return out
