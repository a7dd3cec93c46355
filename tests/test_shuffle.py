"""Channel-shuffle fusion (``modelloader.passes``): Conv -> Reshape -> Transpose -> Reshape
becomes one FusedConv with ``shuffle``; results match onnxruntime on the unfused model, and
the fused node lowers back to standard ONNX (export) and to plain ops (quantize's unfuse)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelloader
from modelloader.export import to_onnx
from modelloader.quantize.rewrite import unfuse

ort = pytest.importorskip("onnxruntime")

C, G, H = 12, 3, 6


def _model(kernel: int, group: int, residual: bool, act: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(kernel * 10 + group)
    w = rng.standard_normal((C, C // group, kernel, kernel)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(np.array([1, G, C // G, H, H], np.int64), "split"),
        numpy_helper.from_array(np.array([1, C, H, H], np.int64), "merged"),
        numpy_helper.from_array(rng.standard_normal((C, 1, 3, 3)).astype(np.float32), "dw"),
    ]
    pad = kernel // 2
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], group=group, pads=[pad] * 4, kernel_shape=[kernel] * 2
        )
    ]
    cur = "c"
    if residual:
        nodes.append(helper.make_node("Add", [cur, "x"], ["r"]))
        cur = "r"
    if act:
        nodes.append(helper.make_node("Relu", [cur], ["a"]))
        cur = "a"
    nodes += [
        helper.make_node("Reshape", [cur, "split"], ["s5"]),
        helper.make_node("Transpose", ["s5"], ["t5"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t5", "merged"], ["sh"]),
        helper.make_node("Conv", ["sh", "dw"], ["y"], group=C, pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "shuffle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, H, H])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, C, H, H])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


CASES = [
    (1, G, False, True),  # pointwise, group == shuffle: the matmul writes shuffled
    (1, G, True, True),  # with a residual
    (1, 1, False, False),  # group 1: shuffles a copy
    (3, G, True, False),  # 3x3 grouped conv
    (1, 2 * G, False, True),  # group != shuffle groups
]


@pytest.mark.parametrize("kernel,group,residual,act", CASES)
def test_shuffle_fusion_matches_onnxruntime(
    kernel: int, group: int, residual: bool, act: bool
) -> None:
    proto = _model(kernel, group, residual, act)
    x = np.random.default_rng(1).standard_normal((1, C, H, H)).astype(np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    m = modelloader.load(proto.SerializeToString())
    ops = [n.op for n in m.graph.nodes]
    assert "Transpose" not in ops and "Reshape" not in ops, ops
    fused = [n for n in m.graph.nodes if n.op == "FusedConv" and n.attrs.get("shuffle")]
    assert len(fused) == 1 and fused[0].attrs["shuffle"] == G
    np.testing.assert_allclose(m.predict(x)["y"], want, rtol=1e-5, atol=1e-5)

    exported = to_onnx(m.graph)
    got = ort.InferenceSession(
        exported.SerializeToString(), providers=["CPUExecutionProvider"]
    ).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    plain = modelloader.api.Model(unfuse(m.graph), format="ir", optimize_graph=False)
    assert all(n.domain == "" for n in plain.graph.nodes)
    np.testing.assert_allclose(plain.predict(x)["y"], want, rtol=1e-5, atol=1e-5)


def test_shared_intermediate_is_not_fused() -> None:
    """A shuffle whose inner values are read elsewhere stays as it is."""
    proto = _model(1, G, False, True)
    g = proto.graph
    g.output.append(helper.make_tensor_value_info("t5", TensorProto.FLOAT, [1, C // G, G, H, H]))
    m = modelloader.load(proto.SerializeToString())
    assert "Transpose" in [n.op for n in m.graph.nodes]
    x = np.ones((1, C, H, H), np.float32)
    want = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )
    got = m.predict(x)
    np.testing.assert_allclose(got["y"], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["t5"], want[1], rtol=1e-5, atol=1e-5)
