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


def _run_both(node, inputs: dict[str, np.ndarray], inits: dict[str, np.ndarray], outs: list[str]):
    ints = {np.dtype(np.int32): TensorProto.INT32, np.dtype(np.float32): TensorProto.FLOAT}
    graph = helper.make_graph(
        [node],
        "ms",
        [helper.make_tensor_value_info(k, ints[v.dtype], list(v.shape)) for k, v in inputs.items()],
        [
            helper.make_tensor_value_info(
                o, TensorProto.INT32 if o == "mask_index" else TensorProto.FLOAT, None
            )
            for o in outs
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()
    want = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, inputs)
    got = modelloader.load(model).predict(inputs)
    for name, w in zip(outs, want):
        assert got[name].shape == w.shape and got[name].dtype == w.dtype, name
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=2e-6, err_msg=name)


B, S, N = 2, 6, 4
RAW = np.ones((B, S), np.int32)
RAW[1, 4:] = 0
RAW3 = (np.random.default_rng(1).random((B, S, S)) > 0.3).astype(np.int32)
RAW3[:, :, 0] = 1


@pytest.mark.parametrize(
    "mask, bias, attrs",
    [
        (None, False, {}),
        (None, False, {"unidirectional": 1}),
        (None, False, {"scale": 0.3}),
        (RAW, False, {}),
        (RAW, False, {"unidirectional": 1, "mask_filter_value": -1e9}),
        (RAW3, False, {}),
        (np.array([6, 3], np.int32), False, {}),  # key lengths (right padding)
        (np.array([6, 5, 0, 2], np.int32), False, {}),  # end and start positions
        (None, True, {}),
    ],
)
def test_attention_matches_onnxruntime(mask, bias, attrs) -> None:
    rng = np.random.default_rng(2)
    inputs = {"x": rng.standard_normal((B, S, H)).astype(np.float32)}
    inits = {
        "w": (rng.standard_normal((H, 3 * H)) * 0.3).astype(np.float32),
        "b": rng.standard_normal(3 * H).astype(np.float32),
    }
    names = ["x", "w", "b"]
    if mask is not None:
        inputs["m"] = mask
        names.append("m")
    if bias:
        inputs["ab"] = rng.standard_normal((1, N, S, S)).astype(np.float32)
        names += ["", "", "ab"][len(names) - 3 :]
    node = helper.make_node("Attention", names, ["y"], domain="com.microsoft", num_heads=N, **attrs)
    _run_both(node, inputs, inits, ["y"])


@pytest.mark.parametrize("segments, mask, positions", [(1, 1, 0), (1, 0, 0), (0, 1, 0), (1, 1, 1)])
def test_embed_layer_normalization_matches_onnxruntime(segments, mask, positions) -> None:
    rng = np.random.default_rng(3)
    vocab = 50
    inputs = {"ids": rng.integers(0, vocab, (B, 7)).astype(np.int32)}
    inits = {
        "word": rng.standard_normal((vocab, H)).astype(np.float32),
        "pos": rng.standard_normal((16, H)).astype(np.float32),
        "gamma": rng.uniform(0.5, 2, H).astype(np.float32),
        "beta": rng.standard_normal(H).astype(np.float32),
    }
    names = ["ids", "", "word", "pos", "", "gamma", "beta"]
    if segments:
        inputs["seg"] = rng.integers(0, 2, (B, 7)).astype(np.int32)
        inits["segment"] = rng.standard_normal((2, H)).astype(np.float32)
        names[1], names[4] = "seg", "segment"
    if mask or positions:
        names.append("mask" if mask else "")
        if mask:
            inputs["mask"] = np.ones((B, 7), np.int32)
            inputs["mask"][1, 5:] = 0
    if positions:
        names.append("position_ids")
        inputs["position_ids"] = np.array([[3, 2, 1, 0, 4, 5, 6]], np.int32)
    node = helper.make_node(
        "EmbedLayerNormalization", names, ["y", "mask_index", "sum"], domain="com.microsoft"
    )
    _run_both(node, inputs, inits, ["y", "mask_index", "sum"])


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("causal", [0, 1])
def test_attention_with_past_matches_onnxruntime(masked: bool, causal: int) -> None:
    """GPT-2 style: earlier keys/values come in as ``past``, ``present`` carries them on."""
    rng = np.random.default_rng(4)
    s, p = 3, 5
    inputs = {
        "x": rng.standard_normal((B, s, H)).astype(np.float32),
        "past": rng.standard_normal((2, B, N, p, H // N)).astype(np.float32),
    }
    inits = {
        "w": (rng.standard_normal((H, 3 * H)) * 0.3).astype(np.float32),
        "b": rng.standard_normal(3 * H).astype(np.float32),
    }
    names = ["x", "w", "b", "", "past"]
    if masked:
        inputs["m"] = np.ones((B, p + s), np.int32)
        inputs["m"][1, :2] = 0
        names[3] = "m"
    node = helper.make_node(
        "Attention", names, ["y", "present"], domain="com.microsoft", num_heads=N,
        unidirectional=causal,
    )  # fmt: skip
    _run_both(node, inputs, inits, ["y", "present"])


def test_attention_with_rotary_is_a_clear_error() -> None:
    from modelloader.kernels.cpu.ms_transformer import attention

    x = np.zeros((1, 2, 8), np.float32)
    with pytest.raises(ValueError, match="rotary embedding"):
        attention(x, np.zeros((8, 24), np.float32), num_heads=2, do_rotary=1)


@pytest.mark.parametrize("axis", [-1, 1])
def test_simplified_layer_normalization_matches_onnxruntime(axis: int) -> None:
    """onnxruntime's SimplifiedLayerNormalization, which it registers in the ai.onnx domain."""
    rng = np.random.default_rng(6)
    scale_shape = (H,) if axis == -1 else (5, H)
    inits = {"scale": rng.uniform(0.5, 2, scale_shape).astype(np.float32)}
    node = helper.make_node(
        "SimplifiedLayerNormalization", ["x", "scale"], ["y", "inv"], axis=axis, epsilon=1e-5
    )
    _run_both(node, {"x": X}, inits, ["y", "inv"])
