"""Plan-time rewrites, checked against onnxruntime on the same file: per-channel Mul/Add
after a pre-activation BatchNormalization fold into it (Caffe2's scale layers, as in
DenseNet-121) and it takes its activation as FusedBatchNorm; a Conv's BatchNormalization
folds into the conv; repeated nodes run once."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelloader

C = 6
RNG = np.random.default_rng(7)


def _const(name: str, value: np.ndarray):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _bn_inits(tag: str) -> list:
    return [
        _const(f"{tag}_s", RNG.uniform(0.5, 2.0, C)),
        _const(f"{tag}_b", RNG.standard_normal(C)),
        _const(f"{tag}_m", RNG.standard_normal(C)),
        _const(f"{tag}_v", RNG.uniform(0.5, 2.0, C)),
    ]


def _model(nodes: list, inits: list, outputs: list[str]) -> bytes:
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, C, 5, 5])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def _bn(inp: str, tag: str, out: str):
    return helper.make_node(
        "BatchNormalization", [inp, f"{tag}_s", f"{tag}_b", f"{tag}_m", f"{tag}_v"], [out]
    )


def _scale_layer(inp: str, out: str, mul_shape: tuple, add_shape: tuple) -> tuple[list, list]:
    """Caffe2's scale layer as exported: Unsqueeze'd per-channel constants, Mul then Add."""
    nodes = [
        helper.make_node("Unsqueeze", ["k_mul", "axes"], ["k_mul4"]),
        helper.make_node("Mul", [inp, "k_mul4"], ["scaled"]),
        helper.make_node("Add", ["k_add", "scaled"], [out]),
    ]
    inits = [
        _const("k_mul", RNG.uniform(-2, 2, mul_shape)),
        _const("k_add", RNG.standard_normal(add_shape)),
        numpy_helper.from_array(np.array([1, 2], np.int64)[: 3 - len(mul_shape)], "axes"),
    ]
    return nodes, inits


def _check(model: bytes, x: np.ndarray) -> list[str]:
    """Runs both runtimes; returns the planned ops."""
    m = modelloader.load(model)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})
    got = m.predict(x)
    for w, g in zip(want, got.values()):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    return [s.node.op for s in m._plan.steps]


X = RNG.standard_normal((2, C, 5, 5)).astype(np.float32)


def test_preactivation_chain_is_one_fused_batchnorm() -> None:
    sl, sl_inits = _scale_layer("n", "a", (C,), (C, 1, 1))
    nodes = [_bn("x", "bn", "n"), *sl, helper.make_node("Relu", ["a"], ["y"])]
    ops = _check(_model(nodes, _bn_inits("bn") + sl_inits, ["y"]), X)
    assert ops == ["FusedBatchNorm"]


def test_conv_batchnorm_folds_and_its_scale_layer_stays() -> None:
    """The BN folds into the conv; the Mul/Add after it stay float32 ops, as onnxruntime runs
    them (folding them into the weights too moves DenseNet-121 past its tolerance)."""
    w = _const("w", RNG.standard_normal((C, C, 3, 3)))
    sl, sl_inits = _scale_layer("n", "a", (C,), (C, 1, 1))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        _bn("c", "bn", "n"),
        *sl,
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    ops = _check(_model(nodes, [w, *_bn_inits("bn"), *sl_inits], ["y"]), X)
    assert ops == ["Conv", "Mul", "Add", "Relu"]


@pytest.mark.parametrize(
    "why, mul_shape",
    [("varies over space", (C, 1, 5)), ("one value per column", (5,))],
)
def test_constants_not_per_channel_stay_separate(why: str, mul_shape: tuple) -> None:
    nodes = [
        _bn("x", "bn", "n"),
        helper.make_node("Mul", ["n", "k"], ["y"]),
    ]
    k = _const("k", RNG.uniform(-2, 2, mul_shape))
    ops = _check(_model(nodes, [*_bn_inits("bn"), k], ["y"]), X)
    assert "Mul" in ops, why


def test_batchnorm_output_read_twice_is_not_folded() -> None:
    """The BN result is also a graph output: the Mul cannot change it."""
    nodes = [_bn("x", "bn", "n"), helper.make_node("Mul", ["n", "k"], ["y"])]
    k = _const("k", RNG.uniform(-2, 2, (C, 1, 1)))
    ops = _check(_model(nodes, [*_bn_inits("bn"), k], ["n", "y"]), X)
    assert "Mul" in ops


def test_scalar_mul_folds() -> None:
    nodes = [
        _bn("x", "bn", "n"),
        helper.make_node("Mul", ["k", "n"], ["m"]),
        helper.make_node("LeakyRelu", ["m"], ["y"], alpha=0.2),
    ]
    ops = _check(_model(nodes, [*_bn_inits("bn"), _const("k", np.float32(-1.5))], ["y"]), X)
    assert ops == ["FusedBatchNorm"]


def test_duplicate_nodes_merge() -> None:
    """Common-subexpression elimination: repeated deterministic nodes on the same inputs run
    once (a quantizer's DynamicQuantizeLinear per consumer); random nodes and nodes whose
    output the graph returns stay; results match onnxruntime."""
    nodes = [
        helper.make_node("Relu", ["x"], ["r1"]),
        helper.make_node("Relu", ["x"], ["r2"]),
        helper.make_node("Add", ["r1", "r2"], ["s"]),
        helper.make_node("Sigmoid", ["x"], ["g1"]),
        helper.make_node("Sigmoid", ["x"], ["g2"]),  # a graph output: kept
        helper.make_node("Mul", ["s", "g1"], ["y"]),
        helper.make_node("RandomNormalLike", ["x"], ["n1"], seed=1.0),
        helper.make_node("RandomNormalLike", ["x"], ["n2"], seed=1.0),
        helper.make_node("Sub", ["n1", "n2"], ["d"]),
    ]
    m = modelloader.load(_model(nodes, [], ["y", "g2", "d"]))
    ops = [s.node.op for s in m._plan.steps]
    assert ops.count("Relu") == 1 and ops.count("Sigmoid") == 2
    assert ops.count("RandomNormalLike") == 2
    sess = ort.InferenceSession(_model(nodes, [], ["y", "g2"]), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": X})
    got = m.predict(X)
    np.testing.assert_allclose(got["y"], want[0], rtol=1e-6)
    np.testing.assert_allclose(got["g2"], want[1], rtol=1e-6)
