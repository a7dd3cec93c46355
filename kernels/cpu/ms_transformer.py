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
from modelloader.kernels.cpu.elementwise import pooled_out
from modelloader.kernels.cpu.norm import _norm_axes, layer_normalization

MS = "com.microsoft"


def _added(x: np.ndarray, *terms: np.ndarray | None) -> np.ndarray:
    """x plus every present term (each broadcast to x's shape), in a new (recycled) array of
    x's dtype."""
    out = pooled_out(x)
    if out is None:
        out = np.empty_like(x)
    np.copyto(out, x)
    for t in terms:
        if t is not None:
            out += t.astype(x.dtype, copy=False)
    return out


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
    y, inv = simplified_layer_normalization(s, gamma, axis=-1, epsilon=epsilon)
    return y, np.zeros_like(inv), inv, s


@kernel("Attention", domain=MS)
def attention(
    x: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray | None = None,
    mask_index: np.ndarray | None = None,
    past: np.ndarray | None = None,
    attention_bias: np.ndarray | None = None,
    past_sequence_length: np.ndarray | None = None,
    *,
    num_heads: int,
    scale: float | None = None,
    mask_filter_value: float = -10000.0,
    unidirectional: int = 0,
    qkv_hidden_sizes: list[int] | None = None,
    do_rotary: int = 0,
    past_present_share_buffer: int = 0,
    rotary_embedding_dim: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """com.microsoft Attention-1 (self-attention with packed Q/K/V weights), without rotary
    embedding or a shared past/present buffer: softmax(Q K^T * scale + mask +
    attention_bias) V per head; returns (output, present).

    ``past`` (2, B, N, P, head_size) holds earlier keys and values: they precede this call's
    (total length T = P + S) and ``present`` is the concatenation. mask_index: a raw 0/1 mask
    (B, T) or (B, S, T), or key lengths (B,) (right padding) or end and start positions (2B,)
    (left padding); masked scores get ``mask_filter_value`` added, as do later positions
    when ``unidirectional``."""
    if do_rotary or past_present_share_buffer:
        raise ValueError(
            "Attention with rotary embedding or a shared past/present buffer is not "
            "supported; export the model without onnxruntime's attention fusion"
        )
    b, s, _ = x.shape
    hq, hk, hv = qkv_hidden_sizes or [weights.shape[1] // 3] * 3
    ct = x.dtype.type
    qkv = np.matmul(x, weights.astype(x.dtype, copy=False))
    if bias is not None:
        qkv += bias.astype(x.dtype, copy=False)
    n = int(num_heads)

    def heads(t: np.ndarray, size: int) -> np.ndarray:
        return t.reshape(b, s, n, size // n).transpose(0, 2, 1, 3)

    q = heads(qkv[..., :hq], hq)
    k = heads(qkv[..., hq : hq + hk], hk)
    v = heads(qkv[..., hq + hk : hq + hk + hv], hv)
    if past is not None:
        if hq != hk or hk != hv:
            raise ValueError("Attention with a past state needs equal Q/K/V hidden sizes")
        k = np.concatenate([past[0].astype(x.dtype, copy=False), k], axis=2)
        v = np.concatenate([past[1].astype(x.dtype, copy=False), v], axis=2)
    t = k.shape[2]
    sc = ct(scale) if scale else ct(1.0 / np.sqrt(hq // n))
    scores = np.matmul(q, k.transpose(0, 1, 3, 2))
    scores *= sc
    if mask_index is not None:
        scores += _mask(np.asarray(mask_index), b, s, t, ct(mask_filter_value))
    if unidirectional:  # query i sits at position t - s + i
        scores += np.triu(np.full((s, t), ct(mask_filter_value), ct), t - s + 1)
    if attention_bias is not None:
        scores += attention_bias.astype(x.dtype, copy=False)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = np.matmul(scores, v)  # (b, n, s, hv/n)
    present = np.stack([k, v]) if hk == hv else np.empty((0,), x.dtype)
    return np.ascontiguousarray(out.transpose(0, 2, 1, 3)).reshape(b, s, hv), present


def _mask(m: np.ndarray, b: int, s: int, t: int, fill: np.floating) -> np.ndarray:
    """The additive mask, broadcastable to (B, N, S, T), of an Attention mask_index."""
    if m.ndim == 1 and m.size in (b, 2 * b):
        pos = np.arange(t)
        end = m[:b].reshape(b, 1)
        keep = pos < end
        if m.size == 2 * b:
            keep &= pos >= m[b:].reshape(b, 1)
        return np.where(keep, 0, fill).astype(type(fill)).reshape(b, 1, 1, t)
    if m.ndim == 2 and m.shape == (b, t):
        return ((1 - m.astype(type(fill))) * fill).reshape(b, 1, 1, t)
    if m.ndim == 3 and m.shape == (b, s, t):
        return ((1 - m.astype(type(fill))) * fill).reshape(b, 1, s, t)
    raise ValueError(
        f"Attention mask_index of shape {m.shape} is not supported (use a (batch, seq) or "
        "(batch, seq, seq) 0/1 mask, or (batch,) / (2*batch,) positions)"
    )


@kernel("EmbedLayerNormalization", domain=MS)
def embed_layer_normalization(
    input_ids: np.ndarray,
    segment_ids: np.ndarray | None,
    word_embedding: np.ndarray,
    position_embedding: np.ndarray,
    segment_embedding: np.ndarray | None,
    gamma: np.ndarray,
    beta: np.ndarray,
    mask: np.ndarray | None = None,
    position_ids: np.ndarray | None = None,
    *,
    epsilon: float = 1e-12,
    mask_index_type: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """com.microsoft EmbedLayerNormalization-1: (LayerNorm(word[ids] + position[pos] +
    segment[seg]) * gamma + beta, mask_index = the number of 1s in each mask row (int32; 0s
    without a mask), the embedding sum before normalization)."""
    b, s = input_ids.shape
    pos = np.arange(s) if position_ids is None else position_ids
    emb = np.take(word_embedding, input_ids, axis=0) + np.take(position_embedding, pos, axis=0)
    if segment_ids is not None and segment_embedding is not None:
        emb += np.take(segment_embedding, segment_ids, axis=0)
    y, _, _ = layer_normalization(emb, gamma, beta, axis=-1, epsilon=epsilon)
    count = np.zeros(b, np.int32) if mask is None else (mask != 0).sum(axis=1).astype(np.int32)
    return y, count, emb


@kernel("SimplifiedLayerNormalization")
def simplified_layer_normalization(
    x: np.ndarray,
    scale: np.ndarray,
    *,
    axis: int = -1,
    epsilon: float = 1e-5,
    stash_type: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's SimplifiedLayerNormalization-1 (registered in the ai.onnx domain; what
    its optimizer writes for T5/LLaMA RMS norms): (X / sqrt(mean(X^2 over [axis, rank)) +
    eps) * scale, inv_std_var)."""
    ct = np.float64 if x.dtype == np.float64 else np.float32
    axes = _norm_axes(axis, x.ndim)
    xc = x.astype(ct, copy=False)
    inv = np.add.reduce(np.square(xc), axis=axes, keepdims=True)
    inv /= ct(np.prod([x.shape[a] for a in axes]))
    inv += ct(epsilon)
    np.sqrt(inv, out=inv)
    np.divide(1, inv, out=inv)
    y = xc * inv
    y *= scale.astype(ct, copy=False)
    return y.astype(x.dtype, copy=False), inv
