"""TFLite "hybrid" kernels (domain ``modelloader``): float activations, int8 weights.

Dynamic-range quantized models keep int8 weights with (per-channel) scales and float
activations. TFLite's hybrid kernels quantize the float input on the fly, run an
integer matmul/conv with the int8 weights and scale the int32 accumulator back to
float. These kernels reproduce that arithmetic, so outputs match the interpreter far
more closely than dequantizing the weights and computing in float:

* input quantization per batch (conv, depthwise) or per row (fully connected):
  symmetric (``scale = max|x| / 127``, values in [-127, 127]) or asymmetric
  (min/max including 0 over 255 steps, nudged int8 zero point), rounding half away
  from zero as ``TfLiteRound`` does, in float32 like the C++ code;
* exact integer accumulation of ``w * (q - zero_point)`` (padding contributes 0);
* float32 rescaling in TFLite's operation order, then the float bias.

Tensors stay in TFLite layout: x NHWC, conv filter OHWI, depthwise filter 1HWC,
fully-connected filter [units, K]. Fused activations are separate nodes (a clamp).
"""

from __future__ import annotations

import numpy as np

from modelloader.kernels.cpu._registry import kernel

D = "modelloader"
F32 = np.float32


def _round_away(x: np.ndarray) -> np.ndarray:
    """std::round: nearest integer, halves away from zero (np.round rounds halves to even)."""
    r = np.round(x)
    t = np.trunc(x)
    tie = np.abs(x - t) == 0.5
    return np.where(tie, t + np.sign(x), r)


def symmetric_quantize(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SymmetricQuantizeFloats on each row of a [B, n] float32 array -> (q, scale, zp=0)."""
    rows = rows.astype(F32, copy=False)
    rng = np.maximum(np.abs(rows.min(axis=1)), np.abs(rows.max(axis=1))).astype(F32)
    zero = rng == 0
    safe = np.where(zero, F32(1), rng)
    scale = np.where(zero, F32(1), safe / F32(127)).astype(F32)
    inv = (F32(127) / safe).astype(F32)
    q = _round_away(rows * inv[:, None])
    q = np.clip(q, -127, 127)
    q[zero] = 0
    return q.astype(np.int32), scale, np.zeros(len(rows), np.int32)


def asymmetric_quantize(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AsymmetricQuantizeFloats on each row of a [B, n] float32 array -> (q, scale, zp).

    The scale and zero point are computed in double from min(0, min) / max(0, max); the
    scale is stored as float and values are quantized as ``round(zp + x * (1.0f / scale))``
    in float32.
    """
    rows = rows.astype(F32, copy=False)
    rmin = np.minimum(F32(0), rows.min(axis=1)).astype(np.float64)
    rmax = np.maximum(F32(0), rows.max(axis=1)).astype(np.float64)
    same = rmin == rmax
    qmin, qmax = -128.0, 127.0
    scale_d = np.where(same, 1.0, (rmax - rmin) / (qmax - qmin))
    zp_from_min = qmin - rmin / scale_d
    zp_from_max = qmax - rmax / scale_d
    err_min = abs(qmin) + np.abs(rmin / scale_d)
    err_max = abs(qmax) + np.abs(rmax / scale_d)
    zp_d = np.where(err_min < err_max, zp_from_min, zp_from_max)
    zp = np.where(zp_d <= qmin, qmin, np.where(zp_d >= qmax, qmax, _round_away(zp_d))).astype(
        np.int32
    )
    zp[same] = 0
    scale = scale_d.astype(F32)
    inv = (F32(1) / scale).astype(F32)
    q = _round_away(zp.astype(F32)[:, None] + rows * inv[:, None])
    q = np.clip(q, -128, 127)
    q[same] = 0
    return q.astype(np.int32), scale, zp


def _quantize(rows: np.ndarray, asymmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return asymmetric_quantize(rows) if asymmetric else symmetric_quantize(rows)


def _per_channel(w_scale: np.ndarray, channels: int) -> np.ndarray:
    s = np.asarray(w_scale, F32).reshape(-1)
    return np.broadcast_to(s, (channels,)) if s.size == 1 else s


def _windows(
    xz: np.ndarray,
    k: tuple[int, int],
    strides: list[int],
    dilations: list[int],
    pads: list[int],
) -> tuple[np.ndarray, int, int]:
    """Zero-padded [N, OH, OW, KH, KW, C] view of an NHWC integer array."""
    n, h, w, c = xz.shape
    t, l_, b, r = pads
    xp = np.pad(xz, ((0, 0), (t, b), (l_, r), (0, 0)))
    kh, kw = k
    eh, ew = (kh - 1) * dilations[0] + 1, (kw - 1) * dilations[1] + 1
    oh = (h + t + b - eh) // strides[0] + 1
    ow = (w + l_ + r - ew) // strides[1] + 1
    s = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp,
        (n, oh, ow, kh, kw, c),
        (
            s[0],
            s[1] * strides[0],
            s[2] * strides[1],
            s[1] * dilations[0],
            s[2] * dilations[1],
            s[3],
        ),
        writeable=False,
    )
    return view, oh, ow


@kernel("TFLiteHybridConv", domain=D)
def hybrid_conv(
    x: np.ndarray,
    w: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: list[int] = (1, 1),  # type: ignore[assignment]
    dilations: list[int] = (1, 1),  # type: ignore[assignment]
    pads: list[int] = (0, 0, 0, 0),  # type: ignore[assignment]
    per_channel: int = 1,
) -> np.ndarray:
    """modelloader TFLiteHybridConv: TFLite hybrid CONV_2D (x NHWC float32, w OHWI int8).

    per_channel=1 (EvalHybridPerChannel): asymmetric per-batch input quantization,
    ``y = acc * w_scale[o] * x_scale[b] + bias``; per_channel=0 (EvalHybrid): symmetric,
    ``y = acc * (x_scale[b] * w_scale) + bias``. Grouped when C exceeds the filter's depth.
    """
    n, h, wd, c = x.shape
    o, kh, kw, ci = w.shape
    q, xs, zp = _quantize(x.reshape(n, -1), bool(per_channel))
    xz = (q - zp[:, None]).reshape(n, h, wd, c)
    view, oh, ow = _windows(xz, (kh, kw), list(strides), list(dilations), list(pads))
    groups = max(c // ci, 1)
    og = o // groups
    acc = np.empty((n * oh * ow, o), np.float64)
    for g in range(groups):
        cols = view[..., g * ci : (g + 1) * ci].reshape(n * oh * ow, kh * kw * ci)
        wg = w[g * og : (g + 1) * og].reshape(og, -1).astype(np.float64)
        acc[:, g * og : (g + 1) * og] = cols.astype(np.float64) @ wg.T  # exact integers
    acc32 = acc.astype(F32).reshape(n, oh * ow, o)
    ws = _per_channel(w_scale, o)
    if per_channel:
        y = acc32 * ws * xs[:, None, None]
    else:
        y = acc32 * (xs * ws[0]).astype(F32)[:, None, None]
    if bias is not None:
        y = y + bias.astype(F32, copy=False)
    return np.ascontiguousarray(y.reshape(n, oh, ow, o), dtype=F32)


@kernel("TFLiteHybridDepthwiseConv", domain=D)
def hybrid_depthwise_conv(
    x: np.ndarray,
    w: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    strides: list[int] = (1, 1),  # type: ignore[assignment]
    dilations: list[int] = (1, 1),  # type: ignore[assignment]
    pads: list[int] = (0, 0, 0, 0),  # type: ignore[assignment]
    depth_multiplier: int = 1,
) -> np.ndarray:
    """modelloader TFLiteHybridDepthwiseConv: TFLite hybrid DEPTHWISE_CONV_2D (x NHWC float32,
    w [1, KH, KW, C*M] int8, output channel c*M+j reads input channel c).

    Asymmetric per-batch input quantization (DepthwiseConvHybridPerChannel);
    ``y = acc * (w_scale[o] * x_scale[b]) + bias``.
    """
    n, h, wd, c = x.shape
    _, kh, kw, co = w.shape
    m = depth_multiplier
    if c * m != co:
        raise ValueError(f"depthwise filter has {co} channels, input {c} x multiplier {m}")
    q, xs, zp = _quantize(x.reshape(n, -1), True)
    xz = (q - zp[:, None]).reshape(n, h, wd, c)
    if m > 1:
        xz = np.repeat(xz, m, axis=3)
    view, oh, ow = _windows(xz, (kh, kw), list(strides), list(dilations), list(pads))
    wi = w.reshape(kh, kw, co).astype(np.int64)
    acc = np.zeros((n, oh, ow, co), np.int64)
    for i in range(kh):
        for j in range(kw):
            acc += view[:, :, :, i, j, :] * wi[i, j]
    ws = _per_channel(w_scale, co)
    y = acc.astype(F32) * (ws * xs[:, None]).astype(F32)[:, None, None, :]
    if bias is not None:
        y = y + bias.astype(F32, copy=False)
    return np.ascontiguousarray(y, dtype=F32)


@kernel("TFLiteHybridFullyConnected", domain=D)
def hybrid_fully_connected(
    x: np.ndarray,
    w: np.ndarray,
    w_scale: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    asymmetric: int = 0,
    keep_num_dims: int = 0,
) -> np.ndarray:
    """modelloader TFLiteHybridFullyConnected: TFLite hybrid FULLY_CONNECTED (x float32 with
    K = w.shape[1] trailing elements per row, w [units, K] int8).

    Each row is quantized (asymmetric or symmetric); ``y = bias + acc * (x_scale[row] *
    w_scale[unit])`` with one or per-unit weight scales. Output [rows, units], or
    x's leading dims + [units] with keep_num_dims.
    """
    units, k = w.shape
    rows = x.reshape(-1, k)
    q, xs, zp = _quantize(rows, bool(asymmetric))
    acc = (q - zp[:, None]).astype(np.float64) @ w.astype(np.float64).T  # exact integers
    ws = _per_channel(w_scale, units)
    scale = (xs[:, None] * ws[None, :]).astype(F32)
    y = acc.astype(F32) * scale
    if bias is not None:
        y = bias.astype(F32, copy=False) + y
    shape = (*x.shape[:-1], units) if keep_num_dims else (rows.shape[0], units)
    return np.ascontiguousarray(y.reshape(shape), dtype=F32)
