"""onnxruntime's com.microsoft transformer fusions (kernels/cpu/ms_transformer.py) against
onnxruntime itself, every output of every op."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelloader

H = 16
RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 5, H)).astype(np.float32)
CONSTS = {
    "bias": RNG.standard_normal(H).astype(np.float32),
    "skip": RNG.standard_normal((2, 5, H)).astype(np.float32),
    "gamma": RNG.uniform(0.5, 2, H).astype(np.float32),
    "beta": RNG.standard_normal(H).astype(np.float32),
}

CASES = [
    ("Gelu", ["x"], 1, {}),
    ("BiasGelu", ["x", "bias"], 1, {}),
    ("FastGelu", ["x", "bias"], 1, {}),
    ("FastGelu", ["x"], 1, {}),
    ("QuickGelu", ["x"], 1, {}),
    ("QuickGelu", ["x"], 1, {"alpha": 1.5}),
    ("SkipLayerNormalization", ["x", "skip", "gamma", "beta", "bias"], 4, {"epsilon": 1e-5}),
    ("SkipLayerNormalization", ["x", "skip", "gamma"], 1, {}),
    ("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma", "bias"], 4, {"epsilon": 1e-5}),
    ("SkipSimplifiedLayerNormalization", ["x", "skip", "gamma"], 4, {}),
]


@pytest.mark.parametrize("op, inputs, n_out, attrs", CASES)
def test_matches_onnxruntime(op: str, inputs: list[str], n_out: int, attrs: dict) -> None:
    outs = [f"y{i}" for i in range(n_out)]
    graph = helper.make_graph(
        [helper.make_node(op, inputs, outs, domain="com.microsoft", **attrs)],
        "ms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5, H])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        initializer=[numpy_helper.from_array(CONSTS[i], i) for i in inputs if i in CONSTS],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": X})
    got = modelloader.load(model).predict(X)
    for name, w in zip(outs, want):
        assert got[name].shape == w.shape, name
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=2e-6, err_msg=f"{op} {name}")
