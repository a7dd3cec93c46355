"""Bad models and bad inputs through ``modelloader.load`` / ``Model.predict``.

Each failure a user can cause must raise its own ``ModelLoaderError`` subclass with a
message that names the problem; non-finite inputs are data, not errors.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelloader
from modelloader.errors import (
    InputDTypeError,
    InputError,
    InputNameError,
    InputShapeError,
    ModelFormatError,
    ModelLoaderError,
    ModelNotFoundError,
    UnsupportedOpError,
)

OPSET = [helper.make_opsetid("", 21)]


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[onnx.TensorProto] | None = None,
    opsets: list[onnx.OperatorSetIdProto] | None = None,
) -> bytes:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=opsets or OPSET)
    return model.SerializeToString()


def vi(
    name: str, dims: list[int | str | None], elem: int = TensorProto.FLOAT
) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


@pytest.fixture
def add_model() -> bytes:
    """z = a + b, a: float32 [N, 3], b: float32 [N, 3]."""
    return make_model(
        [helper.make_node("Add", ["a", "b"], ["z"])],
        [vi("a", ["N", 3]), vi("b", ["N", 3])],
        [vi("z", ["N", 3])],
    )


@pytest.fixture
def relu_model() -> bytes:
    """y = Relu(x), x: float32 [2, 3]."""
    return make_model(
        [helper.make_node("Relu", ["x"], ["y"])], [vi("x", [2, 3])], [vi("y", [2, 3])]
    )


@pytest.fixture
def matmul_model() -> bytes:
    """y = x @ W with a 64x64 weight (so the file has a sizeable initializer)."""
    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64) / 4096
    return make_model(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        [vi("x", ["batch", 64])],
        [vi("y", ["batch", 64])],
        [numpy_helper.from_array(w, "W")],
    )


F32 = np.float32


# --- loading -------------------------------------------------------------------------


def test_file_not_found(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing.onnx"
    with pytest.raises(ModelNotFoundError) as info:
        modelloader.load(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)  # also catchable the stdlib way
    with pytest.raises(ModelNotFoundError):
        modelloader.load(str(missing))


def test_random_bytes() -> None:
    junk = np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    with pytest.raises(ModelFormatError):
        modelloader.load(junk)


def test_random_bytes_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(ModelFormatError) as info:
        modelloader.load(path)
    assert "junk.onnx" in str(info.value)


def test_text_file_is_a_format_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n" * 20)
    with pytest.raises(ModelFormatError):
        modelloader.load(path)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.99])
def test_truncated_protobuf(matmul_model: bytes, fraction: float) -> None:
    cut = matmul_model[: int(len(matmul_model) * fraction)]
    with pytest.raises(ModelFormatError):
        modelloader.load(cut)


def test_empty_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        modelloader.load(path)
    with pytest.raises(ModelFormatError):
        modelloader.load(b"")


def test_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelFormatError):
        modelloader.load(tmp_path)


def test_unsupported_ops_are_all_listed() -> None:
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("NoSuchOpAlpha", ["r"], ["s"]),
            helper.make_node("NoSuchOpBeta", ["s"], ["t"], domain="com.example"),
            helper.make_node("NoSuchOpAlpha", ["t"], ["y"]),  # repeated: listed once
        ],
        [vi("x", [3])],
        [vi("y", [3])],
        opsets=[helper.make_opsetid("", 21), helper.make_opsetid("com.example", 2)],
    )
    with pytest.raises(UnsupportedOpError) as info:
        modelloader.load(model)
    err = info.value
    names = {op for op, _, _ in err.ops}
    assert names == {"NoSuchOpAlpha", "NoSuchOpBeta"}
    assert ("NoSuchOpBeta", "com.example", 2) in err.ops
    msg = str(err)
    assert "NoSuchOpAlpha" in msg and "NoSuchOpBeta" in msg and "com.example" in msg
    assert isinstance(err, NotImplementedError)


def test_unsupported_op_inside_subgraph_is_listed() -> None:
    branch = helper.make_graph(
        [helper.make_node("NoSuchOpGamma", ["x"], ["o"])], "b", [], [vi("o", [3])]
    )
    other = helper.make_graph([helper.make_node("Relu", ["x"], ["o2"])], "c", [], [vi("o2", [3])])
    model = make_model(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)],
        [vi("c", [], TensorProto.BOOL), vi("x", [3])],
        [vi("y", [3])],
    )
    with pytest.raises(UnsupportedOpError, match="NoSuchOpGamma"):
        modelloader.load(model)


# --- predict: names ------------------------------------------------------------------


def test_missing_input_name(add_model: bytes) -> None:
    m = modelloader.load(add_model)
    with pytest.raises(InputNameError) as info:
        m.predict({"a": np.ones((1, 3), F32)})
    assert "b" in str(info.value)
    assert isinstance(info.value, KeyError) and isinstance(info.value, InputError)


def test_extra_input_name(add_model: bytes) -> None:
    m = modelloader.load(add_model)
    feeds = {"a": np.ones((1, 3), F32), "b": np.ones((1, 3), F32), "bogus": np.ones(1, F32)}
    with pytest.raises(InputNameError, match="bogus") as info:
        m.predict(feeds)
    # The message helps: it lists the names the model does take.
    assert "'a'" in str(info.value) and "'b'" in str(info.value)


def test_single_array_for_two_input_model(add_model: bytes) -> None:
    m = modelloader.load(add_model)
    with pytest.raises(InputNameError):
        m.predict(np.ones((1, 3), F32))


def test_wrong_list_length(add_model: bytes) -> None:
    m = modelloader.load(add_model)
    with pytest.raises(InputNameError):
        m.predict([np.ones((1, 3), F32)])


# --- predict: dtypes and shapes ------------------------------------------------------


def test_wrong_dtype_says_expected(relu_model: bytes) -> None:
    m = modelloader.load(relu_model)
    with pytest.raises(InputDTypeError) as info:
        m.predict({"x": np.ones((2, 3), dtype=np.int64)})
    msg = str(info.value)
    assert "float32" in msg and "int64" in msg and "'x'" in msg
    assert isinstance(info.value, TypeError)


def test_wrong_rank(relu_model: bytes) -> None:
    m = modelloader.load(relu_model)
    with pytest.raises(InputShapeError) as info:
        m.predict({"x": np.ones((2, 3, 1), F32)})
    assert "rank" in str(info.value) and "'x'" in str(info.value)
    with pytest.raises(InputShapeError):
        m.predict({"x": np.ones(6, F32)})


def test_conflicting_fixed_dim(relu_model: bytes) -> None:
    m = modelloader.load(relu_model)
    with pytest.raises(InputShapeError) as info:
        m.predict({"x": np.ones((2, 4), F32)})
    assert "(2, 4)" in str(info.value)


def test_conflicting_fixed_dim_beside_symbolic(add_model: bytes) -> None:
    m = modelloader.load(add_model)
    with pytest.raises(InputShapeError):
        m.predict({"a": np.ones((5, 4), F32), "b": np.ones((5, 4), F32)})


def test_symbolic_dim_bound_inconsistently(add_model: bytes) -> None:
    """Both inputs declare [N, 3]: N cannot be 2 for one and 5 for the other."""
    m = modelloader.load(add_model)
    with pytest.raises(InputShapeError, match="N"):
        m.predict({"a": np.ones((2, 3), F32), "b": np.ones((5, 3), F32)})


def test_symbolic_dim_accepts_any_size(add_model: bytes) -> None:
    m = modelloader.load(add_model)
    for n in (1, 7):
        out = m.predict({"a": np.ones((n, 3), F32), "b": np.full((n, 3), 2, F32)})
        np.testing.assert_array_equal(out["z"], np.full((n, 3), 3, F32))


def test_input_errors_leave_the_model_usable(relu_model: bytes) -> None:
    m = modelloader.load(relu_model)
    with pytest.raises(InputShapeError):
        m.predict({"x": np.ones((3, 3), F32)})
    out = m.predict({"x": -np.ones((2, 3), F32)})
    np.testing.assert_array_equal(out["y"], np.zeros((2, 3), F32))


# --- non-finite inputs are data ------------------------------------------------------


def test_non_finite_inputs_are_computed(relu_model: bytes, add_model: bytes) -> None:
    x = np.array([[np.nan, np.inf, -np.inf], [1.0, -1.0, 0.0]], dtype=F32)
    out = modelloader.load(relu_model).predict({"x": x})["y"]
    assert out.dtype == F32
    assert np.isnan(out[0, 0])
    np.testing.assert_array_equal(out[0, 1:], [np.inf, 0.0])
    np.testing.assert_array_equal(out[1], [1.0, 0.0, 0.0])

    a = np.array([[np.inf, np.nan, 1.0]], dtype=F32)
    b = np.array([[-np.inf, 1.0, np.inf]], dtype=F32)
    z = modelloader.load(add_model).predict({"a": a, "b": b})["z"]
    assert np.isnan(z[0, 0]) and np.isnan(z[0, 1]) and z[0, 2] == np.inf


def test_non_finite_inputs_raise_no_warnings(add_model: bytes) -> None:
    """inf + -inf is data: no RuntimeWarning, even under ``-W error`` or np.errstate(raise)."""
    m = modelloader.load(add_model)
    a = np.array([[np.inf, np.nan, 0.0]], dtype=F32)
    b = np.array([[-np.inf, 1.0, 0.0]], dtype=F32)
    with warnings.catch_warnings(), np.errstate(all="raise"):
        warnings.simplefilter("error")
        z = m.predict({"a": a, "b": b})["z"]
    assert np.isnan(z[0, :2]).all() and z[0, 2] == 0


# --- the hierarchy -------------------------------------------------------------------


def test_every_failure_is_a_modelloader_error(tmp_path: pathlib.Path, relu_model: bytes) -> None:
    m = modelloader.load(relu_model)
    failures = [
        lambda: modelloader.load(tmp_path / "missing.onnx"),
        lambda: modelloader.load(b"\x00garbage\xff" * 50),
        lambda: m.predict({"nope": np.ones((2, 3), F32)}),
        lambda: m.predict({"x": np.ones((2, 3), np.float64)}),
        lambda: m.predict({"x": np.ones((9, 9), F32)}),
    ]
    for fail in failures:
        with pytest.raises(ModelLoaderError):
            fail()


def test_node_reading_an_undefined_value_is_refused_at_load() -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "nowhere"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(modelloader.ModelFormatError, match=r"'nowhere' \(read by Add node"):
        modelloader.load(model.SerializeToString())
