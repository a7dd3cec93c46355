#!/usr/bin/env python3
"""Train the two example digit classifiers and write them, with their data, to models/.

Outputs (every one is produced here; rerunning reproduces the same bytes on the same machine):

* ``digits_mlp.onnx``  MLP 64 -> 64 (ReLU) -> 10, trained with scikit-learn's MLPClassifier.
* ``digits_cnn.onnx``  Conv(8) -> ReLU -> MaxPool -> Conv(16) -> ReLU -> AveragePool -> Flatten
  -> Gemm -> Softmax, trained here with plain NumPy SGD.
* ``digits_mlp_input.npy`` / ``digits_cnn_input.npy``  the first five test images, float32.
* ``digits_test.npz``   held-out test split: ``X`` float32 [n, 64] in [0, 1], ``y`` int64 [n].
* ``digits_calib.npz``  a training subset for calibration: ``X`` float32 [n, 64], ``y`` int64.

Both models take ``pixels`` (float32, ``load_digits`` intensities divided by 16) with a symbolic
``batch`` dimension, and give ``probabilities`` float32 [batch, 10] and ``label`` int64 [batch].
The test accuracy printed is also stored in each model's ``metadata_props["test_accuracy"]``.

usage: python scripts/make_example.py [OUT_DIR]   (default: models/ beside this script's parent)
"""

from __future__ import annotations

import io
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from threadpoolctl import threadpool_limits

SEED = 0
OPSET = 17
IR_VERSION = 8
N_INPUT_IMAGES = 5
N_CALIB = 200
PRODUCER = "modelloader/scripts/make_example.py"


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Digits scaled to [0, 1] float32, split 75/25 stratified with a fixed seed."""
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return x_tr, x_te, y_tr, y_te


# ---------------------------------------------------------------------------------------------
# deterministic containers


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, val in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(val), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def finish_model(
    nodes: list[onnx.NodeProto],
    inits: dict[str, np.ndarray],
    pixel_shape: list[int | str],
    name: str,
    doc: str,
    accuracy: float,
) -> onnx.ModelProto:
    """Wrap ``nodes`` (ending in ``logits``) with Softmax + ArgMax heads into a checked model."""
    nodes = nodes + [
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        name,
        inputs=[helper.make_tensor_value_info("pixels", TensorProto.FLOAT, pixel_shape)],
        outputs=[
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 10]),
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
        ],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name=PRODUCER,
        ir_version=IR_VERSION,
        doc_string=doc,
    )
    helper.set_model_props(model, {"test_accuracy": f"{accuracy:.6f}"})
    onnx.checker.check_model(model, full_check=True)
    return model


# ---------------------------------------------------------------------------------------------
# MLP (scikit-learn)


def train_mlp(x_tr: np.ndarray, y_tr: np.ndarray) -> MLPClassifier:
    mlp = MLPClassifier(
        hidden_layer_sizes=(64,), activation="relu", max_iter=300, random_state=SEED
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(x_tr, y_tr)
    return mlp


def mlp_weights(mlp: MLPClassifier) -> dict[str, np.ndarray]:
    return {
        "fc1.weight": mlp.coefs_[0].astype(np.float32),  # [64, 64] as Gemm's B (K, N)
        "fc1.bias": mlp.intercepts_[0].astype(np.float32),
        "fc2.weight": mlp.coefs_[1].astype(np.float32),  # [64, 10]
        "fc2.bias": mlp.intercepts_[1].astype(np.float32),
    }


def mlp_logits(w: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """NumPy mirror of the exported MLP graph, up to the logits."""
    h = np.maximum(x @ w["fc1.weight"] + w["fc1.bias"], 0)
    return h @ w["fc2.weight"] + w["fc2.bias"]


def mlp_model(w: dict[str, np.ndarray], accuracy: float) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Gemm", ["pixels", "fc1.weight", "fc1.bias"], ["fc1"]),
        helper.make_node("Relu", ["fc1"], ["relu1"]),
        helper.make_node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], ["logits"]),
    ]
    doc = "sklearn MLPClassifier(64, relu) on load_digits; pixels = digits.data / 16."
    return finish_model(nodes, w, ["batch", 64], "digits_mlp", doc, accuracy)


# ---------------------------------------------------------------------------------------------
# CNN (NumPy SGD)


def conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same-padded 3x3 convolution via im2col; returns (output NCHW, cols for backward)."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))  # n,c,h,w,3,3
    cols = win.transpose(0, 2, 3, 1, 4, 5).reshape(n * h * wd, c * 9)
    out = cols @ w.reshape(w.shape[0], -1).T + b
    return out.reshape(n, h, wd, -1).transpose(0, 3, 1, 2), cols


def conv3x3_backward(
    dout: np.ndarray, cols: np.ndarray, w: np.ndarray, x_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, c, h, wd = x_shape
    d2 = dout.transpose(0, 2, 3, 1).reshape(n * h * wd, -1)
    dw = (d2.T @ cols).reshape(w.shape)
    db = d2.sum(axis=0)
    dcols = (d2 @ w.reshape(w.shape[0], -1)).reshape(n, h, wd, c, 3, 3)
    dxp = np.zeros((n, c, h + 2, wd + 2), dtype=dout.dtype)
    for i in range(3):
        for j in range(3):
            dxp[:, :, i : i + h, j : j + wd] += dcols[..., i, j].transpose(0, 3, 1, 2)
    return dxp[:, :, 1:-1, 1:-1], dw, db


def pool_blocks(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2)


def unpool(d: np.ndarray) -> np.ndarray:
    """Broadcast a pooled gradient back onto each 2x2 block (blocked layout)."""
    return d[:, :, :, None, :, None]


def cnn_forward(p: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, dict]:
    """NumPy mirror of the exported CNN graph, up to the logits; x is [n, 1, 8, 8]."""
    c1, cols1 = conv3x3(x, p["conv1.weight"], p["conv1.bias"])
    r1 = np.maximum(c1, 0)
    m1 = pool_blocks(r1).max(axis=(3, 5))
    c2, cols2 = conv3x3(m1, p["conv2.weight"], p["conv2.bias"])
    r2 = np.maximum(c2, 0)
    a2 = pool_blocks(r2).mean(axis=(3, 5))
    flat = a2.reshape(len(x), -1)
    logits = flat @ p["fc.weight"] + p["fc.bias"]
    cache = dict(x=x, c1=c1, cols1=cols1, r1=r1, m1=m1, c2=c2, cols2=cols2, r2=r2, a2=a2, flat=flat)
    return logits, cache


def cnn_backward(p: dict[str, np.ndarray], dlogits: np.ndarray, k: dict) -> dict[str, np.ndarray]:
    g = {"fc.weight": k["flat"].T @ dlogits, "fc.bias": dlogits.sum(axis=0)}
    da2 = (dlogits @ p["fc.weight"].T).reshape(k["a2"].shape)
    dr2 = np.broadcast_to(unpool(da2) / 4.0, pool_blocks(k["r2"]).shape).reshape(k["r2"].shape)
    dc2 = dr2 * (k["c2"] > 0)
    dm1, g["conv2.weight"], g["conv2.bias"] = conv3x3_backward(
        dc2, k["cols2"], p["conv2.weight"], k["m1"].shape
    )
    blocks = pool_blocks(k["r1"])
    mask = blocks == unpool(k["m1"])
    mask = mask / mask.sum(axis=(3, 5), keepdims=True)  # split the gradient between ties
    dr1 = (mask * unpool(dm1)).reshape(k["r1"].shape)
    dc1 = dr1 * (k["c1"] > 0)
    _, g["conv1.weight"], g["conv1.bias"] = conv3x3_backward(
        dc1, k["cols1"], p["conv1.weight"], k["x"].shape
    )
    return g


def train_cnn(
    x_tr: np.ndarray, y_tr: np.ndarray, epochs: int = 30, batch: int = 32, lr: float = 0.05
) -> dict[str, np.ndarray]:
    """Minibatch SGD with momentum on softmax cross-entropy, in float64 with a fixed seed."""
    rng = np.random.default_rng(SEED)

    def he(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:]))
        return rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)

    p = {
        "conv1.weight": he(8, 1, 3, 3),
        "conv1.bias": np.zeros(8),
        "conv2.weight": he(16, 8, 3, 3),
        "conv2.bias": np.zeros(16),
        "fc.weight": he(10, 64).T.copy(),  # stored [64, 10] as Gemm's B (K, N)
        "fc.bias": np.zeros(10),
    }
    vel = {k: np.zeros_like(v) for k, v in p.items()}
    x = x_tr.astype(np.float64).reshape(-1, 1, 8, 8)
    onehot = np.eye(10)[y_tr]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            logits, cache = cnn_forward(p, x[idx])
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
            grads = cnn_backward(p, (probs - onehot[idx]) / len(idx), cache)
            for name, grad in grads.items():
                vel[name] = 0.9 * vel[name] - lr * grad
                p[name] += vel[name]
    return {k: v.astype(np.float32) for k, v in p.items()}


def cnn_model(p: dict[str, np.ndarray], accuracy: float) -> onnx.ModelProto:
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    pool = {"kernel_shape": [2, 2], "strides": [2, 2]}
    nodes = [
        helper.make_node("Conv", ["pixels", "conv1.weight", "conv1.bias"], ["conv1"], **conv),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], **pool),
        helper.make_node("Conv", ["pool1", "conv2.weight", "conv2.bias"], ["conv2"], **conv),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("AveragePool", ["relu2"], ["pool2"], **pool),
        helper.make_node("Flatten", ["pool2"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"]),
    ]
    doc = "Tiny CNN trained with NumPy SGD on load_digits; pixels = digits.images / 16, NCHW."
    return finish_model(nodes, p, ["batch", 1, 8, 8], "digits_cnn", doc, accuracy)


# ---------------------------------------------------------------------------------------------


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "models"
    out.mkdir(parents=True, exist_ok=True)
    # One BLAS thread: ~10x faster for these tiny matrices, and the same summation order every run.
    with threadpool_limits(limits=1):
        write_all(out)


def write_all(out: Path) -> None:
    x_tr, x_te, y_tr, y_te = load_split()

    mlp = train_mlp(x_tr, y_tr)
    w = mlp_weights(mlp)
    mlp_acc = float(np.mean(mlp_logits(w, x_te).argmax(axis=1) == y_te))
    # The float32 export must classify the test split exactly as sklearn's float64 model does.
    assert mlp_acc == mlp.score(x_te, y_te), (mlp_acc, mlp.score(x_te, y_te))
    onnx.save(mlp_model(w, mlp_acc), out / "digits_mlp.onnx")

    p = train_cnn(x_tr, y_tr)
    cnn_logits, _ = cnn_forward(p, x_te.reshape(-1, 1, 8, 8))
    cnn_acc = float(np.mean(cnn_logits.argmax(axis=1) == y_te))
    onnx.save(cnn_model(p, cnn_acc), out / "digits_cnn.onnx")

    np.save(out / "digits_mlp_input.npy", x_te[:N_INPUT_IMAGES])
    np.save(out / "digits_cnn_input.npy", x_te[:N_INPUT_IMAGES].reshape(-1, 1, 8, 8))
    save_npz(out / "digits_test.npz", X=x_te, y=y_te)
    calib = np.random.default_rng(SEED).choice(len(x_tr), N_CALIB, replace=False)
    save_npz(out / "digits_calib.npz", X=x_tr[np.sort(calib)], y=y_tr[np.sort(calib)])

    print(f"digits_mlp test accuracy: {mlp_acc:.4f} ({len(y_te)} images)")
    print(f"digits_cnn test accuracy: {cnn_acc:.4f} ({len(y_te)} images)")


if __name__ == "__main__":
    main()
