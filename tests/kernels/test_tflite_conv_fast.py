"""TFLiteConv (generic and prepared: cached weights, in-place int32 requantization) against
a plain reference."""

from __future__ import annotations

import numpy as np
import pytest

from modelloader.kernels.cpu.qlinear import _finish, _prepare_tflite_conv, tflite_conv


def _reference(x, w, bias, x_zp, w_zp, mult, y_zp, act, stride, pads, group):
    """int64 conv by explicit taps, then the generic (int64) requantization."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.zeros((n, c, h + pads[0] + pads[2], wd + pads[1] + pads[3]), np.int64)
    xp[:, :, pads[0] : pads[0] + h, pads[1] : pads[1] + wd] = x.astype(np.int64) - x_zp
    oh = (xp.shape[2] - kh) // stride + 1
    ow = (xp.shape[3] - kw) // stride + 1
    wi = w.astype(np.int64) - np.asarray(w_zp, np.int64).reshape(-1, 1, 1, 1)
    acc = np.zeros((n, m, oh, ow), np.int64)
    mg = m // group
    for o in range(m):
        g = o // mg
        for i in range(kh):
            for j in range(kw):
                win = xp[
                    :,
                    g * cg : (g + 1) * cg,
                    i : i + stride * oh : stride,
                    j : j + stride * ow : stride,
                ]
                acc[:, o] += np.einsum("nchw,c->nhw", win, wi[o, :, i, j])
    if bias is not None:
        acc += bias.astype(np.int64).reshape(1, m, 1, 1)
    return _finish(acc, mult, y_zp, act[0], act[1], x.dtype, 1)


@pytest.mark.parametrize("left", [False, True])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("depthwise", [False, True])
def test_matches_reference(seed: int, depthwise: bool, left: bool, path: str) -> None:
    rng = np.random.default_rng(seed)
    c = 6
    m, group = (c, c) if depthwise else (5, 1)
    k = 3 if seed % 2 else 1
    stride = 1 + seed % 3 // 2
    pads = [1, 1, 1, 1] if k == 3 and seed % 3 else [0, 0, 0, 0]
    x = rng.integers(-128, 128, (1, c, 7, 9), dtype=np.int8)
    w = rng.integers(-127, 128, (m, c // group, k, k), dtype=np.int8)
    bias = None if seed == 4 else rng.integers(-(1 << 16), 1 << 16, m).astype(np.int32)
    # output zero points that fold into the rounding offset, and a bias-free conv
    y_zp = [3, -128, 0, 127, -5, 100][seed]
    x_zp = int(rng.integers(-20, 20))
    # per-channel scales spanning multipliers above and below 0.5 (right shift 0 and > 0)
    w_scale = list(rng.uniform(0.2, 3.0, m) * 10.0 ** rng.integers(-3, 0, m))
    x_scale, y_scale = 0.02, 0.05
    if left:  # multipliers from 0.5 to 6: QuantizeMultiplier left shifts up to 3
        w_scale = list(rng.uniform(0.5, 6.0, m) * y_scale / x_scale)
        w_scale[0] = 0.4 * y_scale / x_scale  # and one right-shifted channel
    act = (-128 + seed, 127 - 2 * seed)
    got = tflite_conv(
        x, w, bias, x_scale=x_scale, w_scale=w_scale, y_scale=y_scale, x_zp=x_zp, y_zp=y_zp,
        strides=[stride, stride], pads=pads, group=group, act_min=act[0], act_max=act[1],
    )  # fmt: skip
    mult = x_scale * np.asarray(w_scale) / y_scale
    want = _reference(x, w, bias, x_zp, [0] * m, mult, y_zp, act, stride, pads, group)
    np.testing.assert_array_equal(got, want)
    # the node's prepared kernel (weights and multipliers built once) gives the same result,
    # on its first call and its second
    attrs = dict(
        x_scale=x_scale, w_scale=w_scale, y_scale=y_scale, x_zp=x_zp, y_zp=y_zp,
        strides=[stride, stride], pads=pads, group=group, act_min=act[0], act_max=act[1],
    )  # fmt: skip
    prepared = _prepare_tflite_conv((None, w, bias), **attrs)
    for _ in range(2):
        np.testing.assert_array_equal(prepared(x, w, bias), want)
