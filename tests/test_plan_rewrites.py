"""Plan-time rewrites, checked against onnxruntime on the same file: per-channel Mul/Add
after a pre-activation BatchNormalization fold into it (Caffe2's scale layers, as in
DenseNet-121) and it takes its activation as FusedBatchNorm; a Conv's BatchNormalization
folds into the conv, and a scale layer after it becomes a batch norm of the same
arithmetic; repeated nodes run once."""

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
    """The BN folds into the conv; the Mul/Add after it are not folded into the weights too
    (that moves DenseNet-121 past its tolerance) but become a batch norm of the same two
    float32 roundings, which takes the ReLU."""
    w = _const("w", RNG.standard_normal((C, C, 3, 3)))
    sl, sl_inits = _scale_layer("n", "a", (C,), (C, 1, 1))
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        _bn("c", "bn", "n"),
        *sl,
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    ops = _check(_model(nodes, [w, *_bn_inits("bn"), *sl_inits], ["y"]), X)
    assert ops == ["Conv", "FusedBatchNorm"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("big", [False, True])
def test_scale_layer_is_a_batchnorm_of_the_same_bits(dtype, big: bool) -> None:
    """x * k1 + k2 then ReLU, per-channel constants: one FusedBatchNorm whose result is the
    separate ops' bit for bit (NaN and infinities too), through the NumPy passes and, for a
    large map, the compiled loop."""
    shape = (2, C, 64, 64) if big else (2, C, 5, 5)
    tp = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    k1 = RNG.uniform(-2, 2, (C, 1, 1)).astype(dtype)
    k2 = RNG.standard_normal((C, 1, 1)).astype(dtype)
    nodes = [
        helper.make_node("Mul", ["k1", "x"], ["m"]),
        helper.make_node("Add", ["m", "k2"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "affine",
        [helper.make_tensor_value_info("x", tp, shape)],
        [helper.make_tensor_value_info("y", tp, None)],
        initializer=[numpy_helper.from_array(k1, "k1"), numpy_helper.from_array(k2, "k2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    m = modelloader.load(model.SerializeToString())
    assert [s.node.op for s in m._plan.steps] == ["FusedBatchNorm"]
    x = (RNG.standard_normal(shape) * 3).astype(dtype)
    x.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    np.testing.assert_array_equal(m.predict(x)["y"], np.maximum(x * k1 + k2, 0))


@pytest.mark.parametrize("why", ["k1 not finite", "product read twice", "not per channel"])
def test_scale_layers_that_stay_separate(why: str) -> None:
    k1 = RNG.uniform(-2, 2, (C, 1, 5) if why == "not per channel" else (C, 1, 1))
    if why == "k1 not finite":
        k1[0] = np.inf  # 0 * inf in the batch norm's bias would be NaN
    nodes = [
        helper.make_node("Mul", ["x", "k1"], ["m"]),
        helper.make_node("Add", ["m", "k2"], ["y"]),
    ]
    outputs = ["y", "m"] if why == "product read twice" else ["y"]
    inits = [_const("k1", k1), _const("k2", RNG.standard_normal((C, 1, 1)))]
    ops = _check(_model(nodes, inits, outputs), X)
    assert ops == ["Mul", "Add"], why


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
