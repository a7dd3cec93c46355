"""Tensor/ML kernels and importer rows on what the ONNX node suite does not cover."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import modelloader


def _run(node: onnx.NodeProto, opset: int, feeds: dict[str, np.ndarray], domain_opsets=()) -> list:
    inputs = [
        helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
        for k, v in feeds.items()
    ]
    outputs = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in node.output]
    graph = helper.make_graph([node], "g", inputs, outputs)
    opsets = [
        helper.make_opsetid("", opset),
        *(helper.make_opsetid(d, v) for d, v in domain_opsets),
    ]
    model = helper.make_model(graph, opset_imports=opsets)
    got = modelloader.load(model.SerializeToString()).predict(feeds)
    return [got[o] for o in node.output]


def test_split_before_opset_18_splits_equally_per_output() -> None:
    x = np.arange(6, dtype=np.float32)
    node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=0)
    a, b, c = _run(node, 13, {"x": x})
    np.testing.assert_array_equal(np.concatenate([a, b, c]), x)
    assert a.shape == b.shape == c.shape == (2,)


def test_slice_and_pad_attributes_before_inputs() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y,) = _run(helper.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[3, -1]), 9, {"x": x})
    np.testing.assert_array_equal(y, x[1:3, 0:-1])
    pad = helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 0, 1], value=7.0)
    (y,) = _run(pad, 2, {"x": x})
    np.testing.assert_array_equal(y, np.pad(x, [(0, 0), (1, 1)], constant_values=7.0))


def test_range_accepts_one_element_vectors() -> None:
    start, limit, delta = (np.array([v], dtype=np.int64) for v in (1, 10, 3))
    node = helper.make_node("Range", ["s", "l", "d"], ["y"])
    (y,) = _run(node, 11, {"s": start, "l": limit, "d": delta})
    np.testing.assert_array_equal(y, np.array([1, 4, 7], dtype=np.int64))


@pytest.mark.parametrize("agg", ["SUM", "AVERAGE", "MIN", "MAX"])
def test_tree_ensemble_regressor_two_trees(agg: str) -> None:
    # tree 0: x0 <= 0.5 ? leaf 1 (w=1) : leaf 2 (w=2); tree 1: a single leaf (w=10)
    node = helper.make_node(
        "TreeEnsembleRegressor",
        ["x"],
        ["y"],
        domain="ai.onnx.ml",
        nodes_treeids=[0, 0, 0, 1],
        nodes_nodeids=[0, 1, 2, 0],
        nodes_featureids=[0, 0, 0, 0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF", "LEAF"],
        nodes_values=[0.5, 0, 0, 0],
        nodes_truenodeids=[1, 0, 0, 0],
        nodes_falsenodeids=[2, 0, 0, 0],
        target_treeids=[0, 0, 1],
        target_nodeids=[1, 2, 0],
        target_ids=[0, 0, 0],
        target_weights=[1.0, 2.0, 10.0],
        n_targets=1,
        aggregate_function=agg,
    )
    x = np.array([[0.0], [1.0]], dtype=np.float32)
    (y,) = _run(node, 17, {"x": x}, [("ai.onnx.ml", 3)])
    expected = {"SUM": [11, 12], "AVERAGE": [5.5, 6], "MIN": [1, 2], "MAX": [10, 10]}[agg]
    np.testing.assert_allclose(y[:, 0], expected)
    assert y.dtype == np.float32
