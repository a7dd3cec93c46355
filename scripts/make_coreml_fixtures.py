#!/usr/bin/env python3
"""Builds the CoreML test fixtures in models/coreml/ and their expected outputs (issue 4).

CoreML's own ``predict()`` needs macOS, so expected outputs come from the model each
fixture was made from (its "source framework"):

* NeuralNetworkBuilder models (``nn_builder_cnn``, ``nn_image_bgr``, ``nn_classifier``):
  a straightforward NumPy reference in this script, from the same seeded weights.
* PyTorch models converted with ``ct.convert`` (``resnet_*``, ``transformer_*``): the
  PyTorch model's outputs.
* Compressed variants: PyTorch with the SAME weights decompressed, read back from the
  saved file (see ``fused_weights_from_mlprogram`` / ``fused_weights_from_nn``). Both
  CoreML backends fold BatchNorm into the convolutions, so those references run a
  BatchNorm-free copy of the ResNet (``ResNet(fused=True)``) whose conv/linear weights and
  biases are all taken from the file, in graph order (shapes are checked).

Every file is written by this script from seeded data (no downloads). Outputs in
``models/coreml/``: ``<name>.mlmodel`` / ``<name>.mlpackage/`` (+ one ``.mlpackage.zip``),
``<name>.npz`` with ``input:<feature>`` / ``output:<feature>`` (CoreML feature names from
the spec) and ``manifest.json`` (see ``describe()``).

Producers are developer-only (never runtime deps). They install into the repo's main
environment without changing numpy / onnx / onnxruntime, so no separate venv is needed::

    pip install torch==2.13.0      # the CPU build, from local disk; never a CUDA build
    pip install coremltools        # tested with 9.0 (it warns that torch 2.13 is untested)
    python scripts/make_coreml_fixtures.py
    python scripts/make_coreml_fixtures.py --only resnet_nn,nn_builder_cnn

(tested with torch 2.13.0+cpu, coremltools 9.0, numpy 2.4, scikit-learn 1.9; the script pins
OpenMP/BLAS to one thread because scikit-learn's k-means palettes depend on the thread count.)

Determinism: everything is seeded; ``.mlpackage`` Manifest.json item identifiers (random
UUIDs in coremltools) are rewritten to UUIDs derived from the item path, and zips/npz use
fixed timestamps, so reruns give identical bytes (``manifest.json`` records sha256 of every
file; ``nondeterminism`` notes anything that is not reproducible).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import uuid
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# scikit-learn's KMeans (coremltools' palettisation) gives thread-count-dependent palettes,
# and different ones run to run when threads are oversubscribed: pin everything to 1 thread.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
warnings.filterwarnings("ignore")
logging.disable(logging.WARNING)

import coremltools as ct  # noqa: E402
import coremltools.optimize.coreml as cto  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from coremltools.models import datatypes  # noqa: E402
from coremltools.models.neural_network import NeuralNetworkBuilder  # noqa: E402
from coremltools.models.neural_network import quantization_utils as nnq  # noqa: E402
from coremltools.models.utils import _apply_graph_pass  # noqa: E402
from coremltools.optimize.coreml._quantization_passes import WeightDecompressor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "models" / "coreml"
SEED = 0

TOLERANCES = {
    "fp32": {"rtol": 1e-4, "atol": 1e-5},
    # fp16 compute: compare logits loosely and require the same arg-max on the last axis.
    "fp16": {"rtol": 1e-2, "atol": 1e-2, "same_top1": True},
}


@dataclass
class Fixture:
    name: str
    file: str  # path relative to models/coreml (file, package directory or zip)
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    precision: str  # "fp32" | "fp16" (compute precision of the CoreML model)
    expected_from: str
    compression: str = "none"
    spec_file: str | None = None  # where to read the spec from, when `file` is a zip
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)


def rng(tag: str) -> np.random.Generator:
    """A generator seeded by SEED and the fixture tag (independent of build order)."""
    return np.random.default_rng([SEED, int(hashlib.sha256(tag.encode()).hexdigest()[:8], 16)])


def f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)


# ----------------------------------------------------------------------------------------
# NumPy reference for the NeuralNetwork layers used below (rank-3 CHW blobs, no batch).


def same_pads(size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """CoreML SAME padding, BOTTOM_RIGHT_HEAVY: the extra pixel goes at the end."""
    eff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def np_conv(x, w, b, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1), groups=1):
    """x: CHW, w: OIHW (I = C/groups), pads: (top, bottom, left, right)."""
    x = np.pad(np.asarray(x, np.float64), ((0, 0), pads[:2], pads[2:]))
    o, ig, kh, kw = w.shape
    c, h, wd = x.shape
    oh = (h - (kh - 1) * dilation[0] - 1) // stride[0] + 1
    ow = (wd - (kw - 1) * dilation[1] - 1) // stride[1] + 1
    y = np.zeros((o, oh, ow))
    og = o // groups
    for g in range(groups):
        xg = x[g * ig : (g + 1) * ig]
        wg = np.asarray(w[g * og : (g + 1) * og], np.float64)
        for i in range(kh):
            for j in range(kw):
                r0, c0 = i * dilation[0], j * dilation[1]
                patch = xg[
                    :, r0 : r0 + stride[0] * oh : stride[0], c0 : c0 + stride[1] * ow : stride[1]
                ]
                y[g * og : (g + 1) * og] += np.einsum("oc,chw->ohw", wg[:, :, i, j], patch)
    if b is not None:
        y += np.asarray(b, np.float64)[:, None, None]
    return y


def np_pool(x, k, stride, pads, kind, exclude_pad=True):
    """Max / average pooling on CHW with explicit (top, bottom, left, right) padding."""
    c, h, w = x.shape
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, ((0, 0), pads[:2], pads[2:]), constant_values=fill)
    ones = np.pad(np.ones((h, w)), (pads[:2], pads[2:]))
    oh = (xp.shape[1] - k[0]) // stride[0] + 1
    ow = (xp.shape[2] - k[1]) // stride[1] + 1
    acc = np.full((c, oh, ow), fill)
    cnt = np.zeros((oh, ow))
    for i in range(k[0]):
        for j in range(k[1]):
            win = xp[:, i : i + stride[0] * oh : stride[0], j : j + stride[1] * ow : stride[1]]
            acc = np.maximum(acc, win) if kind == "max" else acc + win
            cnt += ones[i : i + stride[0] * oh : stride[0], j : j + stride[1] * ow : stride[1]]
    if kind == "max":
        return acc
    return acc / (cnt if exclude_pad else k[0] * k[1])


def np_softmax(x, axis=0):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# The twelve NeuralNetwork activation kinds: (builder name, params, NumPy reference).
def activation_table(r: np.random.Generator, c: int) -> list[tuple[str, object, Callable]]:
    prelu = f32(r.uniform(0.05, 0.3, c))
    psp_a, psp_b = f32(r.uniform(0.5, 1.5, c)), f32(r.uniform(0.5, 1.5, c))
    ch = (slice(None), None, None)
    return [
        ("RELU", None, lambda x: np.maximum(x, 0)),
        ("LEAKYRELU", [0.1], lambda x: np.where(x >= 0, x, 0.1 * x)),
        ("SIGMOID", None, lambda x: 1 / (1 + np.exp(-x))),
        ("TANH", None, np.tanh),
        ("PRELU", prelu, lambda x: np.where(x >= 0, x, prelu[ch] * x)),
        ("ELU", 0.7, lambda x: np.where(x >= 0, x, 0.7 * np.expm1(x))),
        ("SOFTPLUS", None, lambda x: np.logaddexp(0, x)),
        ("SCALED_TANH", [1.5, 0.7], lambda x: 1.5 * np.tanh(0.7 * x)),
        ("LINEAR", [0.5, -0.25], lambda x: 0.5 * x - 0.25),
        ("SIGMOID_HARD", [0.2, 0.5], lambda x: np.clip(0.2 * x + 0.5, 0, 1)),
        (
            "PARAMETRICSOFTPLUS",
            [psp_a, psp_b],
            lambda x: psp_a[ch] * np.logaddexp(0, psp_b[ch] * x),
        ),
        ("THRESHOLDEDRELU", 0.3, lambda x: np.where(x >= 0.3, x, 0.0)),
    ]


def builder_w(w: np.ndarray) -> np.ndarray:
    """OIHW -> the builder's (kh, kw, kernel_channels, out) layout."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def build_nn_builder_cnn(out: Path) -> list[Fixture]:
    """A classic (rank-5 mapped) NeuralNetwork CNN exercising most legacy layers."""
    r = rng("nn_builder_cnn")
    x = f32(r.standard_normal((3, 12, 12)))
    w1, b1 = f32(r.normal(0, 0.4, (8, 3, 3, 3))), f32(r.normal(0, 0.1, 8))
    gamma, beta = f32(r.uniform(0.5, 1.5, 8)), f32(r.normal(0, 0.2, 8))
    mean, var = f32(r.normal(0, 0.2, 8)), f32(r.uniform(0.5, 2.0, 8))
    w2, b2 = f32(r.normal(0, 0.4, (8, 4, 3, 3))), f32(r.normal(0, 0.1, 8))
    acts = activation_table(r, 8)
    w3 = f32(r.normal(0, 0.15, (16, 8 * len(acts), 1, 1)))
    wfc, bfc = f32(r.normal(0, 0.1, (10, 256))), f32(r.normal(0, 0.1, 10))
    wfc2 = f32(r.normal(0, 0.2, (10, 16)))
    const = f32(r.normal(0, 0.5, (10, 1, 1)))

    out_shapes = {
        "acts": (8 * len(acts), 8, 8),
        "reshaped": (16, 4, 4),
        "logits": (10, 1, 1),
        "probs": (10, 1, 1),
    }
    b = NeuralNetworkBuilder(
        [("data", datatypes.Array(3, 12, 12))],
        [(k, datatypes.Array(*v)) for k, v in out_shapes.items()],
    )
    b.add_convolution(
        "conv1",
        3,
        8,
        3,
        3,
        1,
        1,
        "same",
        1,
        builder_w(w1),
        b1,
        True,
        input_name="data",
        output_name="c1",
    )
    b.add_batchnorm(
        "bn1", 8, gamma, beta, mean, var, input_name="c1", output_name="bn1", epsilon=1e-3
    )
    b.add_activation("relu1", "RELU", "bn1", "r1")
    b.add_convolution(
        "conv2_grouped_dilated", 4, 8, 3, 3, 1, 1, "valid", 2, builder_w(w2), b2, True,
        input_name="r1", output_name="c2", dilation_factors=[2, 2],
    )  # fmt: skip
    names = []
    for kind, params, _ in acts:
        b.add_activation(f"act_{kind.lower()}", kind, "c2", f"a_{kind.lower()}", params=params)
        names.append(f"a_{kind.lower()}")
    b.add_elementwise("concat_acts", names, "acts", "CONCAT")
    b.add_convolution(
        "conv3_1x1",
        96,
        16,
        1,
        1,
        1,
        1,
        "valid",
        1,
        builder_w(w3),
        None,
        False,
        input_name="acts",
        output_name="c3",
    )
    b.add_pooling("maxpool", 2, 2, 2, 2, "MAX", "VALID", "c3", "mp")
    b.add_pooling("avgpool_same", 3, 3, 1, 1, "AVERAGE", "SAME", "mp", "ap", exclude_pad_area=True)
    b.add_upsample("upsample", 2, 2, "ap", "up", mode="NN")
    b.add_padding(
        "pad_reflect", 1, 1, 1, 1, input_name="up", output_name="pd", padding_type="reflection"
    )
    b.add_unary("abs", "pd", "u1", "abs")
    b.add_unary("rsqrt", "u1", "u2", "rsqrt", epsilon=1.0)
    b.add_unary("power", "u2", "u3", "power", alpha=2.0, shift=-0.5, scale=3.0)
    b.add_pooling("global_max", 0, 0, 0, 0, "MAX", "VALID", "u3", "gmax", is_global=True)
    b.add_reduce("reduce_sum_hw", "u3", "rsum", "HW", "sum")
    b.add_elementwise("mul", ["gmax", "rsum"], "m", "MULTIPLY")
    b.add_permute("permute", (0, 2, 3, 1), "mp", "perm")
    b.add_reshape("reshape", "perm", "reshaped", (16, 4, 4), 0)
    b.add_flatten("flatten", 0, "reshaped", "flat")
    b.add_inner_product("fc", wfc, bfc, 256, 10, True, "flat", "fc")
    b.add_inner_product("fc2", wfc2, None, 16, 10, False, "m", "fc2")
    b.add_load_constant("const", "k", const, (10, 1, 1))
    b.add_elementwise("add3", ["fc", "fc2", "k"], "logits", "ADD")
    b.add_softmax("softmax", "logits", "probs")

    # NumPy reference (float64, cast to float32 at the end).
    c1 = np_conv(x, w1, b1, pads=(1, 1, 1, 1))
    bn = (c1 - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3) * gamma[
        :, None, None
    ] + beta[:, None, None]
    c2 = np_conv(np.maximum(bn, 0), w2, b2, dilation=(2, 2), groups=2)
    a = np.concatenate([fn(c2) for _, _, fn in acts], axis=0)
    c3 = np_conv(a, w3, None)
    mp = np_pool(c3, (2, 2), (2, 2), (0, 0, 0, 0), "max")
    ap = np_pool(mp, (3, 3), (1, 1), (1, 1, 1, 1), "avg", exclude_pad=True)
    up = ap.repeat(2, axis=1).repeat(2, axis=2)
    pd = np.pad(up, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    u3 = (3.0 * (1 / np.sqrt(np.abs(pd) + 1.0)) - 0.5) ** 2
    m = u3.max(axis=(1, 2)) * u3.sum(axis=(1, 2))
    reshaped = mp.transpose(1, 2, 0).reshape(16, 4, 4)
    logits = wfc @ reshaped.reshape(-1) + bfc + wfc2 @ m + const.reshape(-1)
    outs = {
        "acts": f32(a),
        "reshaped": f32(reshaped),
        "logits": f32(logits.reshape(10, 1, 1)),
        "probs": f32(np_softmax(logits).reshape(10, 1, 1)),
    }
    name = "nn_builder_cnn"
    save_spec(b.spec, out / f"{name}.mlmodel")
    return [
        Fixture(
            name,
            f"{name}.mlmodel",
            {"data": x},
            outs,
            "fp32",
            "NumPy reference in scripts/make_coreml_fixtures.py from the same seeded weights",
            notes=[
                "rank-3 CHW blobs (classic NeuralNetwork shape mapping, no batch axis)",
                "features are declared DOUBLE multiarrays (the builder default); CoreML computes "
                "in float32 and the npz holds float32",
                "unary: x <- scale*x + shift first; rsqrt = 1/sqrt(x+epsilon); power = x**alpha",
                "avg pool SAME excludes the padded area; conv SAME is BOTTOM_RIGHT_HEAVY",
            ],
        )
    ]


def build_nn_image_bgr(out: Path) -> list[Fixture]:
    """imageType input (RGB 32x32 image, BGR channel order, scale and per-channel bias)."""
    r = rng("nn_image_bgr")
    img = r.integers(0, 256, (32, 32, 3), dtype=np.uint8)  # HxWxC, RGB
    scale, rb, gb, bb = 1 / 127.5, -1.0, -0.9, -0.8
    w, bias = f32(r.normal(0, 0.3, (4, 3, 3, 3))), f32(r.normal(0, 0.1, 4))
    wfc, bfc = f32(r.normal(0, 0.5, (5, 4))), f32(r.normal(0, 0.1, 5))
    b = NeuralNetworkBuilder(
        [("image", datatypes.Array(3, 32, 32))],
        [("features", datatypes.Array(4, 16, 16)), ("probs", datatypes.Array(5, 1, 1))],
    )
    b.add_convolution(
        "conv_s2_same",
        3,
        4,
        3,
        3,
        2,
        2,
        "same",
        1,
        builder_w(w),
        bias,
        True,
        input_name="image",
        output_name="features",
    )
    b.add_activation("relu", "RELU", "features", "r")
    b.add_pooling("gap", 0, 0, 0, 0, "AVERAGE", "VALID", "r", "gap", is_global=True)
    b.add_flatten("flatten", 0, "gap", "flat")
    b.add_inner_product("fc", wfc, bfc, 4, 5, True, "flat", "fc")
    b.add_softmax("softmax", "fc", "probs")
    b.set_pre_processing_parameters(
        image_input_names=["image"],
        is_bgr=True,
        red_bias=rb,
        green_bias=gb,
        blue_bias=bb,
        image_scale=scale,
    )
    # CoreML: tensor channel order follows the colorSpace (BGR), value = scale * pixel + bias.
    t = img.astype(np.float64)[..., ::-1].transpose(2, 0, 1) * np.float32(scale)
    t += np.array([bb, gb, rb])[:, None, None]
    feats = np_conv(t, w, bias, stride=(2, 2), pads=same_pads(32, 3, 2) * 2)
    logits = wfc @ np.maximum(feats, 0).mean(axis=(1, 2)) + bfc
    name = "nn_image_bgr"
    save_spec(b.spec, out / f"{name}.mlmodel")
    return [
        Fixture(
            name,
            f"{name}.mlmodel",
            {"image": img},
            {"features": f32(feats), "probs": f32(np_softmax(logits).reshape(5, 1, 1))},
            "fp32",
            "NumPy reference (preprocessing + layers) from the same seeded weights",
            notes=[
                "input:image is an HxWxC uint8 array in RGB order (like a PIL image); the spec's "
                "colorSpace is BGR, so the network sees channels [B, G, R] * channelScale + "
                "[blueBias, greenBias, redBias]",
                "features = first conv output, stride 2 SAME (BOTTOM_RIGHT_HEAVY: pad 0 top/left, 1 bottom/right)",
            ],
            extra={
                "preprocessing": {
                    "colorSpace": "BGR",
                    "channelScale": scale,
                    "redBias": rb,
                    "greenBias": gb,
                    "blueBias": bb,
                }
            },
        )
    ]


def build_nn_classifier(out: Path) -> list[Fixture]:
    """neuralNetworkClassifier with string class labels."""
    r = rng("nn_classifier")
    labels = ["cat", "dog", "bird", "fish"]
    x = f32(r.standard_normal(16))
    w1, b1 = f32(r.normal(0, 0.5, (8, 16))), f32(r.normal(0, 0.1, 8))
    w2, b2 = f32(r.normal(0, 0.8, (4, 8))), f32(r.normal(0, 0.1, 4))
    b = NeuralNetworkBuilder(
        [("features", datatypes.Array(16))], [("probs", datatypes.Array(4))], mode="classifier"
    )
    b.add_inner_product("fc1", w1, b1, 16, 8, True, "features", "h")
    b.add_activation("relu", "RELU", "h", "hr")
    b.add_inner_product("fc2", w2, b2, 8, 4, True, "hr", "logits")
    b.add_softmax("softmax", "logits", "probs")
    b.set_class_labels(labels, predicted_feature_name="classLabel", prediction_blob="probs")
    probs = np_softmax(w2 @ np.maximum(w1 @ x + b1, 0) + b2)
    name = "nn_classifier"
    save_spec(b.spec, out / f"{name}.mlmodel")
    return [
        Fixture(
            name,
            f"{name}.mlmodel",
            {"features": x},
            {"classLabel": np.array(labels[int(probs.argmax())]), "probs": f32(probs)},
            "fp32",
            "NumPy reference from the same seeded weights",
            notes=[
                "output:probs holds the probabilities dictionary's values in class-label order "
                "(manifest class_labels); output:classLabel is the arg-max label (unicode array)"
            ],
            extra={"class_labels": labels},
        )
    ]


# ----------------------------------------------------------------------------------------
# PyTorch models.


class ResNet(nn.Module):
    """conv-bn-relu stem, a strided conv-bn-relu, one residual block, global pool, linear.

    ``fused=True`` is the same network with BatchNorm folded away (convs carry a bias), the
    form both CoreML backends store, used to run decompressed weights read from a file.
    """

    convs = ("stem", "down", "res1", "res2")

    def __init__(self, fused: bool = False) -> None:
        super().__init__()

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
            return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=fused)

        def bn(c: int) -> nn.Module:
            return nn.Identity() if fused else nn.BatchNorm2d(c)

        self.stem, self.stem_bn = conv(3, 16), bn(16)
        self.down, self.down_bn = conv(16, 32, 2), bn(32)
        self.res1, self.res1_bn = conv(32, 32), bn(32)
        self.res2, self.res2_bn = conv(32, 32), bn(32)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem_bn(self.stem(x)))
        x = torch.relu(self.down_bn(self.down(x)))
        y = torch.relu(self.res1_bn(self.res1(x)))
        x = torch.relu(x + self.res2_bn(self.res2(y)))
        return self.fc(x.mean(dim=(2, 3)))

    def layers(self) -> list[nn.Module]:
        return [getattr(self, n) for n in self.convs] + [self.fc]


class Encoder(nn.Module):
    """One post-norm transformer encoder layer (d_model 32, 2 heads, seq 8) + a linear head.

    Hand-written attention: ``nn.TransformerEncoderLayer`` traced with torch 2.13 does not
    convert with coremltools 9.0 (``aten::Int`` on a tensor in the MHA shape code).
    """

    S, D, H = 8, 32, 2

    def __init__(self) -> None:
        super().__init__()
        d = self.D
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff1, self.ff2 = nn.Linear(d, 64), nn.Linear(64, d)
        self.head = nn.Linear(d, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, d, h = self.S, self.D, self.H
        q, k, v = self.qkv(x).split(d, dim=-1)
        q = q.reshape(1, s, h, d // h).permute(0, 2, 1, 3)
        k = k.reshape(1, s, h, d // h).permute(0, 2, 3, 1)
        v = v.reshape(1, s, h, d // h).permute(0, 2, 1, 3)
        a = torch.softmax(torch.matmul(q, k) * (1.0 / (d // h) ** 0.5), dim=-1)
        y = torch.matmul(a, v).permute(0, 2, 1, 3).reshape(1, s, d)
        x = self.norm1(x + self.proj(y))
        x = self.norm2(x + self.ff2(nn.functional.gelu(self.ff1(x))))
        return self.head(x)


def seeded_resnet() -> ResNet:
    torch.manual_seed(SEED)
    m = ResNet()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(torch.rand(c) + 0.5)
                mod.bias.copy_(torch.randn(c) * 0.1)
                mod.running_mean.copy_(torch.randn(c) * 0.1)
                mod.running_var.copy_(torch.rand(c) + 0.5)
    return m.eval()


def seeded_encoder() -> Encoder:
    torch.manual_seed(SEED)
    m = Encoder()
    with torch.no_grad():
        for p in (m.norm1, m.norm2):
            p.weight.copy_(torch.rand(Encoder.D) + 0.5)
            p.bias.copy_(torch.randn(Encoder.D) * 0.1)
    return m.eval()


def run_torch(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy().astype(np.float32)


def convert(model: nn.Module, x: np.ndarray, to: str, precision: str = "fp32", target=None):
    traced = torch.jit.trace(model, torch.from_numpy(x))
    kw = {}
    if to == "mlprogram":
        kw["compute_precision"] = (
            ct.precision.FLOAT32 if precision == "fp32" else ct.precision.FLOAT16
        )
    if target is not None:
        kw["minimum_deployment_target"] = target
    return ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=x.shape, dtype=np.float32)],
        outputs=[ct.TensorType(name="logits")],
        convert_to=to,
        **kw,
    )


def fused_weights_from_mlprogram(path: Path) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias) of every conv/linear op of a saved ML Program, constexpr ops decompressed
    by coremltools' own WeightDecompressor pass (op.materialized_val_inference)."""
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    prog = _apply_graph_pass(
        mlmodel, WeightDecompressor(op_selector=lambda op: True), return_pymil_prog=True
    )
    found = []
    for op in prog.functions["main"].operations:
        assert not op.op_type.startswith("constexpr_"), op.op_type
        if op.op_type in ("conv", "linear"):
            w = op.inputs["weight"].val
            bias = op.inputs.get("bias")
            found.append(
                (
                    np.asarray(w, np.float32),
                    None if bias is None else np.asarray(bias.val, np.float32),
                )
            )
    return found


def fused_weights_from_nn(spec) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """(weight, bias) of every convolution/innerProduct layer of a NeuralNetwork spec; quantized
    WeightParams are dequantized by coremltools' own quantization_utils._dequantize_wp, float16
    ones widened to float32."""

    def values(wp, shape) -> np.ndarray:
        if wp.quantization.numberOfBits:
            wp = copy.deepcopy(wp)
            nnq._dequantize_wp(wp, shape, 0)
        if len(wp.floatValue):
            return np.asarray(wp.floatValue, np.float32).reshape(shape)
        if len(wp.float16Value):
            return np.frombuffer(wp.float16Value, np.float16).astype(np.float32).reshape(shape)
        raise ValueError("empty or unsupported WeightParams")

    found = []
    for layer in spec.neuralNetwork.layers:
        kind = layer.WhichOneof("layer")
        if kind == "convolution":
            p = layer.convolution
            shape = (p.outputChannels, p.kernelChannels, *p.kernelSize)
        elif kind == "innerProduct":
            p = layer.innerProduct
            shape = (p.outputChannels, p.inputChannels)
        else:
            continue
        bias = values(p.bias, (p.outputChannels,)) if p.hasBias else None
        found.append((values(p.weights, shape), bias))
    return found


def fused_resnet_with(weights: list[tuple[np.ndarray, np.ndarray | None]]) -> ResNet:
    m = ResNet(fused=True).eval()
    layers = m.layers()
    assert len(weights) == len(layers), (len(weights), len(layers))
    with torch.no_grad():
        for mod, (w, b) in zip(layers, weights):
            assert tuple(mod.weight.shape) == w.shape, (mod, w.shape)
            mod.weight.copy_(torch.from_numpy(w))
            mod.bias.copy_(torch.from_numpy(b) if b is not None else torch.zeros_like(mod.bias))
    return m


def kmeans_lut(nbits: int, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """coremltools' k-means LUT (scikit-learn KMeans, random_state=0) with a flat LUT."""
    lut, wq = nnq._get_kmeans_lookup_table_and_weight(nbits, weight)
    return np.asarray(lut, np.float32).reshape(-1), wq


def compressed_fixture(
    name: str, file: str, x: np.ndarray, fused: ResNet, ref: np.ndarray, how: str, kind: str
) -> Fixture:
    got = run_torch(fused, x)
    drift = float(np.abs(got - ref).max())
    return Fixture(
        name, file, {"x": x}, {"logits": got}, "fp32", how, compression=kind,
        extra={"max_abs_diff_vs_uncompressed_torch": drift},
    )  # fmt: skip


def build_resnet(out: Path) -> list[Fixture]:
    model = seeded_resnet()
    x = f32(rng("resnet").standard_normal((1, 3, 32, 32)))
    ref = {"logits": run_torch(model, x)}
    src = "PyTorch (torch==2.13.0) outputs of the traced source model"
    fx: list[Fixture] = []

    nn_model = convert(model, x, "neuralnetwork")
    save_spec(nn_model.get_spec(), out / "resnet_nn.mlmodel")
    fx.append(Fixture("resnet_nn", "resnet_nn.mlmodel", {"x": x}, ref, "fp32", src))
    for prec in ("fp32", "fp16"):
        name = f"resnet_mlprogram_{prec}"
        save_package(convert(model, x, "mlprogram", prec), out / f"{name}.mlpackage")
        fx.append(Fixture(name, f"{name}.mlpackage", {"x": x}, ref, prec, src))
    zip_package(
        out / "resnet_mlprogram_fp32.mlpackage", out / "resnet_mlprogram_fp32.mlpackage.zip"
    )
    fx.append(
        Fixture(
            "resnet_mlprogram_fp32_zip",
            "resnet_mlprogram_fp32.mlpackage.zip",
            {"x": x},
            ref,
            "fp32",
            src,
            spec_file="resnet_mlprogram_fp32.mlpackage",
            notes=[
                "zip of resnet_mlprogram_fp32.mlpackage; entries are under the top-level "
                "'resnet_mlprogram_fp32.mlpackage/' directory"
            ],
        )
    )

    # The read-back path used for compressed variants must reproduce the source model exactly
    # on the uncompressed files (BatchNorm folding by coremltools vs. PyTorch's BatchNorm).
    for label, weights in (
        ("resnet_nn", fused_weights_from_nn(ct.utils.load_spec(str(out / "resnet_nn.mlmodel")))),
        (
            "resnet_mlprogram_fp32",
            fused_weights_from_mlprogram(out / "resnet_mlprogram_fp32.mlpackage"),
        ),
    ):
        got = run_torch(fused_resnet_with(weights), x)
        np.testing.assert_allclose(got, ref["logits"], rtol=1e-4, atol=1e-5, err_msg=label)

    # --- ML Program compression (coremltools.optimize.coreml) ---
    base16 = convert(model, x, "mlprogram", "fp32", ct.target.iOS16)
    base18 = convert(model, x, "mlprogram", "fp32", ct.target.iOS18)
    thr = 256  # compress every conv/linear weight of this small net (default 2048 skips some)
    cfg = cto.OptimizationConfig
    variants = [
        (
            "resnet_mlprogram_int8",
            "linear_quantize_weights int8 linear_symmetric per-channel (iOS16: constexpr_affine_dequantize)",
            lambda: cto.linear_quantize_weights(base16, cfg(cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=thr))),
        ),
        (
            "resnet_mlprogram_int8_ios18",
            "linear_quantize_weights int8 linear (asymmetric) per-channel (iOS18: constexpr_blockwise_shift_scale)",
            lambda: cto.linear_quantize_weights(base18, cfg(cto.OpLinearQuantizerConfig(
                mode="linear", dtype="int8", granularity="per_channel", weight_threshold=thr))),
        ),
        (
            "resnet_mlprogram_int4_block",
            "linear_quantize_weights int4 linear_symmetric per-block block_size=16 (iOS18: constexpr_blockwise_shift_scale)",
            lambda: cto.linear_quantize_weights(base18, cfg(cto.OpLinearQuantizerConfig(
                mode="linear_symmetric", dtype="int4", granularity="per_block", block_size=16, weight_threshold=thr))),
        ),
        (
            "resnet_mlprogram_uint4_block",
            "linear_quantize_weights uint4 linear (asymmetric, with offsets) per-block block_size=16 (iOS18)",
            lambda: cto.linear_quantize_weights(base18, cfg(cto.OpLinearQuantizerConfig(
                mode="linear", dtype="uint4", granularity="per_block", block_size=16, weight_threshold=thr))),
        ),
        (
            "resnet_mlprogram_palettize4",
            "palettize_weights 4-bit kmeans per-tensor (iOS16: constexpr_lut_to_dense)",
            lambda: cto.palettize_weights(base16, cfg(cto.OpPalettizerConfig(
                mode="kmeans", nbits=4, weight_threshold=thr))),
        ),
        (
            "resnet_mlprogram_palettize4_grouped",
            "palettize_weights 4-bit kmeans per_grouped_channel group_size=8 (iOS18 constexpr_lut_to_dense)",
            lambda: cto.palettize_weights(base18, cfg(cto.OpPalettizerConfig(
                mode="kmeans", nbits=4, granularity="per_grouped_channel", group_size=8, weight_threshold=thr))),
        ),
        (
            "resnet_mlprogram_pruned75",
            "prune_weights magnitude target_sparsity=0.75 (iOS16: constexpr_sparse_to_dense)",
            lambda: cto.prune_weights(base16, cfg(cto.OpMagnitudePrunerConfig(
                target_sparsity=0.75, weight_threshold=thr))),
        ),
        (
            "resnet_mlprogram_pruned75_palettize4",
            "prune_weights 0.75 then palettize_weights 4-bit kmeans with joint_compression=True "
            "(iOS18: constexpr_lut_to_sparse + constexpr_sparse_to_dense)",
            lambda: cto.palettize_weights(
                cto.prune_weights(base18, cfg(cto.OpMagnitudePrunerConfig(target_sparsity=0.75, weight_threshold=thr))),
                cfg(cto.OpPalettizerConfig(mode="kmeans", nbits=4, weight_threshold=thr)),
                joint_compression=True,
            ),
        ),
        (
            "resnet_mlprogram_pruned75_int8",
            "prune_weights 0.75 then linear_quantize_weights int8 per-channel with joint_compression=True "
            "(iOS18: constexpr_sparse_blockwise_shift_scale + constexpr_sparse_to_dense)",
            lambda: cto.linear_quantize_weights(
                cto.prune_weights(base18, cfg(cto.OpMagnitudePrunerConfig(target_sparsity=0.75, weight_threshold=thr))),
                cfg(cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=thr)),
                joint_compression=True,
            ),
        ),
    ]  # fmt: skip
    dec_note = (
        "PyTorch (BatchNorm-folded copy of the ResNet) with every conv/linear weight and bias read "
        "back from the saved .mlpackage and decompressed by coremltools' WeightDecompressor pass "
        "(constexpr op materialized_val_inference)"
    )
    for name, kind, make in variants:
        try:
            compressed = make()
        except Exception as e:  # record what this coremltools refuses, keep going
            print(f"  ! {name}: coremltools refused: {type(e).__name__}: {e}", file=sys.stderr)
            REFUSED[name] = f"{type(e).__name__}: {e}"
            continue
        path = out / f"{name}.mlpackage"
        save_package(compressed, path)
        fused = fused_resnet_with(fused_weights_from_mlprogram(path))
        fx.append(compressed_fixture(name, path.name, x, fused, ref["logits"], dec_note, kind))

    # --- NeuralNetwork legacy weight quantization ---
    legacy = [
        ("resnet_nn_fp16", "quantize_weights nbits=16 (float16 WeightParams)", {"nbits": 16}),
        ("resnet_nn_int8", "quantize_weights nbits=8 linear (linearQuantization, per-channel scale/bias)",
         {"nbits": 8, "quantization_mode": "linear"}),
        ("resnet_nn_lut4", "quantize_weights nbits=4 k-means LUT (lookUpTableQuantization); via "
         "quantization_mode='custom_lut' around coremltools' own k-means, because mode 'kmeans' "
         "fails in coremltools 9.0 (its LUT has shape (16, 1))",
         {"nbits": 4, "quantization_mode": "custom_lut", "lut_function": kmeans_lut}),
        ("resnet_nn_lut2_linear", "quantize_weights nbits=2 linear_lut (lookUpTableQuantization, 2 bits)",
         {"nbits": 2, "quantization_mode": "linear_lut"}),
    ]  # fmt: skip
    nn_dec_note = (
        "PyTorch (BatchNorm-folded copy of the ResNet) with every conv/innerProduct weight and bias "
        "read back from the saved .mlmodel and dequantized by coremltools' "
        "quantization_utils._dequantize_wp (float16 widened to float32)"
    )
    for name, kind, kw in legacy:
        try:
            q = nnq.quantize_weights(nn_model, **kw)
        except Exception as e:
            print(f"  ! {name}: coremltools refused: {type(e).__name__}: {e}", file=sys.stderr)
            REFUSED[name] = f"{type(e).__name__}: {e}"
            continue
        spec = q if not hasattr(q, "get_spec") else q.get_spec()
        path = out / f"{name}.mlmodel"
        save_spec(spec, path)
        fused = fused_resnet_with(fused_weights_from_nn(ct.utils.load_spec(str(path))))
        fx.append(compressed_fixture(name, path.name, x, fused, ref["logits"], nn_dec_note, kind))
    return fx


def build_transformer(out: Path) -> list[Fixture]:
    model = seeded_encoder()
    x = f32(rng("transformer").standard_normal((1, Encoder.S, Encoder.D)))
    ref = {"logits": run_torch(model, x)}
    src = "PyTorch (torch==2.13.0) outputs of the traced source model"
    save_spec(convert(model, x, "neuralnetwork").get_spec(), out / "transformer_nn.mlmodel")
    fx = [Fixture("transformer_nn", "transformer_nn.mlmodel", {"x": x}, ref, "fp32", src)]
    for prec in ("fp32", "fp16"):
        name = f"transformer_mlprogram_{prec}"
        save_package(convert(model, x, "mlprogram", prec), out / f"{name}.mlpackage")
        fx.append(Fixture(name, f"{name}.mlpackage", {"x": x}, ref, prec, src))
    return fx


def build_pipeline(out: Path) -> list[Fixture]:
    """A pipeline of two NeuralNetwork models (normalise, then a small MLP head)."""
    r = rng("pipeline")
    x = f32(r.standard_normal(8))
    s, sh = f32(r.uniform(0.5, 2.0, 8)), f32(r.normal(0, 0.5, 8))
    w, bias = f32(r.normal(0, 0.5, (3, 8))), f32(r.normal(0, 0.1, 3))
    b1 = NeuralNetworkBuilder([("x", datatypes.Array(8))], [("z", datatypes.Array(8))])
    b1.add_scale("affine", s, sh, True, "x", "z", shape_scale=[8], shape_bias=[8])
    b2 = NeuralNetworkBuilder([("z", datatypes.Array(8))], [("y", datatypes.Array(3))])
    b2.add_inner_product("fc", w, bias, 8, 3, True, "z", "h")
    b2.add_activation("tanh", "TANH", "h", "y")
    p = ct.models.pipeline.Pipeline([("x", datatypes.Array(8))], [("y", datatypes.Array(3))])
    p.add_model(b1.spec)
    p.add_model(b2.spec)
    p.spec.specificationVersion = max(b1.spec.specificationVersion, b2.spec.specificationVersion)
    y = np.tanh(w @ (x * s + sh) + bias)
    save_spec(p.spec, out / "pipeline_nn.mlmodel")
    how = "NumPy reference (scale layer then innerProduct + tanh)"
    return [Fixture("pipeline_nn", "pipeline_nn.mlmodel", {"x": x}, {"y": f32(y)}, "fp32", how)]


def check_numpy_reference() -> None:
    """The NumPy conv/pool helpers against PyTorch (layout, groups, dilation, padding)."""
    import torch.nn.functional as F

    r = rng("self-check")
    x = r.standard_normal((6, 11, 10))
    w = r.standard_normal((4, 3, 3, 2))
    b = r.standard_normal(4)
    tx = torch.from_numpy(x)[None]
    want = F.conv2d(
        F.pad(tx, (1, 2, 0, 1)),
        torch.from_numpy(w),
        torch.from_numpy(b),
        stride=(2, 1),
        dilation=(1, 2),
        groups=2,
    )
    got = np_conv(x, w, b, stride=(2, 1), pads=(0, 1, 1, 2), dilation=(1, 2), groups=2)
    np.testing.assert_allclose(got, want[0].numpy(), rtol=1e-10)
    want = F.avg_pool2d(tx, 3, 1, padding=1, count_include_pad=False)[0].numpy()
    np.testing.assert_allclose(np_pool(x, (3, 3), (1, 1), (1, 1, 1, 1), "avg"), want, rtol=1e-10)
    want = F.max_pool2d(tx, 2, 2)[0].numpy()
    np.testing.assert_allclose(np_pool(x, (2, 2), (2, 2), (0, 0, 0, 0), "max"), want)


BUILDERS: dict[str, Callable[[Path], list[Fixture]]] = {
    "nn_builder_cnn": build_nn_builder_cnn,
    "nn_image_bgr": build_nn_image_bgr,
    "nn_classifier": build_nn_classifier,
    "pipeline_nn": build_pipeline,
    "resnet": build_resnet,
    "transformer": build_transformer,
}
REFUSED: dict[str, str] = {}


# ----------------------------------------------------------------------------------------
# Writing files deterministically.


def save_spec(spec, path: Path) -> None:
    path.write_bytes(spec.SerializeToString(deterministic=True))


def save_package(model, path: Path) -> None:
    """MLModel.save, then replace the Manifest's random item UUIDs with path-derived ones."""
    if path.exists():
        shutil.rmtree(path)
    model.save(str(path))
    man_path = path / "Manifest.json"
    man = json.loads(man_path.read_text())
    ids = {
        old: str(uuid.uuid5(uuid.NAMESPACE_URL, "modelloader-fixture:" + e["path"]))
        for old, e in man["itemInfoEntries"].items()
    }
    man["itemInfoEntries"] = {
        ids[k]: v for k, v in sorted(man["itemInfoEntries"].items(), key=lambda kv: ids[kv[0]])
    }
    man["rootModelIdentifier"] = ids[man["rootModelIdentifier"]]
    man_path.write_text(json.dumps(man, indent=4, sort_keys=True) + "\n")
    # coremltools serialises proto maps (op attributes, metadata) in hash order; re-serialise
    # deterministically (same message, stable bytes).
    for entry in man["itemInfoEntries"].values():
        if entry["name"] == "model.mlmodel":
            spec_path = path / "Data" / entry["path"]
            save_spec(ct.utils.load_spec(str(spec_path)), spec_path)


def package_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def zip_package(pkg: Path, dest: Path) -> None:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for d in sorted({p.parent for p in package_files(pkg)} | {pkg}):
            info = zipfile.ZipInfo(
                str(d.relative_to(pkg.parent)) + "/", date_time=(1980, 1, 1, 0, 0, 0)
            )
            zf.writestr(info, b"")
        for f in package_files(pkg):
            info = zipfile.ZipInfo(str(f.relative_to(pkg.parent)), date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, f.read_bytes())


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed with fixed zip timestamps, so reruns give identical bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(key + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, buf.getvalue())


# ----------------------------------------------------------------------------------------
# Manifest.


ARRAY_DTYPES = {
    65568: "float32",
    65552: "float16",
    65600: "float64",
    131104: "int32",
    131080: "int8",
}


def feature(desc) -> dict:
    t = desc.type
    kind = t.WhichOneof("Type")
    d: dict = {"name": desc.name, "type": kind}
    if kind == "multiArrayType":
        d["shape"] = list(t.multiArrayType.shape)
        d["dtype"] = ARRAY_DTYPES.get(t.multiArrayType.dataType, str(t.multiArrayType.dataType))
    elif kind == "imageType":
        cs = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(t.imageType.colorSpace)
        d.update(width=t.imageType.width, height=t.imageType.height, colorSpace=cs)
        d["shape"], d["dtype"] = [t.imageType.height, t.imageType.width, 3], "uint8"
    elif kind == "dictionaryType":
        d["keyType"] = t.dictionaryType.WhichOneof("KeyType")
    elif kind == "stringType":
        d["dtype"] = "str"
    return d


def layer_types(spec) -> dict[str, int]:
    """NeuralNetwork layer kinds / ML Program op types (declared opset's block), recursively."""
    kind = spec.WhichOneof("Type")
    c: Counter = Counter()
    if kind in ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor"):
        c.update(layer.WhichOneof("layer") for layer in getattr(spec, kind).layers)
    elif kind == "mlProgram":
        fn = spec.mlProgram.functions["main"]
        c.update(op.type for op in fn.block_specializations[fn.opset].operations)
    elif kind in ("pipeline", "pipelineClassifier", "pipelineRegressor"):
        p = spec.pipeline if kind == "pipeline" else getattr(spec, kind).pipeline
        for sub in p.models:
            c.update(layer_types(sub))
    return dict(sorted(c.items()))


def file_digests(path: Path) -> dict[str, str]:
    if path.is_dir():
        return {str(f.relative_to(path)): sha256(f) for f in package_files(path)}
    return {"": sha256(path)}


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def size(path: Path) -> int:
    return (
        sum(f.stat().st_size for f in package_files(path)) if path.is_dir() else path.stat().st_size
    )


def describe(fx: Fixture, out: Path) -> dict:
    spec_path = out / (fx.spec_file or fx.file)
    spec = ct.utils.load_spec(str(spec_path))
    kind = spec.WhichOneof("Type")
    entry = {
        "file": fx.file,
        "expected": f"{fx.name}.npz",
        "format": "zip"
        if fx.file.endswith(".zip")
        else ("mlpackage" if fx.file.endswith(".mlpackage") else "mlmodel"),
        "model_type": kind,
        "specification_version": spec.specificationVersion,
        "compute_precision": fx.precision,
        "tolerance_class": fx.precision,
        "tolerance": TOLERANCES[fx.precision],
        "compression": fx.compression,
        "expected_from": fx.expected_from,
        "inputs": [feature(d) for d in spec.description.input],
        "outputs": [feature(d) for d in spec.description.output],
        "npz_inputs": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in fx.inputs.items()
        },
        "npz_outputs": {
            k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in fx.outputs.items()
        },
        "layer_types": layer_types(spec),
        "bytes": size(out / fx.file),
        "sha256": file_digests(out / fx.file),
    }
    if kind == "mlProgram":
        fn = spec.mlProgram.functions["main"]
        entry["opset"] = fn.opset
    if fx.notes:
        entry["notes"] = fx.notes
    entry.update(fx.extra)
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--only", default="", help="comma-separated builder names: " + ",".join(BUILDERS)
    )
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(BUILDERS)
    if unknown:
        sys.exit(f"unknown builder(s): {sorted(unknown)}")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    check_numpy_reference()

    man_path = out / "manifest.json"
    manifest = json.loads(man_path.read_text()) if only and man_path.exists() else {}
    fixtures = manifest.get("fixtures", {})
    for bname, build in BUILDERS.items():
        if only and bname not in only:
            continue
        print(f"building {bname}", file=sys.stderr)
        for fx in build(out):
            arrays = {f"input:{k}": v for k, v in fx.inputs.items()}
            arrays.update({f"output:{k}": v for k, v in fx.outputs.items()})
            save_npz(out / f"{fx.name}.npz", arrays)
            fixtures[fx.name] = describe(fx, out)
    manifest = {
        "generator": "scripts/make_coreml_fixtures.py",
        "versions": {
            "coremltools": ct.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "seed": SEED,
        "npz_keys": "input:<CoreML input feature name>, output:<CoreML output feature name>",
        "tolerances": TOLERANCES,
        "nondeterminism": [
            "mlpackage Manifest.json item UUIDs are random in coremltools; this script rewrites "
            "them to uuid5(path) so reruns are byte-identical",
            "coremltools writes model.mlmodel proto maps in hash order; this script re-serialises "
            "every spec with deterministic=True",
            "k-means palettes (scikit-learn KMeans, random_state=0) depend on the OpenMP thread "
            "count (and vary run to run when oversubscribed); the script pins OMP_NUM_THREADS=1. "
            "Another scikit-learn version may pick other palettes; the npz always follows the file",
        ],
        "refused_by_coremltools": {
            **{
                k: v
                for k, v in manifest.get("refused_by_coremltools", {}).items()
                if k not in fixtures
            },
            **REFUSED,
        },
        "fixtures": dict(sorted(fixtures.items())),
    }
    man_path.write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(size(p) for p in out.iterdir())
    print(f"wrote {len(fixtures)} fixtures to {out} ({total / 1e6:.2f} MB)", file=sys.stderr)


if __name__ == "__main__":
    main()
