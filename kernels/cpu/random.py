"""Random generators: Bernoulli, RandomUniform(Like), RandomNormal(Like), Multinomial.

Never constant-folded (see ``executor.NONDETERMINISTIC``). With ``seed`` the stream
is reproducible per node across runs; without it each call draws fresh numbers.
The streams are NumPy's, so they do not reproduce other runtimes' numbers.
"""

from __future__ import annotations

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from modelloader.kernels.cpu._registry import kernel


def _rng(seed: float | None) -> np.random.Generator:
    return np.random.default_rng(None if seed is None else int(np.float32(seed).view(np.uint32)))


def _dtype(dtype: int | None, like: np.ndarray | None = None) -> np.dtype:
    if dtype is not None:
        return np.dtype(tensor_dtype_to_np_dtype(dtype))
    return like.dtype if like is not None else np.dtype(np.float32)


@kernel("RandomUniform")
def random_uniform(
    *,
    shape: list[int],
    dtype: int = 1,
    high: float = 1.0,
    low: float = 0.0,
    seed: float | None = None,
) -> np.ndarray:
    """ONNX RandomUniform-22: U[low, high) of ``shape``."""
    return _rng(seed).uniform(low, high, shape).astype(_dtype(dtype))


@kernel("RandomUniformLike")
def random_uniform_like(
    x: np.ndarray,
    *,
    dtype: int | None = None,
    high: float = 1.0,
    low: float = 0.0,
    seed: float | None = None,
) -> np.ndarray:
    """ONNX RandomUniformLike-22: U[low, high) shaped like ``x``."""
    return _rng(seed).uniform(low, high, x.shape).astype(_dtype(dtype, x))


@kernel("RandomNormal")
def random_normal(
    *,
    shape: list[int],
    dtype: int = 1,
    mean: float = 0.0,
    scale: float = 1.0,
    seed: float | None = None,
) -> np.ndarray:
    """ONNX RandomNormal-22: N(mean, scale²) of ``shape``."""
    return _rng(seed).normal(mean, scale, shape).astype(_dtype(dtype))


@kernel("RandomNormalLike")
def random_normal_like(
    x: np.ndarray,
    *,
    dtype: int | None = None,
    mean: float = 0.0,
    scale: float = 1.0,
    seed: float | None = None,
) -> np.ndarray:
    """ONNX RandomNormalLike-22: N(mean, scale²) shaped like ``x``."""
    return _rng(seed).normal(mean, scale, x.shape).astype(_dtype(dtype, x))


@kernel("Bernoulli")
def bernoulli(x: np.ndarray, *, dtype: int | None = None, seed: float | None = None) -> np.ndarray:
    """ONNX Bernoulli-22: 1 with probability ``x`` else 0, per element."""
    return (_rng(seed).random(x.shape) < x).astype(_dtype(dtype, x))


@kernel("Multinomial")
def multinomial(
    x: np.ndarray, *, dtype: int = 6, sample_size: int = 1, seed: float | None = None
) -> np.ndarray:
    """ONNX Multinomial-22: ``sample_size`` class draws per row of unnormalised log-probs."""
    p = np.exp(x - x.max(axis=1, keepdims=True))
    cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
    u = _rng(seed).random((x.shape[0], sample_size))
    idx = (u[:, :, None] > cdf[:, None, :]).sum(axis=2)
    return np.minimum(idx, x.shape[1] - 1).astype(_dtype(dtype))
