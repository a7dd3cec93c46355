"""Shape/Size of tensors with a declared static shape fold at load (with the shape arithmetic
behind them); a wrong declaration raises when the tensor is produced, never a silent result."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import modelloader
from modelloader.errors import ExecutionError


def _model(declared: list | None, start: int | None = None) -> bytes:
    """y = Reshape(Relu(x), concat(Shape(h)[start:], [-1])) with h = Relu(x) of declared
    shape ``declared`` (None: no declaration, so nothing to fold); z = Size(h)."""
    shape_attrs = {} if start is None else {"start": start}
    nodes = [
        helper.make_node("Relu", ["x"], ["h"]),
        helper.make_node("Shape", ["h"], ["s"], **shape_attrs),
        helper.make_node("Concat", ["s", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["h", "target"], ["y"]),
        helper.make_node("Size", ["h"], ["z"]),
    ]
    value_info = [] if declared is None else [helper.make_tensor_value_info("h", 1, declared)]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("z", TensorProto.INT64, [])],
        [helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1])],
        value_info=value_info,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


@pytest.mark.parametrize("start", [None, 1, -1])
def test_static_shape_folds_and_matches_unfolded(start) -> None:
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    folded = modelloader.load(_model([4, 6], start))
    plain = modelloader.load(_model(None, start))
    ops = [st.node.op for st in folded._plan.steps]
    assert "Shape" not in ops and "Size" not in ops and "Concat" not in ops
    assert "Shape" in [st.node.op for st in plain._plan.steps]
    want = plain.predict(x)
    got = folded.predict(x)
    assert got["y"].shape == want["y"].shape
    np.testing.assert_array_equal(got["y"], want["y"])
    assert int(got["z"]) == int(want["z"]) == 24


def test_symbolic_shape_is_not_folded() -> None:
    m = modelloader.load(_model(["n", 6]))
    assert "Shape" in [st.node.op for st in m._plan.steps]
    x = np.ones((3, 6), np.float32)
    assert m.predict(x)["y"].shape == (3, 6, 1) and int(m.predict(x)["z"]) == 18


def test_wrong_declared_shape_raises_instead_of_computing() -> None:
    # the model says h is [4, 6]; its input dimension is symbolic, so a batch of 3 is valid
    # input that contradicts the declaration
    m = modelloader.load(_model([4, 6]))
    with pytest.raises(ExecutionError, match=r"'h'.*shape \[3, 6\].*declares \[4, 6\]"):
        m.predict(np.ones((3, 6), np.float32))
    # the plan is unharmed: a consistent input still runs
    assert m.predict(np.ones((4, 6), np.float32))["y"].shape == (4, 6, 1)


def test_transformer_shape_arithmetic_folds() -> None:
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "models" / "tiny_transformer.onnx"
    m = modelloader.load(path)
    assert not any(st.node.op in ("Shape", "Sqrt", "Slice") for st in m._plan.steps)
    assert onnx.load(str(path)).graph.node  # the file itself still carries them
