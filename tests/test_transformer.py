"""A PyTorch-exported transformer (models/tiny_transformer.onnx, scripts/make_transformer.py):
modelloader against onnxruntime, and its quantization (an attention mask holds -inf; the
exporter's shape arithmetic runs through Concat/Mul on tensors that must not be quantized)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import modelloader
from modelloader.quantize import QuantConfig, quantize

ort = pytest.importorskip("onnxruntime")

MODEL = Path(__file__).resolve().parents[1] / "models" / "tiny_transformer.onnx"


def _feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        mask = np.ones((2, 16), np.int64)
        mask[0, rng.integers(3, 16) :] = 0
        out.append({"ids": rng.integers(0, 100, (2, 16)).astype(np.int64), "mask": mask})
    return out


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def test_matches_onnxruntime() -> None:
    m = modelloader.load(MODEL)
    assert [(i.name, i.dtype, i.shape) for i in m.inputs] == [
        ("ids", np.dtype(np.int64), (2, 16)),
        ("mask", np.dtype(np.int64), (2, 16)),
    ]
    for feeds in _feeds(4):
        want = _ort(MODEL, feeds)
        got = m.predict(feeds)["logits"]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_static_keeps_mask_in_float_and_matches_onnxruntime(tmp_path: Path) -> None:
    cfg = QuantConfig(mode="static", eval_split=0.25, layer_report_samples=8)
    q = quantize(MODEL, cfg, _feeds(16, seed=1))
    report = q.report
    assert report is not None
    # the -inf padding mask is added to the attention scores in each of the two layers
    assert len(report.nonfinite_excluded) == 2
    assert all("self_attn" in name for name in report.nonfinite_excluded)
    assert report.outputs[0].cosine > 0.99
    hist = modelloader.load(MODEL).op_histogram
    assert q.op_histogram.get("QLinearMatMul", 0) + q.op_histogram.get("QuantizeLinear", 0) > 0
    assert q.op_histogram["Shape"] == hist["Shape"]  # shape arithmetic untouched
    out = tmp_path / "tiny.int8.onnx"
    q.save(out)
    for feeds in _feeds(3, seed=2):
        np.testing.assert_allclose(q.predict(feeds)["logits"], _ort(out, feeds), atol=1e-4)


def test_dynamic_matches_onnxruntime(tmp_path: Path) -> None:
    q = quantize(MODEL, QuantConfig(mode="dynamic", layer_report_samples=4), _feeds(8, seed=3))
    assert q.report is not None and q.report.outputs[0].cosine > 0.999
    out = tmp_path / "tiny.dyn.onnx"
    q.save(out)
    feeds = _feeds(1, seed=4)[0]
    np.testing.assert_allclose(q.predict(feeds)["logits"], _ort(out, feeds), atol=1e-4)
