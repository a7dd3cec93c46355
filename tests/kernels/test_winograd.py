"""Winograd F(2x2, 3x3) convs (conv.winograd_recipe, _llvm_wino): against a float64 direct
conv and onnxruntime, with bias, residual and clamp; which convs take it."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelloader
from modelloader.kernels.cpu import _llvm
from modelloader.kernels.cpu import conv as C

pytestmark = pytest.mark.skipif(not _llvm.available, reason="llvmlite is not installed")


def _direct64(x, w, b):
    return C._conv_float(
        x.astype(np.float64), w.astype(np.float64), None if b is None else b.astype(np.float64),
        auto_pad="NOTSET", dilations=[1, 1], group=1, kernel_shape=[3, 3], pads=[1, 1, 1, 1],
        strides=[1, 1],
    )  # fmt: skip


@pytest.mark.parametrize("bounds", [(-np.inf, np.inf), (0.0, 6.0)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(
    ("c", "h", "w", "m"),
    [(3, 5, 5, 4), (8, 6, 9, 8), (16, 17, 3, 5), (1, 1, 1, 1), (2, 2, 40, 3), (64, 14, 14, 24),
     (5, 15, 33, 7), (9, 31, 16, 2)],
)  # fmt: skip
def test_matches_direct_conv(c, h, w, m, residual, bounds) -> None:
    rng = np.random.default_rng(c * 100 + h * 10 + w + m)
    x = rng.standard_normal((1, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((m, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    z = rng.standard_normal((1, m, h, w)).astype(np.float32) if residual else None
    assert _llvm._compiled("wino")
    fn = C.winograd_recipe(x.shape, wt, b, bounds)
    for _ in range(2):  # the second call reuses the padded buffer: its border stays zero
        got = fn(x, z)
    want = np.clip(_direct64(x, wt, b) + (0 if z is None else z), *bounds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)


def test_nan_propagates_and_bias_is_optional() -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    wt = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    got = C.winograd_recipe(x.shape, wt, None, (-np.inf, np.inf))(x, None)
    want = _direct64(x, wt, None)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_allclose(got[ok], want[ok], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "dtype", "group", "geo", "takes"),
    [
        ((1, 64, 56, 56), np.float32, 1, ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [56, 56]), True),
        ((1, 64, 56, 56), np.float64, 1, ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [56, 56]), False),
        ((2, 64, 56, 56), np.float32, 1, ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [56, 56]), False),
        ((1, 64, 56, 56), np.float32, 1, ([3, 3], [2, 2], [1, 1], [1, 1, 1, 1], [28, 28]), False),
        ((1, 64, 56, 56), np.float32, 1, ([3, 3], [1, 1], [1, 1], [0, 0, 0, 0], [54, 54]), False),
        ((1, 64, 56, 56), np.float32, 2, ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [56, 56]), False),
        ((1, 16, 56, 56), np.float32, 1, ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [56, 56]), False),
        ((1, 64, 7, 7), np.float32, 1, ([3, 3], [1, 1], [1, 1], [1, 1, 1, 1], [7, 7]), False),
    ],
)
def test_which_convs_take_it(shape, dtype, group, geo, takes) -> None:
    wshape = (64, shape[1] // group, 3, 3)
    assert C._winograd_fits(shape, np.dtype(dtype), group, geo, wshape) is takes


def test_in_a_model_against_onnxruntime(monkeypatch) -> None:
    rng = np.random.default_rng(2)
    c, m, hw = 64, 72, 23  # an output of >= 32k values: llvmlite is worth loading
    inits = [
        numpy_helper.from_array((rng.standard_normal((m, c, 3, 3)) * 0.05).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(m).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["y"], ["r"]),
    ]
    graph = helper.make_graph(
        nodes, "wino", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, None)], initializer=inits,
    )  # fmt: skip
    data = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8
    ).SerializeToString()
    used = []
    real = C.winograd_recipe
    monkeypatch.setattr(C, "winograd_recipe", lambda *a: used.append(a) or real(*a))
    x = rng.standard_normal((1, c, hw, hw)).astype(np.float32)
    got = modelloader.load(data).predict(x)["r"]
    assert used  # the model's conv ran through the Winograd recipe
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
