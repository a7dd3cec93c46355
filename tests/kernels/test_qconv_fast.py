"""The fast 8-bit kernels (kernels/cpu/qconv_fast.py) are bit-identical to the generic ones."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from modelloader.kernels.cpu import conv as gconv
from modelloader.kernels.cpu import gemm as ggemm
from modelloader.kernels.cpu import qconv_fast as fast
from modelloader.kernels.cpu import qlinear as gql
from modelloader.kernels.cpu._registry import registry


def _q(rng, shape, dt):
    info = np.iinfo(dt)
    return rng.integers(info.min, int(info.max) + 1, size=shape).astype(dt)


def _zp(rng, dt, size=None):
    info = np.iinfo(dt)
    return rng.integers(info.min, int(info.max) + 1, size=size).astype(dt)


def test_registered_for_8bit():
    for dt in (np.uint8, np.int8):
        assert registry.lookup("QLinearConv", "", np.dtype(dt)) is fast.qlinear_conv_fast
        assert registry.lookup("QLinearMatMul", "", np.dtype(dt)) is fast.qlinear_matmul_fast
        assert registry.lookup("QGemm", "com.microsoft", np.dtype(dt)) is fast.qgemm_fast
        assert (
            registry.lookup("QLinearConv", "com.microsoft", np.dtype(dt))
            is fast.qlinear_conv_ms_fast
        )


# (N, C, H, W), (M, kh, kw), group, strides, pads, dilations, auto_pad
CONV_CASES = [
    ((1, 3, 17, 19), (8, 3, 3), 1, (1, 1), (1, 1, 1, 1), (1, 1), "NOTSET"),
    ((2, 4, 12, 11), (6, 3, 3), 1, (2, 2), (1, 0, 2, 1), (1, 1), "NOTSET"),
    ((1, 8, 9, 9), (8, 3, 3), 8, (1, 1), (1, 1, 1, 1), (1, 1), "NOTSET"),  # depthwise
    ((2, 6, 10, 10), (12, 3, 3), 6, (2, 1), (1, 1, 1, 1), (1, 1), "NOTSET"),  # dw multiplier 2
    ((1, 8, 10, 10), (4, 3, 3), 2, (1, 1), (0, 0, 0, 0), (2, 2), "NOTSET"),  # grouped, dilated
    ((1, 16, 7, 7), (10, 1, 1), 1, (1, 1), (0, 0, 0, 0), (1, 1), "NOTSET"),  # pointwise
    ((2, 16, 8, 9), (10, 1, 1), 1, (2, 2), (0, 0, 0, 0), (1, 1), "NOTSET"),  # strided 1x1
    ((1, 3, 23, 23), (5, 7, 7), 1, (2, 2), (3, 3, 3, 3), (1, 1), "NOTSET"),
    ((1, 5, 9, 8), (4, 3, 2), 1, (2, 1), None, (1, 1), "SAME_UPPER"),
    ((1, 5, 9, 8), (4, 3, 3), 1, (2, 2), None, (1, 1), "SAME_LOWER"),
    ((1, 5, 9, 8), (4, 3, 3), 1, (1, 1), None, (1, 1), "VALID"),
    ((1, 600, 5, 5), (16, 3, 3), 1, (1, 1), (1, 1, 1, 1), (1, 1), "NOTSET"),  # K = 5400: chunks
    ((1, 256, 6, 6), (32, 3, 3), 2, (1, 1), (1, 1, 1, 1), (1, 1), "NOTSET"),  # chunks x groups
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("xdt,wdt", [(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_qlinear_conv_bit_exact(case, xdt, wdt, per_channel, bias):
    xs, (m, kh, kw), group, s, p, d, auto_pad = case
    rng = np.random.default_rng(hash((xs, m, kh, group, per_channel, bias)) % 2**32)
    x = _q(rng, xs, xdt)
    w = _q(rng, (m, xs[1] // group, kh, kw), wdt)
    wz = _zp(rng, wdt, m if per_channel else None)
    ws = (rng.random(m if per_channel else ()) * 0.02 + 1e-3).astype(np.float32)
    b = rng.integers(-20000, 20000, m).astype(np.int32) if bias else None
    args = (
        x, np.float32(0.03), _zp(rng, xdt), w, ws, wz, np.float32(rng.random() + 0.05),
        _zp(rng, np.uint8 if rng.random() < 0.5 else np.int8), b,
    )  # fmt: skip
    kw_ = dict(group=group, strides=list(s), dilations=list(d), auto_pad=auto_pad)
    if p is not None:
        kw_["pads"] = list(p)
    want = gconv.qlinear_conv(*args, **kw_)
    for _ in range(2):  # second call: cached weights, kept buffers
        got = fast.qlinear_conv_fast(*args, **kw_)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_qlinear_conv_realistic_weights_and_ms_channels_last():
    rng = np.random.default_rng(5)
    for cin, k in ((64, 3), (512, 3), (256, 1)):
        x = rng.integers(0, 256, (1, cin, 7, 7)).astype(np.uint8)
        w = np.clip(np.rint(rng.standard_normal((32, cin, k, k)) * 35) + 128, 0, 255)
        w = w.astype(np.uint8)
        args = (
            x, np.float32(0.02), np.uint8(0), w, np.full(32, 0.004, np.float32),
            np.full(32, 128, np.uint8), np.float32(0.05), np.uint8(0),
            rng.integers(-5000, 5000, 32).astype(np.int32),
        )  # fmt: skip
        kw_ = dict(pads=[k // 2] * 4)
        np.testing.assert_array_equal(
            fast.qlinear_conv_fast(*args, **kw_), gconv.qlinear_conv(*args, **kw_)
        )
        xl = np.ascontiguousarray(np.moveaxis(x, 1, -1))
        argsl = (xl,) + args[1:]
        np.testing.assert_array_equal(
            fast.qlinear_conv_ms_fast(*argsl, channels_last=1, **kw_),
            gql.qlinear_conv_ms(*argsl, channels_last=1, **kw_),
        )


def test_qlinear_conv_falls_back():
    # 1-D conv and an input zero point at the extremes: handled (or delegated) exactly
    rng = np.random.default_rng(3)
    x = _q(rng, (1, 4, 20), np.uint8)
    w = _q(rng, (3, 4, 3), np.int8)
    args = (x, np.float32(0.1), np.uint8(255), w, np.float32(0.01), np.int8(0),
            np.float32(0.2), np.uint8(7))  # fmt: skip
    np.testing.assert_array_equal(
        fast.qlinear_conv_fast(*args, pads=[1, 1]), gconv.qlinear_conv(*args, pads=[1, 1])
    )


@pytest.mark.parametrize(
    "adt,bdt,shape_a,k,n",
    [
        (np.uint8, np.int8, (5, 33), 33, 7),
        (np.int8, np.int8, (2, 3, 64), 64, 10),
        (np.uint8, np.uint8, (4, 3000), 3000, 9),  # chunked K
        (np.int8, np.uint8, (1, 1), 1, 1),
    ],
)
@pytest.mark.parametrize("per_col", [False, True])
def test_qlinear_matmul_bit_exact(adt, bdt, shape_a, k, n, per_col):
    rng = np.random.default_rng(k * n + per_col)
    a, b = _q(rng, shape_a, adt), _q(rng, (k, n), bdt)
    bs = (rng.random(n if per_col else ()) * 0.01 + 1e-4).astype(np.float32)
    bz = _zp(rng, bdt, n if per_col else None)
    for yz in (_zp(rng, np.uint8), _zp(rng, np.int8)):
        args = (a, np.float32(0.02), _zp(rng, adt), b, bs, bz, np.float32(0.3), yz)
        want = ggemm.qlinear_matmul(*args)
        for _ in range(2):
            got = fast.qlinear_matmul_fast(*args)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("adt,bdt", [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8)])
@pytest.mark.parametrize("trans", list(itertools.product([0, 1], [0, 1])))
@pytest.mark.parametrize("k", [17, 2500])
def test_qgemm_bit_exact(adt, bdt, trans, k):
    ta, tb = trans
    rng = np.random.default_rng(k + 2 * ta + tb)
    m, n = 6, 11
    a = _q(rng, (k, m) if ta else (m, k), adt)
    b = _q(rng, (n, k) if tb else (k, n), bdt)
    for per_col, with_c, with_y in itertools.product([False, True], repeat=3):
        bs = (rng.random(n if per_col else 1) * 0.01 + 1e-4).astype(np.float32)
        bz = _zp(rng, bdt, n if per_col else 1)
        c = rng.integers(-30000, 30000, n).astype(np.int32) if with_c else None
        ys, yz = (np.float32(0.7), _zp(rng, np.uint8)) if with_y else (None, None)
        args = (a, np.float32(0.05), _zp(rng, adt), b, bs, bz, c, ys, yz)
        kw = dict(alpha=0.5, transA=ta, transB=tb)
        want = gql.qgemm(*args, **kw)
        got = fast.qgemm_fast(*args, **kw)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)


def test_chunk_plan_is_exact_bound():
    # every chunk's worst-case partial sum stays within float32's exact integers
    rng = np.random.default_rng(0)
    wi = rng.integers(-128, 128, (20, 9000)).astype(np.int64)
    chunks = fast._chunks(wi, 255, 0)
    assert chunks[0][0] == 0 and chunks[-1][1] == 9000 and len(chunks) > 1
    for k0, k1 in chunks:
        part = wi[:, k0:k1]
        assert 255 * np.maximum(part, 0).sum(1).max() < 2**24
        assert 255 * np.maximum(-part, 0).sum(1).max() < 2**24
