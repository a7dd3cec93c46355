"""Normalisation kernels: Batch/Instance/Layer/Group/RMS normalisation, LRN, Lp, MVN, Dropout."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from modelloader.buffers import take
from modelloader.kernels.cpu import _llvm
from modelloader.kernels.cpu._registry import kernel
from modelloader.kernels.cpu.conv import apply_activation, clamp_bounds, scratch
from modelloader.kernels.cpu.elementwise import pooled_out


def _channel_param(p: np.ndarray, ndim: int) -> np.ndarray:
    """Reshapes a per-channel (or per-channel-and-spatial) parameter to broadcast over NC..."""
    return p.reshape((1, *p.shape) + (1,) * (ndim - 1 - p.ndim))


def _norm_axes(axis: int, ndim: int) -> tuple[int, ...]:
    axis = axis + ndim if axis < 0 else axis
    return tuple(range(axis, ndim))


def _compute_dtype(dtype: np.dtype) -> type:
    """float16/bfloat16 inputs are accumulated in float32; float32/float64 stay as they are."""
    return np.float64 if dtype == np.float64 else np.float32


@kernel("BatchNormalization")
def batch_normalization(
    x: np.ndarray,
    scale: np.ndarray,
    b: np.ndarray,
    input_mean: np.ndarray,
    input_var: np.ndarray,
    *,
    epsilon: float = 1e-5,
    momentum: float = 0.9,
    training_mode: int = 0,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """ONNX BatchNormalization-15: Y = scale * (X - mean) / sqrt(var + eps) + B over channel axis 1.

    With ``training_mode`` the batch statistics normalise X and the running mean/var outputs are
    ``input * momentum + batch * (1 - momentum)``.
    """
    ct = _compute_dtype(x.dtype)
    xc = x.astype(ct, copy=False)
    if training_mode:
        axes = (0, *range(2, x.ndim))
        mean = xc.mean(axis=axes)
        var = xc.var(axis=axes)
        m = ct(momentum)
        run_mean = (input_mean.astype(ct) * m + mean * (1 - m)).astype(input_mean.dtype)
        run_var = (input_var.astype(ct) * m + var * (1 - m)).astype(input_var.dtype)
    else:
        mean = input_mean.astype(ct, copy=False)
        var = input_var.astype(ct, copy=False)
        run_mean = run_var = None
    y = _affine(xc, scale, b, mean, var, epsilon)
    return y.astype(x.dtype, copy=False), run_mean, run_var


def _affine(
    x: np.ndarray,
    scale: np.ndarray,
    b: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    epsilon: float,
) -> np.ndarray:
    """Inference batch norm as one per-channel multiply-add, y = x * a + c, into a recycled
    buffer (x: compute dtype, channels on axis 1)."""
    a, c = _affine_params(x.dtype.type, scale, b, mean, var, epsilon)
    y = np.multiply(x, _channel_param(a, x.ndim), out=pooled_out(x))
    y += _channel_param(c, x.ndim)
    return y


def _affine_params(
    ct: type, scale: np.ndarray, b: np.ndarray, mean: np.ndarray, var: np.ndarray, epsilon: float
) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) of inference batch norm as y = x * a + c, in the compute type ``ct``."""
    a = scale.astype(ct) / np.sqrt(var.astype(ct) + ct(epsilon))
    return a, b.astype(ct) - mean.astype(ct) * a


@kernel("FusedBatchNorm", domain="modelloader")
def fused_batch_norm(
    x: np.ndarray,
    scale: np.ndarray,
    b: np.ndarray,
    input_mean: np.ndarray,
    input_var: np.ndarray,
    *,
    epsilon: float = 1e-5,
    momentum: float = 0.9,
    training_mode: int = 0,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> np.ndarray:
    """modelloader FusedBatchNorm: act(BatchNormalization(X, ...)) in inference mode, one
    output (the running statistics outputs of training mode are not produced)."""
    if training_mode:
        raise ValueError("FusedBatchNorm is inference-only (training_mode=0)")
    xc = x.astype(_compute_dtype(x.dtype), copy=False)
    bounds = clamp_bounds(activation, activation_params)
    if bounds is not None and x.ndim > 1 and scale.ndim == 1 and _llvm.enabled(xc.size):
        # multiply, add and clamp in one compiled pass (same bits as the NumPy passes)
        n, m = xc.shape[:2]
        a, c = _affine_params(xc.dtype.type, scale, b, input_mean, input_var, epsilon)
        y = take(xc.shape, xc.dtype)
        lined = (n, m, 1, xc.size // max(n * m, 1))
        src = np.ascontiguousarray(xc).reshape(lined)
        _llvm.epilogue_fn(c, m, xc.dtype, *bounds, scale=a)(y.reshape(lined), None, src)
        return y.astype(x.dtype, copy=False)
    y = _affine(xc, scale, b, input_mean, input_var, epsilon)
    return apply_activation(y, activation, activation_params).astype(x.dtype, copy=False)


@kernel("InstanceNormalization")
def instance_normalization(
    x: np.ndarray, scale: np.ndarray, b: np.ndarray, *, epsilon: float = 1e-5
) -> np.ndarray:
    """ONNX InstanceNormalization-6: per (N, C) normalisation over spatial axes, then scale/B."""
    ct = _compute_dtype(x.dtype)
    xc = x.astype(ct, copy=False)
    axes = tuple(range(2, x.ndim))
    mean = xc.mean(axis=axes, keepdims=True)
    var = xc.var(axis=axes, keepdims=True)
    y = (xc - mean) / np.sqrt(var + ct(epsilon))
    y = y * _channel_param(scale.astype(ct), x.ndim) + _channel_param(b.astype(ct), x.ndim)
    return y.astype(x.dtype, copy=False)


@kernel("LayerNormalization")
def layer_normalization(
    x: np.ndarray,
    scale: np.ndarray,
    b: np.ndarray | None = None,
    *,
    axis: int = -1,
    epsilon: float = 1e-5,
    stash_type: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX LayerNormalization-17: normalise over axes [axis, rank); outputs Y, Mean, InvStdDev."""
    ct = np.float64 if x.dtype == np.float64 else np.float32
    axes = _norm_axes(axis, x.ndim)
    xc = x.astype(ct, copy=False)
    count = ct(math.prod(x.shape[a] for a in axes))
    # the reductions np.mean runs, without its per-call Python overhead; y reuses d's buffer
    mean = np.add.reduce(xc, axis=axes, keepdims=True)
    mean /= count
    d = np.subtract(xc, mean, out=pooled_out(xc))
    var = np.add.reduce(
        np.square(d, out=scratch("ln_sq", d.shape, d.dtype)), axis=axes, keepdims=True
    )
    var /= count
    var += ct(epsilon)
    inv_std = np.sqrt(var, out=var)
    np.divide(1, inv_std, out=inv_std)
    y = d
    y *= inv_std
    y *= scale.astype(ct, copy=False)
    if b is not None:
        y += b.astype(ct, copy=False)
    # Mean/InvStdDev carry the stash type (float32) per spec; the reference tests use X's type.
    out_t = x.dtype
    return y.astype(x.dtype, copy=False), mean.astype(out_t), inv_std.astype(out_t)


@kernel("RMSNormalization")
def rms_normalization(
    x: np.ndarray,
    scale: np.ndarray,
    *,
    axis: int = -1,
    epsilon: float = 1e-5,
    stash_type: int = 1,
) -> np.ndarray:
    """ONNX RMSNormalization-23: Y = X / sqrt(mean(X^2 over [axis, rank)) + eps) * scale."""
    ct = np.float64 if x.dtype == np.float64 else np.float32
    axes = _norm_axes(axis, x.ndim)
    xc = x.astype(ct, copy=False)
    ms = np.mean(xc * xc, axis=axes, keepdims=True)
    y = xc / np.sqrt(ms + ct(epsilon)) * scale.astype(ct, copy=False)
    return y.astype(x.dtype, copy=False)


@kernel("GroupNormalization")
def group_normalization(
    x: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray,
    *,
    num_groups: int,
    epsilon: float = 1e-5,
    stash_type: int = 1,
) -> np.ndarray:
    """ONNX GroupNormalization-21: normalise each of ``num_groups`` channel groups, then per-channel
    scale/bias. Opset-18 models give per-group scale/bias (shape [num_groups]); those are expanded."""
    ct = np.float64 if x.dtype == np.float64 else np.float32
    n, c = x.shape[0], x.shape[1]
    xg = x.astype(ct, copy=False).reshape(n, num_groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = xg.var(axis=2, keepdims=True)
    y = ((xg - mean) / np.sqrt(var + ct(epsilon))).reshape(x.shape)
    scale, bias = scale.astype(ct), bias.astype(ct)
    if scale.size != c:
        scale = np.repeat(scale, c // num_groups)
    if bias.size != c:
        bias = np.repeat(bias, c // num_groups)
    y = y * _channel_param(scale, x.ndim) + _channel_param(bias, x.ndim)
    return y.astype(x.dtype, copy=False)


@kernel("LRN")
def lrn(
    x: np.ndarray,
    *,
    size: int,
    alpha: float = 0.0001,
    beta: float = 0.75,
    bias: float = 1.0,
) -> np.ndarray:
    """ONNX LRN-13: y = x / (bias + alpha/size * sum of x^2 over a channel window)^beta."""
    ct = np.float64 if x.dtype == np.float64 else np.float32
    xc = x.astype(ct, copy=False)
    sq = xc * xc
    c = x.shape[1]
    lo = (size - 1) // 2
    hi = size - 1 - lo
    # Window sum along channels via a cumulative sum over a zero-padded channel axis.
    pad = [(0, 0)] * x.ndim
    pad[1] = (lo + 1, hi)
    cs = np.cumsum(np.pad(sq, pad), axis=1)
    idx = np.arange(c)
    win = np.take(cs, idx + lo + hi + 1, axis=1) - np.take(cs, idx, axis=1)
    y = xc / (ct(bias) + ct(alpha) / size * win) ** ct(beta)
    return y.astype(x.dtype, copy=False)


@kernel("LpNormalization")
def lp_normalization(x: np.ndarray, *, axis: int = -1, p: int = 2) -> np.ndarray:
    """ONNX LpNormalization-22: x / ||x||_p along ``axis`` (p in {1, 2}); zero norms give 0."""
    if p == 1:
        norm = np.sum(np.abs(x), axis=axis, keepdims=True)
    else:
        norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(norm == 0, x.dtype.type(0), x / norm)
    return y.astype(x.dtype, copy=False)


@kernel("MeanVarianceNormalization")
def mean_variance_normalization(x: np.ndarray, *, axes: list[int] | None = None) -> np.ndarray:
    """ONNX MeanVarianceNormalization-13: (X - mean) / sqrt(var) over ``axes`` (default 0, 2, 3)."""
    ax = tuple(axes) if axes is not None else (0, 2, 3)
    mean = x.mean(axis=ax, keepdims=True)
    var = np.mean((x - mean) ** 2, axis=ax, keepdims=True)
    y = (x - mean) / (np.sqrt(var) + x.dtype.type(1e-9))
    return y.astype(x.dtype, copy=False)


@kernel("Dropout")
def dropout(
    data: np.ndarray,
    ratio: np.ndarray | None = None,
    training_mode: np.ndarray | None = None,
    *,
    seed: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX Dropout-22: identity unless ``training_mode``; then zero elements with probability
    ``ratio`` and scale the rest by 1/(1-ratio). Output 2 is the boolean keep-mask."""
    r = 0.5 if ratio is None else float(np.asarray(ratio))
    training = False if training_mode is None else bool(np.asarray(training_mode))
    if not training or r == 0:
        return data, np.ones(data.shape, dtype=bool)
    # A given seed reproduces NumPy's legacy generator stream (what ONNX's tests use).
    rng = np.random.RandomState(seed) if seed is not None else np.random.default_rng()
    mask = rng.uniform(0.0, 1.0, data.shape) >= r
    y = data * mask * data.dtype.type(1 / (1 - r))
    return y.astype(data.dtype, copy=False), mask
