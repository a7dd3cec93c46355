"""The exact-GELU subgraph exporters write (Div or Mul by 1/sqrt(2), Erf, Add 1, two Muls in
either order) plans as one Gelu node and matches onnxruntime; look-alikes stay as they are."""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelloader

X = np.random.default_rng(3).standard_normal((4, 300)).astype(np.float32) * 3


def _c(name: str, v: float):
    return numpy_helper.from_array(np.array(v, np.float32), name)


def _gelu_graph(form: str, one: float = 1.0) -> bytes:
    if form == "div_then_half":  # PyTorch: x * 0.5 * (1 + erf(x / sqrt 2)), Mul last
        nodes = [
            helper.make_node("Div", ["x", "r2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["a"]),
            helper.make_node("Mul", ["x", "a"], ["m"]),
            helper.make_node("Mul", ["m", "half"], ["y"]),
        ]
        inits = [_c("r2", math.sqrt(2)), _c("one", one), _c("half", 0.5)]
    else:  # Hugging Face: (x * 0.5) * (1 + erf(x * 1/sqrt 2))
        nodes = [
            helper.make_node("Mul", ["half", "x"], ["h"]),
            helper.make_node("Mul", ["x", "ir2"], ["d"]),
            helper.make_node("Erf", ["d"], ["e"]),
            helper.make_node("Add", ["one", "e"], ["a"]),
            helper.make_node("Mul", ["h", "a"], ["y"]),
        ]
        inits = [_c("ir2", 1 / math.sqrt(2)), _c("one", one), _c("half", 0.5)]
    graph = helper.make_graph(
        nodes,
        "gelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 300])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 300])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def _run(model: bytes) -> list[str]:
    m = modelloader.load(model)
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]
    np.testing.assert_allclose(m.predict(X)["y"], want, rtol=1e-5, atol=1e-6)
    return [s.node.op for s in m._plan.steps]


@pytest.mark.parametrize("form", ["div_then_half", "half_first"])
def test_exact_gelu_becomes_one_node(form: str) -> None:
    assert _run(_gelu_graph(form)) == ["Gelu"]


def test_look_alike_is_left_alone() -> None:
    """1 + erf is what makes it GELU: 2 + erf is computed as written."""
    assert "Erf" in _run(_gelu_graph("div_then_half", one=2.0))


def test_transformer_gelus_fuse() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "models" / "tiny_transformer.onnx"
    ops = [s.node.op for s in modelloader.load(path)._plan.steps]
    assert ops.count("Gelu") == 2 and "Erf" not in ops
