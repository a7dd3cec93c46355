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
