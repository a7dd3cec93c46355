"""modelloader.quantize on the digits models: accuracy gates, report honesty, onnxruntime interop,
and integer execution of QDQ/QOperator/dynamic models quantized by onnxruntime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import modelloader
from modelloader.api import op_histogram
from modelloader.quantize import AccuracyGateError, QuantConfig, quantize
from modelloader.quantize.cli import quantize as quantize_cmd

ort = pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "models"
CALIB = MODELS / "digits_calib.npz"
TEST = MODELS / "digits_test.npz"
SHAPES = {"mlp": (-1, 64), "cnn": (-1, 1, 8, 8)}


def _integer_convs(hist) -> int:
    """Convs running on integers: QLinearConv, alone or with its clamp fused in."""
    return hist.get("QLinearConv", 0) + hist.get("modelloader:QLinearConvClip", 0)


def _test_split(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(TEST) as z:
        return z["X"].reshape(SHAPES[name]), z["y"]


def _ort_run(path: Path, x: np.ndarray, level: str = "all") -> list[np.ndarray]:
    so = ort.SessionOptions()
    if level == "none":
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"pixels": x})


@pytest.fixture(scope="module")
def float_acc() -> dict[str, float]:
    out = {}
    for name in SHAPES:
        x, y = _test_split(name)
        m = modelloader.load(MODELS / f"digits_{name}.onnx")
        out[name] = float((m.predict(x)["label"] == y).mean())
    return out


CASES = [
    ("mlp", "static", 0.5),
    ("cnn", "static", 0.5),
    ("mlp", "float16", 0.1),
    ("cnn", "float16", 0.1),
    ("mlp", "dynamic", 1.0),
    ("cnn", "dynamic", 1.0),
]


@pytest.mark.parametrize(("name", "mode", "max_loss"), CASES)
def test_accuracy_report_and_onnxruntime(
    tmp_path: Path, float_acc: dict[str, float], name: str, mode: str, max_loss: float
) -> None:
    """Test accuracy loss within the issue's bounds; the report's numbers are what is measured
    on the written file; onnxruntime runs it within the report's stated error."""
    x, y = _test_split(name)
    cfg = QuantConfig(mode=mode, per_channel=True, max_drop=max_loss)  # type: ignore[arg-type]
    q = quantize(MODELS / f"digits_{name}.onnx", cfg, CALIB, evaluation=TEST)
    rep = q.report
    assert rep is not None and rep.passed and rep.samples == len(y)
    # measured the way the report runs it: batches of config.batch_size
    out = {
        k: np.concatenate([q.predict(x[i : i + 64])[k] for i in range(0, len(x), 64)])
        for k in ("probabilities", "label")
    }
    acc = float((out["label"] == y).mean())
    assert 100 * (float_acc[name] - acc) <= max_loss + 1e-9
    probs = next(o for o in rep.outputs if o.name == "probabilities")
    fm = modelloader.load(MODELS / f"digits_{name}.onnx")
    ref = {
        k: np.concatenate([fm.predict(x[i : i + 64])[k] for i in range(0, len(x), 64)])
        for k in ("probabilities", "label")
    }
    agree = float((out["probabilities"].argmax(1) == ref["probabilities"].argmax(1)).mean())
    assert probs.top1_agreement == pytest.approx(agree, abs=1e-12)
    assert probs.quant_accuracy == pytest.approx(acc, abs=1e-12)
    assert probs.float_accuracy == pytest.approx(float_acc[name], abs=1e-12)
    assert rep.drop == pytest.approx(100 * (float_acc[name] - acc), abs=1e-9)
    # the file quantize writes runs in onnxruntime within the report's error (+1 output quantum
    # for integer rounding of the int8 graph, 1e-6 float slack)
    path = tmp_path / f"{name}_{mode}.onnx"
    q.save(path)
    onnx.checker.check_model(onnx.load(str(path)))
    for level in ("none", "all"):
        p_ort, l_ort = _ort_run(path, x, level)
        err = np.abs(p_ort - ref["probabilities"]).max()
        slack = 1e-6 if mode == "float16" else 1 / 255 + 1e-6
        assert err <= probs.max_abs_error + slack, (level, err, probs.max_abs_error)
        assert (l_ort == out["label"]).mean() >= 0.99


def test_static_runs_integer_ops() -> None:
    q = quantize(MODELS / "digits_cnn.onnx", QuantConfig(), CALIB, evaluation=TEST)
    hist = op_histogram(q.graph)
    assert _integer_convs(hist) == 2 and hist["com.microsoft:QGemm"] == 1
    assert hist["com.microsoft:QLinearAveragePool"] == 1
    assert "Conv" not in hist and "Gemm" not in hist
    names = {lay.name for lay in q.report.layers}  # type: ignore[union-attr]
    assert {"conv1", "conv2", "logits"} <= names


@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_methods_and_per_tensor(method: str) -> None:
    cfg = QuantConfig(method=method, per_channel=False, symmetric=True)  # type: ignore[arg-type]
    q = quantize(MODELS / "digits_mlp.onnx", cfg, CALIB)
    assert q.report is not None and q.report.samples == 40  # eval split of the calibration data
    assert q.report.outputs[0].cosine > 0.9


def test_gate_fails_and_auto_exclude_repairs() -> None:
    cfg = QuantConfig(method="entropy", max_drop=0.5)
    with pytest.raises(AccuracyGateError) as e:
        quantize(MODELS / "digits_cnn.onnx", cfg, CALIB, evaluation=TEST)
    assert e.value.report.drop > 0.5
    q = quantize(
        MODELS / "digits_cnn.onnx",
        QuantConfig(method="entropy", max_drop=0.5, auto_exclude=True),
        CALIB,
        evaluation=TEST,
    )
    assert q.report is not None and q.report.passed and q.report.auto_excluded
    assert set(q.report.auto_excluded) <= set(q.report.excluded)


def test_exclude_keeps_layer_float() -> None:
    q = quantize(MODELS / "digits_cnn.onnx", QuantConfig(exclude=("conv1",)), CALIB)
    hist = op_histogram(q.graph)
    assert _integer_convs(hist) == 1
    assert "conv1" not in {lay.name for lay in q.report.layers}  # type: ignore[union-attr]


def test_iterable_calibration() -> None:
    with np.load(CALIB) as z:
        xs = z["X"]
    batches = ({"pixels": xs[i : i + 50]} for i in range(0, len(xs), 50))
    q = quantize(MODELS / "digits_mlp.onnx", QuantConfig(), batches)
    assert q.predict(xs[:3])["probabilities"].shape == (3, 10)


def test_cli(tmp_path: Path) -> None:
    out, rep = tmp_path / "q.onnx", tmp_path / "r.json"
    args = ["models/digits_cnn.onnx", str(out), "--calibration", str(CALIB), "--eval", str(TEST)]
    r = CliRunner().invoke(quantize_cmd, [*args, "--report", str(rep), "--max-drop", "0.5"])
    assert r.exit_code == 0, r.output
    assert out.exists() and json.loads(rep.read_text())["passed"] is True
    out2 = tmp_path / "bad.onnx"
    args[1] = str(out2)
    r = CliRunner().invoke(quantize_cmd, [*args, "--method", "entropy", "--max-drop", "0.5"])
    assert r.exit_code != 0 and not out2.exists()
    r = CliRunner().invoke(
        quantize_cmd, [*args, "--method", "entropy", "--max-drop", "0.5", "--auto-exclude"]
    )
    assert r.exit_code == 0 and "kept in float" in r.output and out2.exists()


# --------------------------------------------------------------------------- third-party models


def _ort_quantized(tmp_path: Path, name: str, kind: str) -> Path:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_dynamic,
        quantize_static,
    )

    with np.load(CALIB) as z:
        xs = z["X"].reshape(SHAPES[name])

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"pixels": xs[i : i + 50]} for i in range(0, len(xs), 50)])

        def get_next(self) -> dict | None:
            return next(self.it, None)

    src, dst = MODELS / f"digits_{name}.onnx", tmp_path / f"{name}_{kind}.onnx"
    if kind == "dynamic":
        quantize_dynamic(src, dst)
    else:
        fmt = QuantFormat.QDQ if kind == "qdq" else QuantFormat.QOperator
        quantize_static(src, dst, Reader(), quant_format=fmt, per_channel=True)
    return dst


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("kind", ["qdq", "qoperator", "dynamic"])
def test_onnxruntime_quantized_models_run_integer(tmp_path: Path, name: str, kind: str) -> None:
    """Every quantized tensor matches onnxruntime within one quantum; no float Conv/Gemm left."""
    path = _ort_quantized(tmp_path, name, kind)
    proto = onnx.load(str(path))
    zp_type = {i.name: i.data_type for i in proto.graph.initializer}
    qs = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[2] in zp_type]
    for n in qs:  # expose every quantized tensor
        proto.graph.output.append(
            onnx.helper.make_tensor_value_info(n.output[0], zp_type[n.input[2]], None)
        )
    exposed = tmp_path / "exposed.onnx"
    onnx.save(proto, str(exposed))
    x, _ = _test_split(name)
    m = modelloader.load(exposed)
    hist = op_histogram(m.graph)
    assert not {"Conv", "Gemm", "MatMul"} & set(hist), hist
    got = m.predict(x)
    for level in ("none", "all"):
        so = ort.SessionOptions()
        if level == "none":
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        s = ort.InferenceSession(str(exposed), so, providers=["CPUExecutionProvider"])
        ref = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"pixels": x})))
        for n in qs:
            k = n.output[0]
            diff = np.abs(ref[k].astype(np.int32) - got[k].astype(np.int32)).max()
            limit = 1 if "probabilities" not in k else 16  # softmax of logits 1 quantum apart
            assert diff <= limit, (level, k, diff)
        assert (ref["label"] == got["label"]).mean() >= 0.99
        if kind == "qoperator":
            np.testing.assert_allclose(ref["probabilities"], got["probabilities"], atol=2e-2)
        # dynamic: onnxruntime's u8s8 MatMulInteger saturates int16 pair sums on AVX2 machines
        # (int8 weights), so only the labels are compared; modelloader's int32 result is exact


def test_fixed_batch_models_get_whole_batches() -> None:
    """A model whose inputs fix the batch dimension (2 here) is fed batches of exactly that
    size, and the evaluation split and layer samples never cut one."""
    from modelloader.ir import Value
    from modelloader.quantize import load_data

    inputs = [Value("x", np.dtype(np.float32), (2, 3))]
    data = load_data({"x": np.arange(30, dtype=np.float32).reshape(10, 3)}, inputs)
    assert data.whole and [len(b["x"]) for b in data.batches] == [2] * 5
    calib, held = data.split(0.3)
    assert (calib.samples, held.samples) == (6, 4)
    assert all(len(b["x"]) == 2 for b in calib.batches + held.batches)
    assert data.take(0, 3).samples == 4  # the batches starting before sample 3, entire
    free = load_data({"x": np.zeros((10, 3), np.float32)}, [Value("x", None, ("n", 3))])
    assert not free.whole and free.split(0.3)[1].samples == 3


@pytest.mark.parametrize("mode", ["dynamic", "float16"])
def test_no_data_measures_error_on_random_inputs(mode: str) -> None:
    """Without calibration or evaluation data the report is the quantization error on seeded
    random inputs, recomputed here; it says so, and a gate is refused rather than passed."""
    from modelloader.quantize import RANDOM_SAMPLES
    from modelloader.quantize.calibrate import random_dataset

    path = MODELS / "digits_cnn.onnx"
    q = quantize(path, QuantConfig(mode=mode))  # type: ignore[arg-type]
    rep = q.report
    assert rep.random_inputs and rep.samples == RANDOM_SAMPLES
    assert "seeded random inputs" in rep.format() and "not accuracy" in rep.format()
    fm = modelloader.load(path)
    [batch] = random_dataset(fm.graph.inputs, RANDOM_SAMPLES).batches
    want, got = fm.predict(batch)["probabilities"], q.predict(batch)["probabilities"]
    probs = next(o for o in rep.outputs if o.name == "probabilities")
    assert probs.max_abs_error == pytest.approx(float(np.abs(got - want).max()), rel=1e-6)
    assert probs.float_accuracy is None  # no labels: no accuracy claimed
    with pytest.raises(ValueError, match="max_drop needs data"):
        quantize(path, QuantConfig(mode=mode, max_drop=1.0))  # type: ignore[arg-type]
