"""``load`` from every kind of source, ``predict`` calling conventions, external data,
fusion passes and concurrent use — checked against onnxruntime where numbers matter."""

from __future__ import annotations

import io
import pathlib
import threading

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelloader
from modelloader.errors import UnsupportedOpError

RNG = np.random.default_rng(0)


def conv_bn_relu_model() -> onnx.ModelProto:
    """Conv -> BatchNorm -> Add(residual) -> Relu, then Gemm -> Relu: every fusion path."""
    c, m = 4, 4
    w = (RNG.standard_normal((m, c, 3, 3)) * 0.3).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(RNG.standard_normal(m).astype(np.float32), "b"),
        numpy_helper.from_array(RNG.uniform(0.5, 1.5, m).astype(np.float32), "s"),
        numpy_helper.from_array(RNG.standard_normal(m).astype(np.float32), "bb"),
        numpy_helper.from_array(RNG.standard_normal(m).astype(np.float32), "mu"),
        numpy_helper.from_array(RNG.uniform(0.5, 1.5, m).astype(np.float32), "var"),
        numpy_helper.from_array(RNG.standard_normal((m * 8 * 8, 5)).astype(np.float32), "fc"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "bb", "mu", "var"], ["n"]),
        helper.make_node("Add", ["n", "x"], ["r"]),
        helper.make_node("Relu", ["r"], ["a"]),
        helper.make_node("Flatten", ["a"], ["f"]),
        helper.make_node("Gemm", ["f", "fc"], ["g"]),
        helper.make_node("Relu", ["g"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", c, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 5])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.fixture(scope="module")
def model_proto() -> onnx.ModelProto:
    return conv_bn_relu_model()


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)


def reference(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def test_fusions_happen_and_match_onnxruntime(model_proto: onnx.ModelProto, x: np.ndarray) -> None:
    m = modelloader.load(model_proto.SerializeToString())
    planned = [n.op for n in m.graph.nodes]
    assert "BatchNormalization" not in planned and "Relu" not in planned and "Add" not in planned
    assert planned.count("FusedConv") == 1 and planned.count("FusedGemm") == 1
    assert m.op_histogram["BatchNormalization"] == 1  # describes the model as imported
    (ref,) = reference(model_proto, {"x": x})
    np.testing.assert_allclose(m.predict(x)["y"], ref, rtol=1e-4, atol=1e-5)
    unfused = modelloader.load(model_proto.SerializeToString(), optimize=False)
    np.testing.assert_allclose(unfused.predict(x)["y"], ref, rtol=1e-4, atol=1e-5)


def test_sources(tmp_path: pathlib.Path, model_proto: onnx.ModelProto, x: np.ndarray) -> None:
    data = model_proto.SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    expected = modelloader.load(data).predict(x)["y"]
    for src in (str(path), path, data, bytearray(data), io.BytesIO(data), path.as_uri()):
        got = modelloader.load(src).predict(x)["y"]
        np.testing.assert_array_equal(got, expected, err_msg=repr(type(src)))


def test_info_and_calling_conventions(model_proto: onnx.ModelProto, x: np.ndarray) -> None:
    m = modelloader.load(model_proto.SerializeToString())
    (inp,) = m.inputs
    assert (inp.name, inp.dtype, inp.shape) == ("x", np.dtype(np.float32), ("batch", 4, 8, 8))
    assert [o.name for o in m.outputs] == ["y"]
    by_dict, by_array, by_list = m.predict({"x": x}), m.predict(x), m.predict([x])
    assert list(by_dict) == ["y"]
    np.testing.assert_array_equal(by_dict["y"], by_array["y"])
    np.testing.assert_array_equal(by_dict["y"], by_list["y"])
    assert m.param_count == 4 * 4 * 9 + 4 * 5 + 256 * 5


def test_outputs_in_declared_order() -> None:
    nodes = [helper.make_node("Neg", ["a"], ["n"]), helper.make_node("Abs", ["a"], ["b"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in ("b", "n")],
    )
    m = modelloader.load(helper.make_model(graph).SerializeToString())
    assert list(m.predict(np.array([-1.0, 2.0], np.float32))) == ["b", "n"]


@pytest.mark.parametrize("op", ["Identity", "Gather", "Add"])
def test_outputs_are_the_callers_to_modify(op: str) -> None:
    """An output that is a weight, a slice or view of one (Gather with a scalar index,
    Identity) or folded from weights at load (Add) comes back writeable, and writing it
    changes neither the weight nor the next run."""
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    ins = {"Gather": ["W", "i"], "Identity": ["W"], "Add": ["W", "W"]}[op]
    graph = helper.make_graph(
        [helper.make_node(op, ins, ["y"])],
        "g",
        [helper.make_tensor_value_info("i", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(w, "W")],
    )
    m = modelloader.load(helper.make_model(graph).SerializeToString())
    want = {"Gather": w[1], "Identity": w, "Add": w + w}[op]
    y = m.predict({"i": np.array(1)})["y"]
    np.testing.assert_array_equal(y, want)
    y[...] = -1
    np.testing.assert_array_equal(m.predict({"i": np.array(1)})["y"], want)


def test_external_data_is_memory_mapped(
    tmp_path: pathlib.Path, model_proto: onnx.ModelProto, x: np.ndarray
) -> None:
    proto = onnx.ModelProto()
    proto.CopyFrom(model_proto)
    onnx.save_model(
        proto,
        tmp_path / "ext.onnx",
        save_as_external_data=True,
        location="ext.bin",
        size_threshold=64,
    )
    assert (tmp_path / "ext.bin").stat().st_size > 0
    m = modelloader.load(tmp_path / "ext.onnx", optimize=False)
    fc = m.graph.constants["fc"]
    assert not fc.flags.writeable and not fc.flags.owndata
    base = fc
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap), "external weights should be views of a memory map"
    (ref,) = reference(model_proto, {"x": x})
    np.testing.assert_allclose(m.predict(x)["y"], ref, rtol=1e-4, atol=1e-5)
    assert (
        m.size_bytes
        == (tmp_path / "ext.onnx").stat().st_size + (tmp_path / "ext.bin").stat().st_size
    )


def test_external_data_missing_file(tmp_path: pathlib.Path, model_proto: onnx.ModelProto) -> None:
    proto = onnx.ModelProto()
    proto.CopyFrom(model_proto)
    onnx.save_model(
        proto,
        tmp_path / "ext.onnx",
        save_as_external_data=True,
        location="ext.bin",
        size_threshold=64,
    )
    (tmp_path / "ext.bin").unlink()
    with pytest.raises(modelloader.ModelFormatError, match="ext.bin"):
        modelloader.load(tmp_path / "ext.onnx")


def test_unsupported_ops_listed_together() -> None:
    nodes = [
        helper.make_node("FancyOp", ["a"], ["b"], domain="com.example"),
        helper.make_node("Relu", ["b"], ["c"]),
        helper.make_node("OtherOp", ["c"], ["d"], domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [2])],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.example", 1)]
    )
    with pytest.raises(UnsupportedOpError) as e:
        modelloader.load(proto.SerializeToString())
    assert {op for op, _, _ in e.value.ops} == {"FancyOp", "OtherOp"}
    assert "FancyOp" in str(e.value) and "OtherOp" in str(e.value)


def test_concurrent_predict(model_proto: onnx.ModelProto) -> None:
    m = modelloader.load(model_proto.SerializeToString())
    xs = [RNG.standard_normal((1 + i % 3, 4, 8, 8)).astype(np.float32) for i in range(8)]
    expected = [m.predict(x)["y"] for x in xs]
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for _ in range(20):
                i = (k * 7 + _) % len(xs)
                np.testing.assert_array_equal(m.predict(xs[i])["y"], expected[i])
        except BaseException as e:  # noqa: BLE001  re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_older_opset_is_normalised() -> None:
    """Opset 11 Squeeze/Unsqueeze take axes as attributes; opset 21 as inputs."""
    nodes = [
        helper.make_node("Unsqueeze", ["a"], ["u"], axes=[0]),
        helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
        helper.make_node("ReduceSum", ["s"], ["r"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    a = RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(
        modelloader.load(proto.SerializeToString()).predict(a)["r"], a.sum(1), rtol=1e-6
    )


def _two_heads() -> bytes:
    """x -> Relu -> a;  x -> Exp -> Neg -> b: two outputs that share only the input."""
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Exp", ["x"], ["e"]),
            helper.make_node("Neg", ["e"], ["b"]),
            helper.make_node("Sigmoid", ["x"], ["unused"]),  # read by nobody
        ],
        "heads",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [2, 3]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def test_selected_outputs_run_only_what_they_need() -> None:
    m = modelloader.load(_two_heads())
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    assert [st.node.op for st in m._plan.steps] == ["Relu", "Exp", "Neg"]  # Sigmoid pruned
    full = m.predict(x)
    only_b = m.predict(x, outputs=["b"])
    assert list(only_b) == ["b"]
    np.testing.assert_array_equal(only_b["b"], full["b"])
    assert [st.node.op for st in m._plan_for(["b"]).steps] == ["Exp", "Neg"]
    swapped = m.predict(x, outputs=["b", "a"])
    assert list(swapped) == ["b", "a"]
    np.testing.assert_array_equal(swapped["a"], full["a"])
    assert m._plan_for(["b", "a"]) is m._plan_for(["b", "a"])  # planned once


@pytest.mark.parametrize("bad", [["c"], ["a", "a"], []])
def test_unknown_selected_output_is_a_clear_error(bad) -> None:
    m = modelloader.load(_two_heads())
    with pytest.raises(modelloader.OutputNameError, match=r"model's outputs \['a', 'b'\]"):
        m.predict(np.zeros((2, 3), np.float32), outputs=bad)
