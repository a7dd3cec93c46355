"""The fast 8-bit kernels (kernels/cpu/qconv_fast.py) are bit-identical to the generic ones."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

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
        assert registry.lookup("MatMulInteger", "", np.dtype(dt)) is fast.matmul_integer_fast
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
    ((1, 6, 11, 9), (6, 3, 3), 6, (2, 2), None, (2, 2), "SAME_UPPER"),  # dw dilated, strided
    ((1, 5, 9, 10), (10, 5, 5), 5, (1, 2), (2, 1, 2, 3), (1, 1), "NOTSET"),  # dw 5x5, uneven
    ((1, 8, 10, 10), (4, 3, 3), 2, (1, 1), (0, 0, 0, 0), (2, 2), "NOTSET"),  # grouped, dilated
    ((1, 16, 7, 7), (10, 1, 1), 1, (1, 1), (0, 0, 0, 0), (1, 1), "NOTSET"),  # pointwise
    ((2, 16, 8, 9), (10, 1, 1), 1, (2, 2), (0, 0, 0, 0), (1, 1), "NOTSET"),  # strided 1x1
    ((1, 3, 23, 23), (5, 7, 7), 1, (2, 2), (3, 3, 3, 3), (1, 1), "NOTSET"),
    ((1, 5, 9, 8), (4, 3, 2), 1, (2, 1), None, (1, 1), "SAME_UPPER"),
    ((1, 5, 9, 8), (4, 3, 3), 1, (2, 2), None, (1, 1), "SAME_LOWER"),
    ((1, 5, 9, 8), (4, 3, 3), 1, (1, 1), None, (1, 1), "VALID"),
    ((1, 600, 5, 5), (16, 3, 3), 1, (1, 1), (1, 1, 1, 1), (1, 1), "NOTSET"),  # K = 5400: chunks
    ((1, 256, 6, 6), (32, 3, 3), 2, (1, 1), (1, 1, 1, 1), (1, 1), "NOTSET"),  # chunks x groups
    ((1, 4, 5, 40), (6, 3, 3), 1, (1, 1), (2, 2, 2, 2), (2, 2), "NOTSET"),  # dilated, flat taps
    ((2, 4, 9, 60), (5, 3, 3), 1, (2, 2), (2, 2, 2, 1), (2, 2), "NOTSET"),  # + phases, batch 2
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("xdt,wdt", [(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_qlinear_conv_bit_exact(case, xdt, wdt, per_channel, bias, path: str):
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


@pytest.mark.parametrize(
    "adt,bdt,shape_a,k,n",
    [
        (np.uint8, np.int8, (1, 128, 768), 768, 40),  # dynamic quantization's projection
        (np.uint8, np.int8, (3, 3072), 3072, 9),  # chunked K
        (np.int8, np.uint8, (2, 5, 33), 33, 7),
        (np.uint8, np.uint8, (1, 1), 1, 1),
    ],
)
@pytest.mark.parametrize("zps", ["none", "scalar", "per_column"])
def test_matmul_integer_bit_exact(adt, bdt, shape_a, k, n, zps):
    rng = np.random.default_rng(k + n)
    a, b = _q(rng, shape_a, adt), _q(rng, (k, n), bdt)
    az = None if zps == "none" else _zp(rng, adt)
    bz = {"none": None, "scalar": _zp(rng, bdt), "per_column": _zp(rng, bdt, n)}[zps]
    want = ggemm.matmul_integer(a, b, az, bz)
    for _ in range(2):  # the second call reuses the prepared weight chunks
        got = fast.matmul_integer_fast(a, b, az, bz)
        assert got.dtype == np.int32 and got.shape == want.shape
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


# multipliers whose products land on (or next to) half-integers: float32(0.1) * 5 rounds to 0.5
# exactly in float32 although it is above 0.5, powers of two give exact ties, the others mix
TIE_MULTS = [0.1, 0.3, 0.7, 1 / 3, 0.5, 0.25, 1.5, 0.05, 2.0**-9, 3e-3, 0.0123, 7.0001]


@pytest.mark.parametrize("zp,dt", [(0, np.uint8), (128, np.uint8), (255, np.uint8), (-3, np.int8)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_float32_requantization_matches_float64_on_ties(zp, dt, with_bias, path: str):
    # every accumulator value whose product is in (or near) the output range, per channel
    mult = np.asarray(TIE_MULTS, np.float32)
    span = int(np.ceil(300 / mult.min())) + 2
    v = np.arange(-span, span, dtype=np.int64)
    v = np.concatenate([v, [2**24 - 1, -(2**24) + 1, 2**24 - 7]])
    ln = v.size
    acc = np.broadcast_to(v, (mult.size, ln)).astype(np.int64)
    bias = None
    if with_bias:
        bias = np.arange(mult.size, dtype=np.int64) * 3 - 20
        acc = acc - bias[:, None]  # acc + bias still covers every v
        acc = np.clip(acc, -(2**24) + 30, 2**24 - 30)
    want = gconv.requantize(
        acc + (0 if bias is None else bias[:, None]), mult.reshape(-1, 1), np.asarray(zp, dt), dt
    )
    for wide in (False, True):  # as-is and as a cropped (extended-row) view
        buf = np.zeros((1, mult.size, 2, ln + 3 * wide), np.float32)
        buf[0, :, 1, :ln] = acc
        a4 = buf[:, :, 1:]
        out = np.empty((1, mult.size, 1, ln), dt)
        b64 = None if bias is None else bias.astype(np.float64)
        req = fast._Req.make(True, mult, b64, zp, (np.iinfo(dt).min, np.iinfo(dt).max), mult.size)
        assert req.f32
        fast._requant(a4, ln, req, out)
        np.testing.assert_array_equal(out.reshape(mult.size, ln), want)


@pytest.mark.parametrize("mult", [0.1, 0.3, 0.5, 1 / 3, 0.05])
@pytest.mark.parametrize("k", [1, 3])
def test_qlinear_conv_ties_end_to_end(mult, k, path: str):
    # small weights and x_scale * w_scale / y_scale == float32(mult): many results near .5
    rng = np.random.default_rng(int(mult * 1000) + k)
    x = rng.integers(0, 12, (1, 5, 9, 9)).astype(np.uint8)
    w = rng.integers(-3, 4, (6, 5, k, k)).astype(np.int8)
    ws = np.full(6, mult, np.float32)
    ws[::2] = np.float32(mult) * 2
    b = rng.integers(-9, 9, 6).astype(np.int32)
    for yz in (np.uint8(0), np.uint8(100), np.int8(-5)):
        args = (x, np.float32(1.0), np.uint8(2), w, ws, np.int8(0), np.float32(1.0), yz, b)
        kw_ = dict(pads=[k // 2] * 4)
        want = gconv.qlinear_conv(*args, **kw_)
        np.testing.assert_array_equal(fast.qlinear_conv_fast(*args, **kw_), want)
        np.testing.assert_array_equal(
            fast.qlinear_conv_clip(*args, act_min=int(yz) + 1, act_max=120, **kw_),
            np.clip(want, max(int(yz) + 1, np.iinfo(want.dtype).min), 120).astype(want.dtype),
        )


def _conv_add_reference(args, add, act, kw_):
    y = gconv.qlinear_conv(*args, **kw_)
    c = gql.qlinear_add(y, *add)
    if act is not None:
        c = np.clip(c, *act).astype(c.dtype)
    return c


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("xdt,wdt", [(np.uint8, np.int8), (np.int8, np.int8)])
def test_qlinear_conv_add_and_clip_bit_exact(case, xdt, wdt, path: str):
    xs, (m, kh, kw), group, s, p, d, auto_pad = case
    rng = np.random.default_rng(hash((xs, m, kh, group, 7)) % 2**32)
    x = _q(rng, xs, xdt)
    w = _q(rng, (m, xs[1] // group, kh, kw), wdt)
    ws = (rng.random(m) * 0.02 + 1e-3).astype(np.float32)
    yz = _zp(rng, xdt)
    args = (x, np.float32(0.03), _zp(rng, xdt), w, ws, _zp(rng, wdt, m), np.float32(0.6), yz,
            rng.integers(-20000, 20000, m).astype(np.int32))  # fmt: skip
    kw_ = dict(group=group, strides=list(s), dilations=list(d), auto_pad=auto_pad)
    if p is not None:
        kw_["pads"] = list(p)
    y = gconv.qlinear_conv(*args, **kw_)
    hi = int(np.iinfo(xdt).max) - 5
    lo = min(int(yz) + 3, hi - 1)
    np.testing.assert_array_equal(
        fast.qlinear_conv_clip(*args, act_min=lo, act_max=hi, **kw_),
        np.clip(y, lo, hi).astype(y.dtype),
    )
    for cdt, act in ((xdt, None), (np.uint8, (7, 250)), (np.int8, (-128, 100))):
        z = _q(rng, y.shape, xdt)
        add = (np.float32(0.6), yz, z, np.float32(rng.random() + 0.1), _zp(rng, xdt),
               np.float32(rng.random() + 0.3), _zp(rng, cdt))  # fmt: skip
        want = _conv_add_reference(args, add, act, kw_)
        a_kw = {} if act is None else dict(act_min=act[0], act_max=act[1])
        for _ in range(2):
            got = fast.qlinear_conv_add(*args, *add, **kw_, **a_kw)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want)
    # the add's own scale/zero point for Y may differ from the conv's; z may broadcast
    add = (np.float32(0.5), _zp(rng, xdt), _q(rng, (1, y.shape[1], 1, 1), xdt), np.float32(0.2),
           _zp(rng, xdt), np.float32(0.7), _zp(rng, np.uint8))  # fmt: skip
    np.testing.assert_array_equal(
        fast.qlinear_conv_add(*args, *add, **kw_), _conv_add_reference(args, add, None, kw_)
    )


def _residual_model() -> onnx.ModelProto:
    """conv-relu-conv + identity shortcut, Add, Relu; then a conv + projection shortcut."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []

    def conv(x, cin, cout, k, name, relu):
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits.extend(
            [numpy_helper.from_array(w, name + "w"), numpy_helper.from_array(b, name + "b")]
        )
        nodes.append(
            helper.make_node("Conv", [x, name + "w", name + "b"], [name], pads=[k // 2] * 4)
        )
        if relu:
            nodes.append(helper.make_node("Relu", [name], [name + "r"]))
            return name + "r"
        return name

    x = conv("x", 3, 8, 3, "c0", True)
    y = conv(conv(x, 8, 8, 3, "c1", True), 8, 8, 3, "c2", False)
    nodes += [helper.make_node("Add", [x, y], ["a1"]), helper.make_node("Relu", ["a1"], ["r1"])]
    y = conv(conv("r1", 8, 16, 1, "c3", True), 16, 16, 3, "c4", False)
    sc = conv("r1", 8, 16, 1, "c5", False)
    nodes += [helper.make_node("Add", [sc, y], ["a2"]), helper.make_node("Relu", ["a2"], ["out"])]
    g = helper.make_graph(
        nodes, "res", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)], inits,
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_qpasses_fuses_residual_adds_exactly(tmp_path, monkeypatch):
    import modelloader
    from modelloader import qpasses
    from modelloader.api import op_histogram
    from modelloader.quantize import QuantConfig, quantize

    src = tmp_path / "res.onnx"
    onnx.save(_residual_model(), str(src))
    rng = np.random.default_rng(1)
    calib = [{"x": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(4)]
    qp = tmp_path / "res.int8.onnx"
    quantize(src, QuantConfig(eval_split=0.0, layer_report_samples=1), calib).save(qp)
    fused = modelloader.load(qp)
    hist = op_histogram(fused.graph)
    assert hist["modelloader:QLinearConvAdd"] == 2 and "com.microsoft:QLinearAdd" not in hist
    assert hist["modelloader:QLinearConvClip"] == 3
    monkeypatch.setattr(qpasses, "_fuse_conv_tails", lambda g: False)
    plain = modelloader.load(qp)
    assert "com.microsoft:QLinearAdd" in op_histogram(plain.graph)
    for x in calib:
        want = plain.predict(x)["out"]
        np.testing.assert_array_equal(fused.predict(x)["out"], want)
