"""Hybrid (dynamic-range int8) TFLite ops: float activations quantized on the fly.

Fixtures ``hybrid_ops_dynint8`` (per-channel filters), ``hybrid_ops_dynint8_per_tensor`` and
``mobilenet_v2_dynint8`` come from scripts/make_tflite_fixtures.py with outputs of the
interpreter's reference kernels; the kernels in kernels/cpu/tflite_hybrid.py reproduce their
arithmetic, so the agreement asserted here is far tighter than the fixtures' rtol 1e-4.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import modelloader
from modelloader.importers.tflite.reader import parse
from modelloader.kernels.cpu.tflite_hybrid import (
    _round_away,
    asymmetric_quantize,
    hybrid_fully_connected,
    symmetric_quantize,
)

DIR = Path(__file__).resolve().parents[2] / "models" / "tflite"
MANIFEST = DIR / "manifest.json"
HYBRID = ("hybrid_ops_dynint8", "hybrid_ops_dynint8_per_tensor", "mobilenet_v2_dynint8")


def _entry(name: str) -> dict:
    if not MANIFEST.exists():
        pytest.skip("models/tflite/manifest.json not generated yet")
    data = json.loads(MANIFEST.read_text())
    if name not in data:
        pytest.skip(f"fixture {name} not generated")
    return data[name]


def _run(name: str) -> tuple[dict, dict[str, np.ndarray], modelloader.Model]:
    e = _entry(name)
    arrays = np.load(DIR / e["expected"])
    m = modelloader.load(DIR / e["file"])
    feed = {i["name"]: arrays[f"input:{i['name']}"] for i in e["inputs"]}
    out = m.predict(feed)
    return (
        e,
        {o["name"]: arrays[f"output:{o['name']}"] for o in e["outputs"]}
        | {f"got:{k}": np.asarray(v) for k, v in out.items()},
        m,
    )


@pytest.mark.parametrize("name", HYBRID)
def test_hybrid_fixture_matches_reference_kernels(name: str) -> None:
    e, res, m = _run(name)
    for o in e["outputs"]:
        got, want = res[f"got:{o['name']}"], res[o["name"]]
        assert got.dtype == want.dtype == np.float32
        # a few float32 ulps: the same integer accumulators, scaled in float32
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6, err_msg=o["name"])
    ops = {n.op for n in m.graph.nodes}
    assert ops & {"TFLiteHybridConv", "TFLiteHybridFullyConnected"}


def test_mobilenet_dynint8_uses_hybrid_kernels() -> None:
    e = _entry("mobilenet_v2_dynint8")
    m = modelloader.load(DIR / e["file"])
    ops = [n.op for n in m.graph.nodes]
    # filters under 1024 elements keep float weights: count the int8 ones in the file
    sg = parse((DIR / e["file"]).read_bytes()).subgraphs[0]
    weighted = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
    int8 = Counter(
        op.name
        for op in sg.operators
        if op.name in weighted and sg.tensors[op.inputs[1]].dtype == np.int8
    )
    assert int8["CONV_2D"] > 0 and int8["DEPTHWISE_CONV_2D"] > 0
    assert ops.count("TFLiteHybridConv") == int8["CONV_2D"]
    assert ops.count("TFLiteHybridDepthwiseConv") == int8["DEPTHWISE_CONV_2D"]
    assert ops.count("TFLiteHybridFullyConnected") == int8["FULLY_CONNECTED"] == 1
    assert "DequantizeLinear" not in ops


def test_mobilenet_dynint8_vs_default_resolver_live() -> None:
    """The default resolver (XNNPACK) quantizes differently; it stays within its own
    recorded distance of the reference kernels, and so of modelloader."""
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    e, res, _ = _run("mobilenet_v2_dynint8")
    it = litert.Interpreter(model_path=str(DIR / e["file"]), num_threads=1)
    arrays = np.load(DIR / e["expected"])
    feed = {i["name"]: arrays[f"input:{i['name']}"] for i in e["inputs"]}
    live = it.get_signature_runner(e["signature"])(**feed)
    bound = float(e["other_resolvers_max_abs_diff"]["BUILTIN"])
    for o in e["outputs"]:
        diff = np.abs(res[f"got:{o['name']}"].astype(np.float64) - live[o["name"]])
        assert float(diff.max()) <= 2 * bound + 1e-6


def test_round_half_away_from_zero() -> None:
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 2.4999, -1.2], np.float32)
    np.testing.assert_array_equal(_round_away(x), [1, 2, 3, -1, -3, 2, -1])


def test_symmetric_quantize() -> None:
    rows = np.array([[0.0, 1.27, -2.54, 0.635], [0, 0, 0, 0]], np.float32)
    q, scale, zp = symmetric_quantize(rows)
    np.testing.assert_array_equal(q[0], [0, 64, -127, 32])  # 31.75 -> 32 (half away)
    np.testing.assert_array_equal(q[1], 0)
    assert scale[1] == 1 and np.all(zp == 0)
    assert scale.dtype == np.float32 and scale[0] == np.float32(np.float32(2.54) / 127)


def test_asymmetric_quantize() -> None:
    rows = np.array([[0.5, 1.0, 2.0], [-1.0, 0.0, 3.0], [0, 0, 0]], np.float32)
    q, scale, zp = asymmetric_quantize(rows)
    assert zp[0] == -128 and q[0, 2] == 127  # all positive: min is 0
    assert scale[0] == np.float32(2.0 / 255)
    assert zp[1] == -64  # -128 + 1 / (4 / 255) = -64.25
    assert q[1, 1] == zp[1]  # 0.0 is exact
    np.testing.assert_array_equal(q[2], 0)
    assert zp[2] == 0 and scale[2] == 1


def test_fully_connected_zero_point_correction() -> None:
    """Asymmetric rows: the result equals the symmetric formula on (q - zp)."""
    r = np.random.default_rng(0)
    x = (r.standard_normal((4, 32)) + 1.5).astype(np.float32)
    w = r.integers(-127, 128, (8, 32)).astype(np.int8)
    ws = np.full(8, 0.01, np.float32)
    b = r.standard_normal(8).astype(np.float32)
    y = hybrid_fully_connected(x, w, ws, b, asymmetric=1)
    q, xs, zp = asymmetric_quantize(x)
    acc = (q - zp[:, None]) @ w.astype(np.int64).T
    want = b + acc.astype(np.float32) * (xs[:, None] * ws).astype(np.float32)
    np.testing.assert_array_equal(y, want)
    np.testing.assert_allclose(y, x @ (w.astype(np.float32) * 0.01).T + b, atol=0.05)
