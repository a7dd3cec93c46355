"""Correctness of the conv/pool fast paths against onnx.reference (not timing)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from modelloader.kernels.cpu import conv as cv
from modelloader.kernels.cpu import pool as pl


def _ref(op: str, inputs: list[np.ndarray], **attrs) -> np.ndarray:
    names = [f"i{k}" for k in range(len(inputs))]
    node = helper.make_node(op, names, ["y"], **attrs)
    dt = helper.np_dtype_to_tensor_dtype(inputs[0].dtype)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(nm, dt, a.shape) for nm, a in zip(names, inputs)],
        [helper.make_tensor_value_info("y", dt, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    return ReferenceEvaluator(model).run(None, dict(zip(names, inputs)))[0]


@pytest.mark.parametrize(
    "shape,k,pads,mult,bias,dtype",
    [
        ((1, 8, 7, 9), (3, 3), (1, 1, 1, 1), 1, True, np.float32),
        ((2, 5, 6, 4), (3, 3), (1, 1, 1, 1), 2, False, np.float32),
        ((1, 4, 5, 5), (5, 5), (2, 2, 2, 2), 1, True, np.float64),
        ((1, 3, 6, 7), (3, 5), (0, 1, 2, 3), 1, True, np.float32),
        ((1, 6, 2, 2), (3, 3), (1, 1, 1, 1), 1, True, np.float32),
        ((1, 4, 1, 1), (3, 3), (2, 0, 0, 2), 3, True, np.float32),
        ((1, 3, 5, 6), (1, 3), (0, 2, 0, 0), 1, True, np.float32),
    ],
)
def test_depthwise_same(shape, k, pads, mult, bias, dtype):
    rng = np.random.default_rng(0)
    c = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    w = rng.standard_normal((c * mult, 1) + k).astype(dtype)
    inputs = [x, w] + ([rng.standard_normal(c * mult).astype(dtype)] if bias else [])
    attrs = dict(group=c, kernel_shape=list(k), pads=list(pads), strides=[1, 1])
    want = _ref("Conv", inputs, **attrs)
    for _ in range(2):  # second call reuses the kept buffers
        got = cv.conv(*inputs, **attrs)
        assert got.dtype == x.dtype and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # a same-geometry call with other data must not see stale values
    x2 = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_allclose(
        cv.conv(x2, *inputs[1:], **attrs),
        _ref("Conv", [x2] + inputs[1:], **attrs),
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_pool_kept_border_and_cached_divisor(include_pad, ceil_mode):
    rng = np.random.default_rng(1)
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=ceil_mode)
    for _ in range(2):  # second round reuses the kept padded buffer and the cached divisor
        x = rng.standard_normal((1, 5, 8, 7)).astype(np.float32)
        np.testing.assert_allclose(
            pl.average_pool(x, count_include_pad=include_pad, **attrs),
            _ref("AveragePool", [x], count_include_pad=include_pad, **attrs),
            rtol=1e-6,
            atol=1e-6,
        )
        np.testing.assert_array_equal(pl.max_pool(x, **attrs), _ref("MaxPool", [x], **attrs))


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("shape", [(1, 16, 7, 7), (3, 5, 4, 6), (2, 3, 1, 1), (0, 4, 7, 7)])
def test_pool_window_covering_whole_plane(op, shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    attrs = dict(kernel_shape=list(shape[2:]))
    fn = pl.max_pool if op == "MaxPool" else pl.average_pool
    got = fn(x, **attrs)
    assert got.shape == shape[:2] + (1, 1) and got.dtype == x.dtype
    if x.size:
        np.testing.assert_allclose(got, _ref(op, [x], **attrs), rtol=1e-6, atol=1e-6)
        # a NaN reaches its own channel's result only, as in the windowed folds (np.maximum)
        x[0, 0, 0, 0] = np.nan
        got = fn(x, **attrs)
        assert np.isnan(got[0, 0]).all() and not np.isnan(got.reshape(-1)[1:]).any()
