"""Quantized kernels: com.microsoft QOperator contrib ops against onnxruntime, and the
modelloader TFLite kernels against hand-computed TFLite fixed-point arithmetic."""

from __future__ import annotations

import zlib

import numpy as np
import onnxruntime as ort
import pytest
from onnx import ValueInfoProto, helper, numpy_helper

import modelloader
from modelloader.kernels.cpu import qlinear as q

RNG = np.random.default_rng(0)
I8, U8 = np.int8, np.uint8


@pytest.fixture(autouse=True)
def _data_of_this_test(request: pytest.FixtureRequest) -> None:
    """Each test draws its data from a generator seeded by its own id, so its inputs do not
    depend on which tests an xdist worker ran before it."""
    global RNG
    RNG = np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def _rand(shape, dt) -> np.ndarray:
    info = np.iinfo(dt)
    return RNG.integers(info.min, info.max + 1, size=shape).astype(dt)


def _sc(v: float) -> np.ndarray:
    return np.asarray(v, np.float32)


def _run_both(op: str, inputs: list, attrs: dict, runtime_inputs: int = 1):
    """Runs a single com.microsoft node in onnxruntime and in modelloader (through the ONNX
    importer). ``inputs`` are arrays or None (omitted); the first ``runtime_inputs`` are graph
    inputs, the rest initializers."""
    names, feeds, graph_inputs, inits = [], {}, [], []
    for i, v in enumerate(inputs):
        if v is None:
            names.append("")
            continue
        name = f"i{i}"
        names.append(name)
        if i < runtime_inputs:
            feeds[name] = v
            tp = helper.np_dtype_to_tensor_dtype(v.dtype)
            graph_inputs.append(helper.make_tensor_value_info(name, tp, v.shape))
        else:
            inits.append(numpy_helper.from_array(np.asarray(v), name))
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(op, names, ["y"], domain="com.microsoft", **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        graph_inputs,
        [ValueInfoProto(name="y")],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
        ir_version=10,
    )
    data = model.SerializeToString()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(data, so, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = modelloader.load(data).predict(feeds)["y"]
    return got, want


def _check(got: np.ndarray, want: np.ndarray, tol: int = 1, exact_frac: float = 0.99) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    d = np.abs(got.astype(np.int64) - want.astype(np.int64)) if got.dtype.kind in "iu" else None
    if d is None:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
        return
    assert d.max(initial=0) <= tol
    assert (d == 0).mean() >= exact_frac


# --------------------------------------------------------------------------- onnxruntime ops


@pytest.mark.parametrize("op", ["QLinearAdd", "QLinearMul"])
@pytest.mark.parametrize("dt", [I8, U8])
@pytest.mark.parametrize(
    "shapes", [((2, 3, 4, 5), (2, 3, 4, 5)), ((2, 3, 4, 5), (3, 1, 1)), ((4,), ())]
)
def test_binary(op, dt, shapes) -> None:
    a, b = _rand(shapes[0], dt), _rand(shapes[1], dt)
    zp = lambda v: np.asarray(v, dt)  # noqa: E731
    s = (0.05, 0.03, 0.11) if op == "QLinearAdd" else (0.05, 0.03, 0.7)
    ins = [a, _sc(s[0]), zp(3), b, _sc(s[1]), zp(-7 if dt == I8 else 140), _sc(s[2]), zp(5)]
    got, want = _run_both(op, ins, {}, runtime_inputs=1)
    _check(got, want)


@pytest.mark.parametrize("dt", [I8, U8])
@pytest.mark.parametrize("op,attrs", [("QLinearSigmoid", {}), ("QLinearLeakyRelu", {"alpha": 0.1})])
def test_lookup_ops(dt, op, attrs) -> None:
    x = np.arange(256, dtype=np.uint8).view(dt).reshape(4, 64)
    yzp = np.asarray(-128 if dt == I8 else 0, dt) if op == "QLinearSigmoid" else np.asarray(10, dt)
    ys = 1 / 256 if op == "QLinearSigmoid" else 0.04
    ins = [x, _sc(0.07), np.asarray(4, dt), _sc(ys), yzp]
    got, want = _run_both(op, ins, attrs)
    _check(got, want, exact_frac=0.98)


@pytest.mark.parametrize("dt", [I8, U8])
@pytest.mark.parametrize(
    "opset,axis,shape", [(13, -1, (3, 5, 10)), (13, 1, (2, 6, 4)), (12, 1, (2, 3, 4))]
)
def test_softmax(dt, opset, axis, shape) -> None:
    x = _rand(shape, dt)
    yzp = np.asarray(-128 if dt == I8 else 0, dt)
    ins = [x, _sc(0.1), np.asarray(2, dt), _sc(1 / 256), yzp]
    got, want = _run_both("QLinearSoftmax", ins, {"opset": opset, "axis": axis})
    _check(got, want, exact_frac=0.97)


@pytest.mark.parametrize("dt", [I8, U8])
@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("shape", [(2, 5, 7, 6), (1, 3, 9)])
def test_global_average_pool(dt, channels_last, shape) -> None:
    x = _rand(shape, dt)
    ins = [x, _sc(0.05), np.asarray(3, dt), _sc(0.02), np.asarray(-2 if dt == I8 else 128, dt)]
    got, want = _run_both("QLinearGlobalAveragePool", ins, {"channels_last": channels_last})
    _check(got, want, tol=0)


POOL = [
    dict(kernel_shape=[3, 3]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
    dict(kernel_shape=[2, 3], strides=[2, 1], ceil_mode=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
]


@pytest.mark.parametrize("dt", [I8, U8])
@pytest.mark.parametrize("channels_last", [0, 1])
@pytest.mark.parametrize("attrs", POOL)
def test_average_pool(dt, channels_last, attrs) -> None:
    x = _rand((2, 4, 9, 8) if not channels_last else (2, 9, 8, 4), dt)
    ins = [x, _sc(0.05), np.asarray(3, dt), _sc(0.03), np.asarray(-2 if dt == I8 else 120, dt)]
    got, want = _run_both("QLinearAveragePool", ins, {**attrs, "channels_last": channels_last})
    _check(got, want)


def test_average_pool_1d() -> None:
    x = _rand((2, 3, 11), U8)
    ins = [x, _sc(0.05), np.asarray(3, U8), _sc(0.03), np.asarray(100, U8)]
    got, want = _run_both("QLinearAveragePool", ins, {"kernel_shape": [3], "pads": [1, 1]})
    _check(got, want)


@pytest.mark.parametrize("dt", [I8, U8])
def test_concat(dt) -> None:
    a, b, c = _rand((2, 3, 4), dt), _rand((2, 5, 4), dt), _rand((2, 1, 4), dt)
    yz = np.asarray(1, dt)
    ins = [_sc(0.05), yz, a, _sc(0.07), np.asarray(4, dt), b, _sc(0.05), yz, c, _sc(0.02),
           np.asarray(0, dt)]  # fmt: skip
    # QLinearConcat's first input is Y_scale: feed the tensors as initializers
    got, want = _run_both("QLinearConcat", ins, {"axis": 1}, runtime_inputs=0)
    _check(got, want, tol=0)


@pytest.mark.parametrize("dt", [I8, U8])
@pytest.mark.parametrize("keepdims,axes", [(1, [2, 3]), (0, [1]), (1, [-1])])
def test_reduce_mean(dt, keepdims, axes) -> None:
    # onnxruntime 1.31 registers no CPU kernel for QLinearReduceMean: compare with the real mean
    x = _rand((2, 3, 4, 5), dt)
    ins = [x, _sc(0.05), np.asarray(3, dt), _sc(0.02), np.asarray(7, dt)]
    got = q.qlinear_reduce_mean(*ins, axes=axes, keepdims=keepdims)
    mean = (x.astype(np.float64) - 3).mean(axis=tuple(axes), keepdims=bool(keepdims))
    info = np.iinfo(dt)
    want = np.clip(np.round(mean * 0.05 / 0.02) + 7, info.min, info.max)
    assert got.dtype == dt and got.shape == want.shape
    assert np.abs(got - want).max() <= 1


@pytest.mark.parametrize("adt,bdt", [(U8, U8), (U8, I8), (I8, I8)])
@pytest.mark.parametrize("per_col", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("out", ["q", "float"])
@pytest.mark.parametrize("trans", [(0, 0), (1, 1)])
def test_qgemm(adt, bdt, per_col, bias, out, trans) -> None:
    m, k, n = 5, 37, 6
    a = _rand((k, m) if trans[0] else (m, k), adt)
    b = _rand((n, k) if trans[1] else (k, n), bdt)
    if (adt, bdt) == (U8, I8):
        # onnxruntime's x86 u8s8 kernel (vpmaddubsw) saturates pairwise int16 sums; quantizers
        # use 7-bit weights (reduce_range) there. We compute the exact sum.
        b = (b // 2).astype(I8)
    bs = RNG.uniform(0.01, 0.03, n if per_col else ()).astype(np.float32)
    bz = np.zeros(n if per_col else (), bdt) + (3 if bdt == U8 else 0)
    c = RNG.integers(-3000, 3000, n).astype(np.int32) if bias else None
    ins = [a, _sc(0.04), np.asarray(7, adt), b, bs, bz, c]
    if out == "q":
        ins += [_sc(0.9), np.asarray(-3 if adt == I8 else 128, adt)]
    attrs = {"transA": trans[0], "transB": trans[1], "alpha": 1.5}
    got, want = _run_both("QGemm", ins, attrs)
    _check(got, want)


@pytest.mark.parametrize("dt", [I8, U8])
def test_qlinear_conv_channels_last(dt) -> None:
    x = _rand((1, 7, 6, 4), dt)
    w = _rand((6, 2, 3, 3), I8 if dt == I8 else U8)
    b = RNG.integers(-500, 500, 6).astype(np.int32)
    wz = np.asarray(0 if dt == I8 else 120, w.dtype)
    ins = [x, _sc(0.05), np.asarray(3, dt), w, _sc(0.01), wz, _sc(0.2), np.asarray(5, dt), b]
    attrs = {"channels_last": 1, "group": 2, "pads": [1, 1, 1, 1], "strides": [2, 1]}
    got, want = _run_both("QLinearConv", ins, attrs)
    _check(got, want)


# --------------------------------------------------------------------------- helpers


def test_requantize_rounds_half_even_and_saturates() -> None:
    acc = np.array([[5, 15, -5, 1000], [25, 35, -25, -1000]], np.int32)
    y = q.requantize(acc, np.array([0.1, 0.1, 0.1, 0.1]), 0, np.int8)
    assert y.tolist() == [[0, 2, 0, 100], [2, 4, -2, -100]]
    y = q.requantize(acc, np.array([0.1, 1.0]), np.array([0, 100]), np.uint8, axis=0)
    assert y.tolist() == [[0, 2, 0, 100], [125, 135, 75, 0]]


def test_int_matmul_exact_in_both_precisions() -> None:
    a = _rand((3, 2000), I8).astype(np.int32)
    b = _rand((2000, 4), I8).astype(np.int32)
    want = a.astype(np.int64) @ b.astype(np.int64)
    assert (q.int_matmul(a, b) == want).all()  # float64 path (K*128*128 >= 2**24)
    assert (q.int_matmul(a[:, :500], b[:500]) == a[:, :500].astype(np.int64) @ b[:500]).all()


# --------------------------------------------------------------------------- TFLite arithmetic


def _ref_quantize_multiplier(real: float) -> tuple[int, int]:
    """Scalar transcription of tflite::QuantizeMultiplier."""
    if real == 0:
        return 0, 0
    import math

    frac, shift = math.frexp(real)
    qf = int(math.floor(abs(frac * 2**31) + 0.5)) * (1 if frac > 0 else -1)
    if qf == 2**31:
        qf //= 2
        shift += 1
    if shift < -31:
        return 0, 0
    if shift > 30:
        return 2**31 - 1, 30
    return qf, shift


def _ref_mbqm(x: int, m: int, shift: int) -> int:
    """Scalar transcription of tflite::MultiplyByQuantizedMultiplier (int32, double rounding)."""
    left, right = max(shift, 0), max(-shift, 0)
    a = x * (1 << left)
    if a == m == -(2**31):
        hi = 2**31 - 1
    else:
        ab = a * m
        nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
        t = ab + nudge
        hi = int(t / 2**31) if abs(t) < 2**52 else (abs(t) >> 31) * (1 if t >= 0 else -1)
    mask = (1 << right) - 1
    rem = hi & mask
    thr = (mask >> 1) + (1 if hi < 0 else 0)
    return (hi >> right) + (1 if rem > thr else 0)


def test_quantize_multiplier_known_values() -> None:
    # 0.5 -> 2**30 * 2**0; 0.75 -> 0.75 * 2**31, shift 0; 1.0 -> 2**30, shift 1
    mq, sh = q.tflite_quantize_multiplier(np.array([0.5, 0.75, 1.0, 0.0, 3e-12, 0.0003]))
    assert mq[:4].tolist() == [1 << 30, 1610612736, 1 << 30, 0]
    assert sh[:4].tolist() == [0, 0, 1, 0]
    assert (mq[4], sh[4]) == (0, 0)  # shift < -31 flushes to zero
    assert (int(mq[5]), int(sh[5])) == _ref_quantize_multiplier(0.0003)
    # rounding carry: a fraction that rounds up to 2**31 becomes 2**30 with shift + 1
    real = (2**31 - 0.25) / 2**31 * 2.0**-3
    assert _ref_quantize_multiplier(real) == (1 << 30, -2)
    mq, sh = q.tflite_quantize_multiplier(real)
    assert (int(mq), int(sh)) == (1 << 30, -2)


def test_multiply_by_quantized_multiplier_hand_examples() -> None:
    # multiplier 0.5 (2**30, shift 0): SRDHM(x, 2**30) = x/2 rounded
    x = np.array([3, -3, 5, -5, 1, -1, 0])
    y = q.tflite_multiply_by_quantized_multiplier(x, 1 << 30, 0)
    # ties round up (gemmlowp nudge 1 - 2**30 for negative products): 1.5 -> 2, -1.5 -> -1
    assert y.tolist() == [2, -1, 3, -2, 1, 0, 0]
    # multiplier 0.75 * 2**-2 = 0.1875: 100 -> 18.75 -> SRDHM 75 -> RDBPOT(75, 2) = 19
    y = q.tflite_multiply_by_quantized_multiplier(np.array([100, -100, 10]), 1610612736, -2)
    assert y.tolist() == [19, -19, 2]  # 10*0.75 = 7.5 -> 8, / 4 = 2
    # overflow case of SRDHM saturates
    y = q.tflite_multiply_by_quantized_multiplier(np.array([-(2**31)]), -(2**31), 0)
    assert y.tolist() == [2**31 - 1]


def test_multiply_by_quantized_multiplier_random_int32() -> None:
    x = RNG.integers(-(2**31), 2**31, 300)
    real = np.exp(RNG.uniform(np.log(1e-9), np.log(0.99), 300))
    mq, sh = q.tflite_quantize_multiplier(real)
    got = q.tflite_multiply_by_quantized_multiplier(x, mq, sh)
    for i in range(300):
        assert (int(mq[i]), int(sh[i])) == _ref_quantize_multiplier(real[i])
        assert got[i] == _ref_mbqm(int(x[i]), int(mq[i]), int(sh[i])), i


def test_tflite_requantize_matches_scalar_reference() -> None:
    acc = RNG.integers(-(2**20), 2**20, size=(3, 5, 4)).astype(np.int32)
    acc[0, 1, :] = [0, 1, -1, 2**31 - 1]
    real = RNG.uniform(1e-5, 0.9, 5)
    real[0] = 2.5  # > 1: positive shift
    zp = np.array([0, -3, 5, 127, -128])
    got = q.tflite_requantize(acc, real, zp, np.int8, axis=1)
    for i, j, k in np.ndindex(acc.shape):
        mq, sh = _ref_quantize_multiplier(real[j])
        v = _ref_mbqm(int(acc[i, j, k]), mq, sh) + int(zp[j])
        assert got[i, j, k] == min(127, max(-128, v)), (i, j, k)


def test_activation_range() -> None:
    assert q.tflite_activation_range("NONE", 0.1, 3, np.int8) == (-128, 127)
    assert q.tflite_activation_range("RELU", 0.1, -5, np.int8) == (-5, 127)
    assert q.tflite_activation_range("RELU6", 0.05, -128, np.int8) == (-128, -8)
    assert q.tflite_activation_range("RELU_N1_TO_1", 0.01, 0, np.int8) == (-100, 100)


def _ref_tflite_conv(x, w, bias, x_zp, w_zp, mults, y_zp, s, p, g, lo, hi):
    """Direct-loop TFLite conv (int64 accumulators, scalar requantization) over NCHW data."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    xp = np.zeros((n, c, h + p[0] + p[2], wd + p[1] + p[3]), np.int64)
    xp[:, :, p[0] : p[0] + h, p[1] : p[1] + wd] = x.astype(np.int64) - x_zp
    oh = (h + p[0] + p[2] - kh) // s[0] + 1
    ow = (wd + p[1] + p[3] - kw) // s[1] + 1
    y = np.zeros((n, m, oh, ow), np.int64)
    mg = m // g
    for oc in range(m):
        gi = oc // mg
        wf = w[oc].astype(np.int64) - w_zp[oc]
        mq, sh = _ref_quantize_multiplier(mults[oc])
        for i in range(oh):
            for j in range(ow):
                patch = xp[
                    :, gi * cg : (gi + 1) * cg, i * s[0] : i * s[0] + kh, j * s[1] : j * s[1] + kw
                ]
                acc = (patch * wf).sum(axis=(1, 2, 3)) + (0 if bias is None else int(bias[oc]))
                for b in range(n):
                    v = _ref_mbqm(int(acc[b]), mq, sh) + y_zp
                    y[b, oc, i, j] = min(hi, max(lo, v))
    return y


@pytest.mark.parametrize(
    "dt,g,per_channel,s,p,k",
    [(I8, 1, True, (1, 1), (1, 1, 1, 1), 3), (I8, 4, True, (2, 2), (0, 0, 1, 1), 3),
     (U8, 1, False, (1, 2), (1, 0, 1, 0), 3), (I8, 2, False, (1, 1), (0, 0, 0, 0), 3),
     (U8, 1, True, (1, 1), (0, 0, 0, 0), 1), (I8, 1, True, (2, 2), (0, 0, 0, 0), 1)],
)  # fmt: skip
def test_tflite_conv_matches_reference_loops(dt, g, per_channel, s, p, k) -> None:
    x = _rand((2, 4, 6, 5), dt)
    m = 8
    w = _rand((m, 4 // g, k, k), dt)
    bias = RNG.integers(-2000, 2000, m).astype(np.int32)
    x_zp = -3 if dt == I8 else 121
    w_zp = [0] * m if dt == I8 else [130] * m
    ws = RNG.uniform(0.002, 0.02, m) if per_channel else np.full(m, 0.01)
    ws = ws.astype(np.float32).astype(np.float64)
    xs, ys, y_zp = 0.05, 0.25, (4 if dt == I8 else 100)
    lo, hi = q.tflite_activation_range("RELU6", ys, y_zp, dt)
    got = q.tflite_conv(
        x, w, bias, x_scale=xs, w_scale=ws.tolist() if per_channel else float(ws[0]),
        y_scale=ys, x_zp=x_zp, w_zp=w_zp if per_channel else w_zp[0], y_zp=y_zp,
        strides=list(s), pads=list(p), group=g, act_min=lo, act_max=hi,
    )  # fmt: skip
    mults = [xs * float(v) / ys for v in ws]
    want = _ref_tflite_conv(x, w, bias, x_zp, w_zp, mults, y_zp, s, p, g, lo, hi)
    assert got.dtype == dt
    assert (got.astype(np.int64) == want).all()


def test_tflite_fully_connected_matches_reference() -> None:
    x = _rand((3, 2, 50), I8)
    w = _rand((7, 100), I8)
    bias = RNG.integers(-5000, 5000, 7).astype(np.int32)
    ws = RNG.uniform(0.001, 0.01, 7).astype(np.float32).astype(np.float64)
    got = q.tflite_fully_connected(
        x, w, bias, x_scale=0.03, w_scale=ws.tolist(), y_scale=0.4, x_zp=5, y_zp=-10
    )
    assert got.shape == (3, 7)
    acc = (x.reshape(3, 100).astype(np.int64) - 5) @ w.T.astype(np.int64) + bias
    for i, j in np.ndindex(acc.shape):
        mq, sh = _ref_quantize_multiplier(0.03 * ws[j] / 0.4)
        assert got[i, j] == min(127, max(-128, _ref_mbqm(int(acc[i, j]), mq, sh) - 10))
    y = q.tflite_fully_connected(
        _rand((2, 3, 100), I8), w, None, x_scale=0.03, w_scale=0.005, y_scale=0.4, keep_num_dims=1
    )
    assert y.shape == (2, 3, 7)


def test_tflite_conv_16x8_uses_int64_requantization() -> None:
    x = RNG.integers(-32768, 32768, (1, 3, 5, 5)).astype(np.int16)
    w = _rand((4, 3, 3, 3), I8)
    bias = RNG.integers(-(2**30), 2**30, 4).astype(np.int64)
    ws = [0.002, 0.004, 0.001, 0.003]
    got = q.tflite_conv(x, w, bias, x_scale=0.0005, w_scale=ws, y_scale=0.001, pads=[1] * 4)
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    for oc, i, j in np.ndindex(4, 5, 5):
        acc = int((xp[0, :, i : i + 3, j : j + 3] * w[oc].astype(np.int64)).sum() + bias[oc])
        mq, sh = _ref_quantize_multiplier(0.0005 * ws[oc] / 0.001)
        m15 = (mq + (1 << 15)) >> 16 if mq < 0x7FFF0000 else 0x7FFF
        v = (acc * m15 + (1 << (14 - sh))) >> (15 - sh)
        assert got[0, oc, i, j] == min(32767, max(-32768, v))


def _f32(v: float) -> float:
    return float(np.float32(v))


@pytest.mark.parametrize("sub", [False, True])
@pytest.mark.parametrize("dt", [I8, U8])
def test_tflite_add_sub_matches_reference(sub, dt) -> None:
    a, b = _rand((4, 5), dt), _rand((5,), dt)
    sa, sb, sy = _f32(0.031), _f32(0.017), _f32(0.05)
    za, zb, zy = (3, -8, 2) if dt == I8 else (128, 120, 131)
    fn = q.tflite_sub if sub else q.tflite_add
    got = fn(a, b, a_scale=sa, b_scale=sb, y_scale=sy, a_zp=za, b_zp=zb, y_zp=zy)
    twice = 2 * max(sa, sb)
    m1, m2 = _ref_quantize_multiplier(sa / twice), _ref_quantize_multiplier(sb / twice)
    mo = _ref_quantize_multiplier(twice / ((1 << 20) * sy))
    lo, hi = np.iinfo(dt).min, np.iinfo(dt).max
    for i, j in np.ndindex(got.shape):
        x1 = _ref_mbqm((int(a[i, j]) - za) << 20, *m1)
        x2 = _ref_mbqm((int(b[j]) - zb) << 20, *m2)
        v = _ref_mbqm(x1 - x2 if sub else x1 + x2, *mo) + zy
        assert got[i, j] == min(hi, max(lo, v))
    # and it tracks the real-valued result within a quantum
    real = (a.astype(float) - za) * sa + (-1 if sub else 1) * (b.astype(float) - zb) * sb
    ideal = np.clip(np.round(real / sy) + zy, lo, hi)
    assert np.abs(got - ideal).max() <= 1


@pytest.mark.parametrize("dt", [I8, U8])
def test_tflite_mul_matches_reference(dt) -> None:
    a, b = _rand((3, 1, 4), dt), _rand((2, 4), dt)
    sa, sb, sy = 0.031, 0.017, 0.09
    za, zb, zy = (3, -8, 2) if dt == I8 else (128, 120, 131)
    got = q.tflite_mul(a, b, a_scale=sa, b_scale=sb, y_scale=sy, a_zp=za, b_zp=zb, y_zp=zy,
                       act_min=-100 if dt == I8 else 10, act_max=100)  # fmt: skip
    assert got.shape == (3, 2, 4)
    real = float(np.float32(np.float32(sa) * np.float32(sb)) / np.float32(sy))
    mq = _ref_quantize_multiplier(real)
    ab = np.broadcast_arrays(a.astype(int) - za, b.astype(int) - zb)
    lo = -100 if dt == I8 else 10
    for idx in np.ndindex(got.shape):
        v = _ref_mbqm(int(ab[0][idx] * ab[1][idx]), *mq) + zy
        assert got[idx] == min(100, max(lo, v))


def test_tflite_kernels_registered_in_modelloader_domain() -> None:
    from modelloader.kernels.cpu import registry

    for op in ("TFLiteConv", "TFLiteFullyConnected", "TFLiteAdd", "TFLiteSub", "TFLiteMul"):
        assert registry.lookup(op, domain="modelloader") is not None
