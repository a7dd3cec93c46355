"""Conv/Gemm paths the ONNX node suite does not reach: fused ops, fast paths, scratch reuse."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from modelloader.kernels.cpu.conv import conv, fused_conv
from modelloader.kernels.cpu.gemm import fused_gemm, gemm
from modelloader.kernels.cpu.pool import max_pool_with_indices

RNG = np.random.default_rng(0)


def _ref_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, **attrs) -> np.ndarray:
    inits = [numpy_helper.from_array(w, "w")]
    names = ["x", "w"]
    if b is not None:
        inits.append(numpy_helper.from_array(b, "b"))
        names.append("b")
    node = helper.make_node("Conv", names, ["y"], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    return ReferenceEvaluator(model).run(None, {"x": x})[0]


# (N, C, H, W, M, k, stride, pad, dilation, group): covers pointwise, strided pointwise,
# the flat-tap im2col path (wide outputs), the generic im2col path (narrow outputs),
# grouped, depthwise and depthwise-with-multiplier convs, with batch > 1.
CASES = [
    (1, 8, 9, 9, 6, 1, 1, 0, 1, 1),
    (2, 8, 9, 9, 6, 1, 2, 0, 1, 2),
    (1, 3, 40, 36, 5, 7, 2, 3, 1, 1),
    (1, 3, 64, 60, 5, 7, 2, 3, 1, 1),
    (2, 6, 31, 33, 4, 3, 1, 1, 2, 2),
    (2, 6, 31, 40, 4, 3, 1, 2, 2, 2),
    (1, 16, 5, 5, 8, 3, 1, 1, 1, 1),
    (2, 6, 30, 30, 6, 3, 2, 1, 1, 6),
    (1, 5, 7, 7, 5, 3, 1, 1, 1, 5),
    (1, 4, 12, 12, 8, 3, 1, 1, 1, 4),
    (1, 4, 11, 13, 4, 5, 3, 0, 1, 4),
]


@pytest.mark.parametrize("n,c,h,w,m,k,s,p,d,g", CASES)
def test_conv_paths_match_reference(n, c, h, w, m, k, s, p, d, g) -> None:
    x = RNG.standard_normal((n, c, h, w)).astype(np.float32)
    wt = RNG.standard_normal((m, c // g, k, k)).astype(np.float32)
    b = RNG.standard_normal(m).astype(np.float32)
    attrs = dict(strides=[s, s], pads=[p] * 4, dilations=[d, d], group=g)
    want = _ref_conv(x, wt, b, **attrs)
    got = conv(x, wt, b, **attrs)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_results_do_not_alias_scratch() -> None:
    x1 = RNG.standard_normal((1, 4, 20, 20)).astype(np.float32)
    x2 = RNG.standard_normal((1, 4, 20, 20)).astype(np.float32)
    wt = RNG.standard_normal((4, 4, 3, 3)).astype(np.float32)
    y1 = conv(x1, wt, pads=[1] * 4)
    keep = y1.copy()
    conv(x2, wt, pads=[1] * 4)
    np.testing.assert_array_equal(y1, keep)


def test_conv_float16_and_readonly_inputs() -> None:
    x = RNG.standard_normal((1, 3, 10, 10)).astype(np.float16)
    wt = RNG.standard_normal((2, 3, 3, 3)).astype(np.float16)
    x.flags.writeable = False
    wt.flags.writeable = False
    got = conv(x, wt, pads=[1] * 4)
    assert got.dtype == np.float16
    want = _ref_conv(x.astype(np.float32), wt.astype(np.float32), None, pads=[1] * 4)
    np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-2)


def _act(y: np.ndarray, name: str, params: list[float]) -> np.ndarray:
    if name == "Relu":
        return np.maximum(y, 0)
    if name == "LeakyRelu":
        return np.where(y >= 0, y, y * params[0])
    if name == "Clip":
        return np.clip(y, params[0], params[1])
    if name == "Sigmoid":
        return 1 / (1 + np.exp(-y))
    if name == "Tanh":
        return np.tanh(y)
    if name == "HardSigmoid":
        return np.clip(y * params[0] + params[1], 0, 1)
    return y


ACTS = [
    ("", []),
    ("Relu", []),
    ("LeakyRelu", [0.1]),
    ("Clip", [0.0, 6.0]),
    ("Sigmoid", []),
    ("Tanh", []),
    ("HardSigmoid", [0.2, 0.5]),
]


@pytest.mark.parametrize("act,params", ACTS)
@pytest.mark.parametrize("residual", [False, True])
def test_fused_conv(act: str, params: list[float], residual: bool) -> None:
    x = RNG.standard_normal((1, 4, 16, 16)).astype(np.float32)
    wt = RNG.standard_normal((6, 4, 3, 3)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    base = conv(x, wt, b, pads=[1] * 4)
    z = RNG.standard_normal(base.shape).astype(np.float32) if residual else None
    z_copy = None if z is None else z.copy()
    got = fused_conv(x, wt, b, z, pads=[1] * 4, activation=act, activation_params=params)
    want = _act(base + (z if z is not None else 0), act, params)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32
    if z is not None:
        np.testing.assert_array_equal(z, z_copy)  # the residual input is never written


@pytest.mark.parametrize("act,params", ACTS)
def test_fused_gemm(act: str, params: list[float]) -> None:
    a = RNG.standard_normal((5, 7)).astype(np.float32)
    b = RNG.standard_normal((3, 7)).astype(np.float32)
    c = RNG.standard_normal(3).astype(np.float32)
    base = gemm(a, b, c, transB=1, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(base, 0.5 * a @ b.T + 2.0 * c, rtol=1e-5, atol=1e-5)
    got = fused_gemm(
        a, b, c, transB=1, alpha=0.5, beta=2.0, activation=act, activation_params=params
    )
    np.testing.assert_allclose(got, _act(base, act, params), rtol=1e-5, atol=1e-5)
    assert got.dtype == np.float32


def test_max_pool_indices_ties_pick_first() -> None:
    x = np.zeros((1, 1, 4, 4), np.float32)
    y, idx = max_pool_with_indices(x, kernel_shape=[2, 2], strides=[2, 2])
    np.testing.assert_array_equal(idx.reshape(-1), [0, 2, 8, 10])
    assert idx.dtype == np.int64 and y.shape == (1, 1, 2, 2)


@pytest.mark.parametrize(
    "xshape,wshape,attrs",
    [
        ((2, 4, 17), (6, 2, 3), dict(strides=[2], pads=[1, 1], group=2)),
        ((1, 4, 9), (4, 1, 3), dict(pads=[2, 0], group=4, dilations=[2])),
        ((1, 3, 6, 7, 5), (4, 3, 3, 3, 3), dict(strides=[1, 2, 1], pads=[1] * 6)),
    ],
)
def test_conv_1d_3d(xshape, wshape, attrs) -> None:
    x = RNG.standard_normal(xshape).astype(np.float32)
    wt = RNG.standard_normal(wshape).astype(np.float32)
    np.testing.assert_allclose(conv(x, wt, **attrs), _ref_conv(x, wt, None, **attrs), atol=1e-4)
