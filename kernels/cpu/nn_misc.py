"""Attention, RotaryEmbedding, losses, training optimisers and TfIdfVectorizer."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx.helper import tensor_dtype_to_np_dtype

from modelloader.kernels.cpu._registry import kernel
from modelloader.parallel import matmul

# --------------------------------------------------------------------------- Attention


def _masked_softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis; rows that are entirely -inf give zeros instead of NaN."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isneginf(m), 0, m)
    e = np.exp(x - m)
    s = np.sum(e, axis=-1, keepdims=True)
    return e / np.where(s == 0, 1, s)


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Matmul that keeps the operand dtype (NumPy computes bfloat16 products in float32)."""
    return matmul(a, b).astype(a.dtype, copy=False)


def _split_heads(t: np.ndarray, heads: int | None) -> np.ndarray:
    """(B, S, H*D) -> (B, H, S, D)."""
    if heads is None:
        raise ValueError("Attention: 3-D inputs need q_num_heads and kv_num_heads")
    b, s, hid = t.shape
    return t.reshape(b, s, heads, hid // heads).transpose(0, 2, 1, 3)


@kernel("Attention")
def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    past_key: np.ndarray | None = None,
    past_value: np.ndarray | None = None,
    nonpad_kv_seqlen: np.ndarray | None = None,
    *,
    is_causal: int = 0,
    kv_num_heads: int | None = None,
    q_num_heads: int | None = None,
    qk_matmul_output_mode: int = 0,
    scale: float | None = None,
    softcap: float = 0.0,
    softmax_precision: int | None = None,
    left_window_size: int = -1,
    right_window_size: int = -1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ONNX Attention-24: softmax(Q K^T * scale + mask) V with optional KV cache (past/present),
    causal masking, grouped-query heads, softcap and the chosen qk_matmul_output tap.

    Outputs Y, present_key, present_value, qk_matmul_output."""
    dt = q.dtype
    out_dt = q.dtype
    rank3 = q.ndim == 3
    if rank3:
        q = _split_heads(q, q_num_heads)
        k = _split_heads(k, kv_num_heads)
        v = _split_heads(v, kv_num_heads)
    if scale is None:
        scale = 1 / np.sqrt(q.shape[3])
    # Q and K are each multiplied by sqrt(scale) (the spec's numerically safer form).
    s = dt.type(np.sqrt(scale))
    if past_key is not None:
        k = np.concatenate((past_key, k), axis=2)
    if past_value is not None:
        v = np.concatenate((past_value, v), axis=2)
    present_key, present_value = k, v
    ql, kl = q.shape[2], k.shape[2]
    b = q.shape[0]

    bias = np.zeros((ql, kl), dtype=dt)
    if attn_mask is not None:
        pad = kl - attn_mask.shape[-1]
        if pad > 0:
            fill = False if attn_mask.dtype == np.bool_ else -np.inf
            attn_mask = np.pad(
                attn_mask, [(0, 0)] * (attn_mask.ndim - 1) + [(0, pad)], constant_values=fill
            )
        if attn_mask.dtype == np.bool_:
            attn_mask = np.where(attn_mask, dt.type(0), dt.type(-np.inf))
        bias = bias + attn_mask.astype(dt, copy=False)
    # Causal frontier offset: the cache length, or per batch nonpad_kv_seqlen - q_len.
    if past_key is None and nonpad_kv_seqlen is not None:
        offset: np.ndarray | int = (nonpad_kv_seqlen.reshape(-1, 1, 1, 1) - ql).astype(np.int64)
    else:
        offset = past_key.shape[2] if past_key is not None else 0
    i_idx = np.arange(ql).reshape(ql, 1)
    j_idx = np.arange(kl).reshape(1, kl)
    diff = i_idx + offset - j_idx
    allowed = np.ones(np.shape(diff), dtype=bool)
    restricted = False
    if is_causal:
        allowed &= diff >= 0
        restricted = True
    if left_window_size >= 0:
        allowed &= diff <= left_window_size
        restricted = True
    if right_window_size >= 0:
        allowed &= -diff <= right_window_size
        restricted = True
    if restricted:
        bias = bias + np.where(allowed, dt.type(0), dt.type(-np.inf))
    if nonpad_kv_seqlen is not None:
        keep = np.arange(kl) < nonpad_kv_seqlen.reshape(-1, 1)
        bias = bias + np.where(keep, dt.type(0), dt.type(-np.inf)).reshape(b, 1, 1, kl)

    hq, hk = q.shape[1], k.shape[1]
    if hq != hk:
        k = np.repeat(k, hq // hk, axis=1)
        v = np.repeat(v, hq // hk, axis=1)
    qk = _matmul(q * s, np.swapaxes(k, -1, -2) * s)
    if softcap:
        qk = np.tanh(qk / dt.type(softcap)) * dt.type(softcap)
    with_bias = qk + bias
    qk_out = with_bias if qk_matmul_output_mode == 2 else qk
    sm_in = with_bias
    if softmax_precision is not None:
        sm_in = sm_in.astype(tensor_dtype_to_np_dtype(softmax_precision))
    probs = _masked_softmax(sm_in)
    all_masked = np.isneginf(np.max(bias, axis=-1, keepdims=True))
    probs = np.where(all_masked, probs.dtype.type(0), probs)
    if qk_matmul_output_mode == 3:
        qk_out = probs
    probs = probs.astype(dt, copy=False)
    y = _matmul(probs, v)
    if rank3:
        y = y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)
    return (
        y.astype(out_dt, copy=False),
        present_key,
        present_value,
        qk_out.astype(out_dt, copy=False),
    )


@kernel("RotaryEmbedding")
def rotary_embedding(
    x: np.ndarray,
    cos_cache: np.ndarray,
    sin_cache: np.ndarray,
    position_ids: np.ndarray | None = None,
    *,
    interleaved: int = 0,
    num_heads: int = 0,
    rotary_embedding_dim: int = 0,
) -> np.ndarray:
    """ONNX RotaryEmbedding-23: rotates the first ``rotary_embedding_dim`` features of each head
    by the cached cos/sin (indexed by ``position_ids`` when given); input is (B, H, S, D) or
    (B, S, H*D)."""
    shape = x.shape
    if x.ndim == 4:
        t = x.transpose(0, 2, 1, 3)  # (B, S, H, D)
    else:
        t = x.reshape(shape[0], shape[1], num_heads, shape[2] // num_heads)
    d = t.shape[3]
    rd = rotary_embedding_dim or d
    if position_ids is not None:
        cos_cache = cos_cache[position_ids]
        sin_cache = sin_cache[position_ids]
    cos = cos_cache[:, :, None, :]
    sin = sin_cache[:, :, None, :]
    rot = t[..., :rd]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., : rd // 2], rot[..., rd // 2 :]
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rot = np.stack([real, imag], axis=-1).reshape(rot.shape)
    else:
        rot = np.concatenate([real, imag], axis=-1)
    out = np.concatenate([rot, t[..., rd:]], axis=-1).astype(x.dtype, copy=False)
    if x.ndim == 4:
        return out.transpose(0, 2, 1, 3)
    return out.reshape(shape)


def _heads(x: np.ndarray, n: int) -> np.ndarray:
    """(B, T, H*D) -> float32 (B, H, T, D)."""
    b, t, hd = x.shape
    return x.reshape(b, t, n, hd // n).transpose(0, 2, 1, 3).astype(np.float32)


@kernel("LinearAttention")
def linear_attention(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    past_state: np.ndarray | None = None,
    decay: np.ndarray | None = None,
    beta: np.ndarray | None = None,
    *,
    chunk_size: int | None = None,
    kv_num_heads: int,
    q_num_heads: int,
    scale: float | None = None,
    update_rule: str = "gated_delta",
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX LinearAttention: recurrent state S (B, H_kv, d_k, d_v) updated per step by the
    linear/gated/delta/gated_delta rule; output_t = scale * q_t S_t. Computed in float32."""
    gating = update_rule in ("gated", "gated_delta")
    delta = update_rule in ("delta", "gated_delta")
    b, t, _ = query.shape
    q4, k4, v4 = _heads(query, q_num_heads), _heads(key, kv_num_heads), _heads(value, kv_num_heads)
    d_k, d_v = q4.shape[-1], v4.shape[-1]
    group = q_num_heads // kv_num_heads
    g4 = bt4 = None
    if gating and decay is not None:
        if decay.shape[-1] == kv_num_heads:
            g4 = np.exp(
                decay.reshape(b, t, kv_num_heads, 1).transpose(0, 2, 1, 3).astype(np.float32)
            )
        else:
            g4 = np.exp(_heads(decay, kv_num_heads))
    if delta and beta is not None:
        bt4 = beta.reshape(b, t, beta.shape[-1], 1).transpose(0, 2, 1, 3).astype(np.float32)
    if past_state is not None:
        state_dtype = past_state.dtype
        state = past_state.astype(np.float32)
    else:
        state_dtype = query.dtype
        state = np.zeros((b, kv_num_heads, d_k, d_v), dtype=np.float32)
    sc = np.float32(1.0 / np.sqrt(d_k) if not scale else scale)
    out = np.zeros((b, q_num_heads, t, d_v), dtype=np.float32)
    for i in range(t):
        k_t, v_t = k4[:, :, i], v4[:, :, i]
        if g4 is not None:
            state = state * g4[:, :, i][..., None]
        if bt4 is not None:
            retrieved = np.einsum("bhdm,bhd->bhm", state, k_t)
            v_t = bt4[:, :, i] * (v_t - retrieved)
        state = state + k_t[..., :, None] * v_t[..., None, :]
        read = state if group == 1 else np.repeat(state, group, axis=1)
        out[:, :, i] = sc * np.einsum("bhd,bhdm->bhm", q4[:, :, i], read)
    y = out.transpose(0, 2, 1, 3).reshape(b, t, q_num_heads * d_v).astype(query.dtype)
    return y, state.astype(state_dtype)


@kernel("FlexAttention", domain="ai.onnx.preview")
def flex_attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    scale: float | None = None,
    score_mod: Callable[..., list] | None = None,
    prob_mod: Callable[..., list] | None = None,
    softmax_precision: int | None = None,
) -> np.ndarray:
    """ONNX FlexAttention (preview): softmax(score_mod(Q K^T * scale)) -> prob_mod -> @ V, with
    grouped-query heads; score_mod/prob_mod are subgraph callables over the full score tensor."""
    if scale is None:
        scale = 1.0 / np.sqrt(q.shape[-1])
    if q.shape[1] != k.shape[1]:
        rep = q.shape[1] // k.shape[1]
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    s = np.asarray(np.sqrt(np.float32(scale)), dtype=q.dtype)
    if softmax_precision is not None:
        ct = np.dtype(tensor_dtype_to_np_dtype(softmax_precision))
    else:
        ct = np.dtype(np.float32) if q.dtype.itemsize < 4 else q.dtype
    scores = matmul(q * s, np.swapaxes(k * s, -1, -2)).astype(ct)
    if score_mod is not None:
        scores = np.asarray(score_mod(scores)[0], dtype=ct)
    e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
    probs = e / np.sum(e, axis=-1, keepdims=True)
    if prob_mod is not None:
        probs = np.asarray(prob_mod(probs)[0], dtype=ct)
    return matmul(probs, v.astype(ct)).astype(v.dtype)


# --------------------------------------------------------------------------- losses


def _nll(
    logp: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None,
    ignore_index: int | None,
    reduction: str,
) -> np.ndarray:
    """Shared NLL over log-probabilities (N, C, d...) and class targets (N, d...)."""
    dt = logp.dtype
    ignored = (
        (target == ignore_index) if ignore_index is not None else np.zeros(target.shape, dtype=bool)
    )
    safe = np.where(ignored, 0, target).astype(np.int64)
    picked = np.take_along_axis(logp, safe[:, None, ...], axis=1)[:, 0, ...]
    loss = np.where(ignored, dt.type(0), -picked)
    if weight is not None:
        w = np.where(ignored, dt.type(0), np.take(weight, safe)).astype(dt)
    else:
        w = (~ignored).astype(dt)
    if weight is not None:
        loss = loss * w
    if reduction == "none":
        return loss.astype(dt, copy=False)
    if reduction == "sum":
        return np.asarray(np.sum(loss), dtype=dt)
    if reduction == "mean":
        if weight is None and ignore_index is None:
            return np.asarray(np.mean(loss), dtype=dt)
        return np.asarray(np.sum(loss) / np.sum(w), dtype=dt)
    raise ValueError(f"unknown reduction {reduction!r}")


@kernel("NegativeLogLikelihoodLoss")
def negative_log_likelihood_loss(
    x: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray | None = None,
    *,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> np.ndarray:
    """ONNX NegativeLogLikelihoodLoss-22: -input[n, target[n], d...] (weighted), reduced."""
    return _nll(x, target, weight, ignore_index, reduction)


@kernel("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss(
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> tuple[np.ndarray, np.ndarray]:
    """ONNX SoftmaxCrossEntropyLoss-13: NLL of log_softmax(scores, axis=1); outputs loss and
    log_prob."""
    m = np.max(scores, axis=1, keepdims=True)
    sh = scores - m
    logp = (sh - np.log(np.sum(np.exp(sh), axis=1, keepdims=True))).astype(scores.dtype, copy=False)
    return _nll(logp, labels, weights, ignore_index, reduction), logp


# --------------------------------------------------------------------------- training optimisers


def _split_groups(args: tuple[np.ndarray, ...], groups: int) -> list[tuple[np.ndarray, ...]]:
    n = len(args) // groups
    return [tuple(args[j * n + i] for j in range(groups)) for i in range(n)]


@kernel("Adagrad", domain="ai.onnx.preview.training")
def adagrad(
    r: np.ndarray,
    t: np.ndarray,
    *inputs: np.ndarray,
    decay_factor: float = 0.0,
    epsilon: float = 0.0,
    norm_coefficient: float = 0.0,
) -> tuple[np.ndarray, ...]:
    """ONNX Adagrad-1 (preview.training): inputs R, T, X..., G..., H...; outputs X_new..., H_new..."""
    lr = r / (1 + t * decay_factor)
    xs, hs = [], []
    for x, g, h in _split_groups(inputs, 3):
        g_reg = norm_coefficient * x + g
        h_new = h + g_reg * g_reg
        x_new = x - lr * g_reg / (np.sqrt(h_new) + epsilon)
        xs.append(x_new.astype(x.dtype))
        hs.append(h_new.astype(h.dtype))
    return (*xs, *hs)


@kernel("Momentum", domain="ai.onnx.preview.training")
def momentum(
    r: np.ndarray,
    t: np.ndarray,
    *inputs: np.ndarray,
    alpha: float,
    beta: float,
    mode: str,
    norm_coefficient: float,
) -> tuple[np.ndarray, ...]:
    """ONNX Momentum-1 (preview.training): standard or Nesterov momentum; inputs R, T, X..., G...,
    V...; outputs X_new..., V_new..."""
    xs, vs = [], []
    for x, g, v in _split_groups(inputs, 3):
        g_reg = norm_coefficient * x + g
        beta_adj = beta if t > 0 else 1
        v_new = alpha * v + beta_adj * g_reg
        if mode == "nesterov":
            x_new = x - r * (g_reg + alpha * v_new)
        else:
            x_new = x - r * v_new
        xs.append(x_new.astype(x.dtype))
        vs.append(v_new.astype(v.dtype))
    return (*xs, *vs)


@kernel("Adam", domain="ai.onnx.preview.training")
def adam(
    r: np.ndarray,
    t: np.ndarray,
    *inputs: np.ndarray,
    alpha: float = 0.9,
    beta: float = 0.999,
    epsilon: float = 0.0,
    norm_coefficient: float = 0.0,
    norm_coefficient_post: float = 0.0,
) -> tuple[np.ndarray, ...]:
    """ONNX Adam-1 (preview.training): inputs R, T, X..., G..., V..., H...; outputs X_new...,
    V_new..., H_new..."""
    xs, vs, hs = [], [], []
    for x, g, v, h in _split_groups(inputs, 4):
        g_reg = norm_coefficient * x + g
        v_new = alpha * v + (1 - alpha) * g_reg
        h_new = beta * h + (1 - beta) * g_reg * g_reg
        h_sqrt = np.sqrt(h_new) + epsilon
        lr = r
        if t > 0:
            lr = r * np.sqrt(1 - beta**t) / (1 - alpha**t)
        x_new = x - lr * v_new / h_sqrt
        x_new = (1 - norm_coefficient_post) * x_new
        xs.append(x_new.astype(x.dtype))
        vs.append(v_new.astype(v.dtype))
        hs.append(h_new.astype(h.dtype))
    return (*xs, *vs, *hs)


# --------------------------------------------------------------------------- TfIdfVectorizer


@kernel("TfIdfVectorizer")
def tfidf_vectorizer(
    x: np.ndarray,
    *,
    max_gram_length: int,
    max_skip_count: int,
    min_gram_length: int,
    mode: str,
    ngram_counts: list[int],
    ngram_indexes: list[int],
    pool_int64s: list[int] | None = None,
    pool_strings: list[str] | None = None,
    weights: list[float] | None = None,
) -> np.ndarray:
    """ONNX TfIdfVectorizer-9: counts pool n-grams (with skips) per row of a [C] or [B, C] input
    and emits TF, IDF (presence * weight) or TFIDF (count * weight) as float32."""
    pool = list(pool_int64s) if pool_int64s is not None else list(pool_strings or [])
    lookup: dict[tuple, int] = {}
    k = 0
    bounds = [*ngram_counts, len(pool)]
    for size_idx in range(len(ngram_counts)):
        n = size_idx + 1
        for s in range(bounds[size_idx], bounds[size_idx + 1], n):
            lookup[tuple(pool[s : s + n])] = ngram_indexes[k]
            k += 1
    out_size = max(ngram_indexes) + 1 if len(ngram_indexes) else 0
    rows = x.reshape(1, -1) if x.ndim < 2 else x
    counts = np.zeros((rows.shape[0], out_size), dtype=np.int64)
    for r, row in enumerate(rows):
        vals = row.tolist()
        c = len(vals)
        min_n = min_gram_length
        for skip in range(1, max_skip_count + 2):
            for start in range(c):
                for n in range(min_n, max_gram_length + 1):
                    last = start + (n - 1) * skip
                    if last >= c:
                        break
                    hit = lookup.get(tuple(vals[start : last + 1 : skip]))
                    if hit is not None:
                        counts[r, hit] += 1
            # Unigrams are counted once, not once per skip distance.
            min_n = max(min_n, 2)
            if min_n > max_gram_length:
                break
    w = np.asarray(weights, dtype=np.float32) if weights else None
    if mode == "TF":
        y = counts.astype(np.float32)
    elif mode == "IDF":
        y = (counts > 0).astype(np.float32) * (w if w is not None else 1)
    elif mode == "TFIDF":
        y = counts.astype(np.float32) * (w if w is not None else 1)
    else:
        raise ValueError(f"TfIdfVectorizer: unknown mode {mode!r}")
    y = y.astype(np.float32, copy=False)
    return y[0] if x.ndim < 2 else y
