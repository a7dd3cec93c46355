"""The shipped digit classifiers (models/, made by scripts/make_example.py) run through modelloader
exactly as onnxruntime runs them, and reach the test accuracy the script recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import modelloader

ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the reference runtime")

MODELS = Path(__file__).resolve().parents[1] / "models"
# name -> shape of one batch of "pixels"
EXAMPLES = {"digits_mlp": (-1, 64), "digits_cnn": (-1, 1, 8, 8)}


def reference(path: Path, pixels: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"pixels": pixels}), strict=True))


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    with np.load(MODELS / "digits_test.npz") as data:
        return data["X"], data["y"]


@pytest.mark.parametrize("name", EXAMPLES)
def test_signature(name: str) -> None:
    model = modelloader.load(MODELS / f"{name}.onnx")
    [pixels] = model.inputs
    assert pixels.name == "pixels"
    assert np.dtype(pixels.dtype) == np.float32
    assert list(pixels.shape)[1:] == list(EXAMPLES[name])[1:]
    assert [(o.name, np.dtype(o.dtype)) for o in model.outputs] == [
        ("probabilities", np.float32),
        ("label", np.int64),
    ]


def test_shipped_input_matches_onnxruntime() -> None:
    path = MODELS / "digits_mlp.onnx"
    pixels = np.load(MODELS / "digits_mlp_input.npy")
    got = modelloader.load(path).predict({"pixels": pixels})
    want = reference(path, pixels)
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got["label"], want["label"])


@pytest.mark.parametrize("name", EXAMPLES)
def test_test_split_matches_onnxruntime_and_recorded_accuracy(
    name: str, test_split: tuple[np.ndarray, np.ndarray]
) -> None:
    path = MODELS / f"{name}.onnx"
    x, y = test_split
    pixels = x.reshape(EXAMPLES[name])
    got = modelloader.load(path).predict({"pixels": pixels})
    want = reference(path, pixels)

    assert got["probabilities"].dtype == np.float32 and got["label"].dtype == np.int64
    np.testing.assert_allclose(got["probabilities"], want["probabilities"], rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got["label"], got["probabilities"].argmax(axis=1))

    props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
    recorded = round(float(props["test_accuracy"]) * len(y))  # images right per the script
    assert int(np.sum(want["label"] == y)) == recorded
    assert int(np.sum(got["label"] == y)) == recorded
