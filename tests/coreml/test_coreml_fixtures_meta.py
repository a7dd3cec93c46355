"""models/coreml/manifest.json agrees with the files beside it (no coremltools, no importer):
every fixture file and npz exists with the recorded hashes, npz keys/shapes/dtypes match the
CoreML feature names, packages are well formed, and the issue's coverage is there."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest

DIR = Path(__file__).resolve().parents[2] / "models" / "coreml"
MANIFEST = DIR / "manifest.json"
MODEL_TYPES = {
    "neuralNetwork",
    "neuralNetworkClassifier",
    "neuralNetworkRegressor",
    "mlProgram",
    "pipeline",
    "pipelineClassifier",
    "pipelineRegressor",
}

pytestmark = pytest.mark.skipif(not MANIFEST.exists(), reason="coreml fixtures not generated")


def _manifest() -> dict[str, Any]:
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else {"fixtures": {}}


FIXTURES: dict[str, dict[str, Any]] = _manifest()["fixtures"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _files(pkg: Path) -> dict[str, Path]:
    return {str(p.relative_to(pkg)): p for p in sorted(pkg.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_files_match_manifest(name: str) -> None:
    e = FIXTURES[name]
    path = DIR / e["file"]
    assert path.exists(), path
    if path.is_dir():
        files = _files(path)
        assert {k: _sha(p) for k, p in files.items()} == e["sha256"]
        assert sum(p.stat().st_size for p in files.values()) == e["bytes"]
    else:
        assert e["sha256"] == {"": _sha(path)}
        assert path.stat().st_size == e["bytes"]
    assert e["model_type"] in MODEL_TYPES
    assert e["tolerance_class"] in ("fp32", "fp16")
    assert e["tolerance"] == _manifest()["tolerances"][e["tolerance_class"]]
    assert e["expected_from"]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_npz_matches_features(name: str) -> None:
    e = FIXTURES[name]
    with np.load(DIR / e["expected"], allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    ins = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("input:")}
    outs = {k.split(":", 1)[1]: v for k, v in arrays.items() if k.startswith("output:")}
    assert len(ins) + len(outs) == len(arrays), "npz keys must be input:<name> / output:<name>"
    assert sorted(ins) == sorted(f["name"] for f in e["inputs"])
    assert sorted(outs) == sorted(f["name"] for f in e["outputs"])
    for kind, got in (("npz_inputs", ins), ("npz_outputs", outs)):
        for k, v in got.items():
            assert e[kind][k] == {"shape": list(v.shape), "dtype": str(v.dtype)}, (kind, k)
    for f in e["inputs"]:
        x = ins[f["name"]]
        if f["type"] == "imageType":
            assert x.dtype == np.uint8 and list(x.shape) == [f["height"], f["width"], 3]
        elif f["type"] == "multiArrayType" and f["shape"]:
            assert list(x.shape) == f["shape"], f["name"]
    for k, v in outs.items():
        if v.dtype.kind == "f":
            assert np.isfinite(v).all(), k
        out_feature = next(f for f in e["outputs"] if f["name"] == k)
        if out_feature["type"] == "multiArrayType" and out_feature["shape"]:
            assert list(v.shape) == out_feature["shape"], k


@pytest.mark.parametrize("name", sorted(n for n, e in FIXTURES.items() if e["format"] != "mlmodel"))
def test_packages_well_formed(name: str) -> None:
    e = FIXTURES[name]
    if e["format"] == "zip":
        with zipfile.ZipFile(DIR / e["file"]) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            for n in names:
                p = PurePosixPath(n)
                assert not p.is_absolute() and ".." not in p.parts, n
            # The zip holds exactly the package directory it was made from.
            src = PurePosixPath(names[0]).parts[0]
            pkg = _files(DIR / src)
            assert sorted(names) == sorted(f"{src}/{k}" for k in pkg)
            for k, p in pkg.items():
                assert zf.read(f"{src}/{k}") == p.read_bytes(), k
        return
    pkg = DIR / e["file"]
    man = json.loads((pkg / "Manifest.json").read_text())
    root = man["itemInfoEntries"][man["rootModelIdentifier"]]
    assert (pkg / "Data" / root["path"]).is_file()
    if e["model_type"] == "mlProgram":
        assert (pkg / "Data" / "com.apple.CoreML" / "weights" / "weight.bin").is_file()
        assert e["opset"].startswith("CoreML")


def test_compression_is_visible_in_ops() -> None:
    for name, e in FIXTURES.items():
        constexpr = any(op.startswith("constexpr_") for op in e["layer_types"])
        if e["model_type"] == "mlProgram":
            assert constexpr == (e["compression"] != "none"), name
        if e["compression"] != "none":
            assert "decompress" in e["expected_from"] or "dequantiz" in e["expected_from"], name


def test_coverage_and_size() -> None:
    ops: set[str] = set()
    for e in FIXTURES.values():
        ops.update(e["layer_types"])
    for need in (
        "convolution",
        "batchnorm",
        "activation",
        "pooling",
        "innerProduct",
        "add",
        "multiply",
        "concat",
        "flatten",
        "reshape",
        "permute",
        "softmax",
        "upsample",
        "padding",
        "unary",
        "reduce",
        "loadConstant",
        "batchedMatmul",
        "conv",
        "linear",
        "matmul",
        "layer_norm",
        "constexpr_affine_dequantize",
        "constexpr_blockwise_shift_scale",
        "constexpr_lut_to_dense",
        "constexpr_sparse_to_dense",
    ):
        assert need in ops, need
    types = {e["model_type"] for e in FIXTURES.values()}
    assert {"neuralNetwork", "neuralNetworkClassifier", "mlProgram", "pipeline"} <= types
    assert {e["compute_precision"] for e in FIXTURES.values()} == {"fp32", "fp16"}
    assert any(f["type"] == "imageType" for e in FIXTURES.values() for f in e["inputs"])
    assert FIXTURES["nn_builder_cnn"]["layer_types"]["activation"] >= 12
    total = sum(p.stat().st_size for p in DIR.rglob("*") if p.is_file())
    assert total < 4_000_000, f"models/coreml is {total} bytes"
