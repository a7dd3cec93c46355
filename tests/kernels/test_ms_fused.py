"""Models onnxruntime saved after its graph optimizations (com.microsoft FusedConv, FusedGemm,
FusedMatMul, SkipLayerNormalization, Gelu) load and match onnxruntime on the same file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import modelloader

MODELS = Path(__file__).resolve().parents[2] / "models"


def _feeds(name: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    if name == "tiny_transformer":
        mask = np.ones((2, 16), np.int64)
        mask[1, 10:] = 0
        return {"ids": rng.integers(0, 100, (2, 16)), "mask": mask}
    x = np.load(MODELS / f"{name}_input.npy")
    return {"pixels": x}


@pytest.mark.parametrize("name", ["digits_cnn", "digits_mlp", "tiny_transformer"])
def test_onnxruntime_optimized_file_matches(tmp_path: Path, name: str) -> None:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(MODELS / f"{name}.onnx"), opts, providers=["CPUExecutionProvider"])
    saved = onnx.load(str(tmp_path / "opt.onnx"))
    fused = {n.op_type for n in saved.graph.node if n.domain == "com.microsoft"}
    assert fused, "onnxruntime wrote no com.microsoft fusions"
    feeds = _feeds(name)
    sess = ort.InferenceSession(str(tmp_path / "opt.onnx"), providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))
    got = modelloader.load(tmp_path / "opt.onnx").predict(feeds)
    for k, w in want.items():
        np.testing.assert_allclose(got[k], w, rtol=1e-5, atol=1e-5, err_msg=f"{name} {k}")


@pytest.mark.parametrize(
    "sa, sb, attrs",
    [
        ((3, 4, 5), (3, 5, 6), {}),
        ((3, 5, 4), (3, 5, 6), {"transA": 1, "alpha": 2.0}),
        ((3, 4, 5), (6, 5), {"transB": 1}),
        ((4, 2, 3, 5), (2, 3, 5, 6), {"transBatchA": 1}),
        ((5, 2, 3, 4), (2, 3, 5, 6), {"transBatchA": 1, "transA": 1}),
        ((2, 3, 4, 5), (5, 2, 3, 6), {"transBatchB": 1, "alpha": 0.5}),
        ((2, 3, 4, 5), (6, 2, 3, 5), {"transBatchB": 1, "transB": 1}),
    ],
)
def test_fused_matmul_matches_onnxruntime(sa, sb, attrs) -> None:
    rng = np.random.default_rng(1)
    feeds = {"A": rng.standard_normal(sa).astype(np.float32)}
    feeds["B"] = rng.standard_normal(sb).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("FusedMatMul", ["A", "B"], ["Y"], domain="com.microsoft", **attrs)],
        "fmm",
        [
            helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
            for k, v in feeds.items()
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(
        modelloader.load(model).predict(feeds)["Y"], want, rtol=1e-5, atol=1e-5
    )


def _single(node, feeds: dict[str, np.ndarray], inits: dict[str, np.ndarray]) -> None:
    """One com.microsoft node against onnxruntime. Weights stay within 7 bits: onnxruntime's
    AVX2 u8s8 kernels saturate pairwise 16-bit sums of full-range products (off by whole
    units then), which is why its quantizer reduces the weight range there; ours are exact."""
    graph = helper.make_graph(
        [node],
        "q",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
         for k, v in feeds.items()],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
        initializer=[onnx.numpy_helper.from_array(v, k) for k, v in inits.items()],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(
        modelloader.load(model).predict(feeds)["Y"], want, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("per_column", [False, True])
def test_dynamic_quantize_matmul_matches_onnxruntime(bias: bool, per_column: bool) -> None:
    rng = np.random.default_rng(2)
    n = 24
    inits = {
        "b": rng.integers(-64, 64, (40, n)).astype(np.int8),  # 7-bit: see below
        "bs": (rng.random(n if per_column else ()) * 0.01 + 1e-3).astype(np.float32),
        "bz": np.array(0, np.int8),
    }
    names = ["a", "b", "bs", "bz"]
    if bias:
        inits["bias"] = rng.standard_normal(n).astype(np.float32)
        names.append("bias")
    feeds = {"a": rng.standard_normal((2, 7, 40)).astype(np.float32)}
    _single(
        helper.make_node("DynamicQuantizeMatMul", names, ["Y"], domain="com.microsoft"),
        feeds,
        inits,
    )


@pytest.mark.parametrize("zero_points", [False, True])
def test_matmul_integer_to_float_matches_onnxruntime(zero_points: bool) -> None:
    rng = np.random.default_rng(3)
    feeds = {"a": rng.integers(0, 256, (3, 5, 32)).astype(np.uint8)}
    inits = {
        "b": rng.integers(-64, 64, (32, 16)).astype(np.int8),
        "as": np.array(0.02, np.float32),
        "bs": (rng.random(16) * 0.01 + 1e-3).astype(np.float32),
        "bias": rng.standard_normal(16).astype(np.float32),
    }
    names = ["a", "b", "as", "bs", "", "", "bias"]
    if zero_points:
        inits["az"] = np.array(131, np.uint8)
        inits["bz"] = np.array(-3, np.int8)
        names[4:6] = ["az", "bz"]
    _single(
        helper.make_node("MatMulIntegerToFloat", names, ["Y"], domain="com.microsoft"), feeds, inits
    )


def test_matmul_integer_to_float_is_exact_for_full_range_weights() -> None:
    """Where onnxruntime's AVX2 kernels saturate (full-range int8 weights against large uint8
    inputs), ours give the exact integer product, scaled."""
    from modelloader.kernels.cpu.ms_fused import matmul_integer_to_float

    rng = np.random.default_rng(5)
    a = rng.integers(200, 256, (4, 64)).astype(np.uint8)
    b = rng.integers(-128, 128, (64, 8)).astype(np.int8)
    a_s, b_s = np.float32(0.02), (rng.random(8) * 0.01 + 1e-3).astype(np.float32)
    want = (a.astype(np.int64) @ b.astype(np.int64)).astype(np.float32) * (a_s * b_s)
    np.testing.assert_array_equal(matmul_integer_to_float(a, b, a_s, b_s), want)
