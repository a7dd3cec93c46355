"""Real CNN architectures (ONNX's light test models with seeded random weights, built by
../shared/bench/make_models.py) give the same outputs in modelloader as in onnxruntime.

Built models are cached in ``.cache/bench_models/<key>/`` (gitignored), keyed by the builders'
source and the onnx version, so only the first run pays for building them (~1.3 GB for all nine).

Which models run: all nine by default. Measured on two cores with ``pytest -n 2``, the module
takes about 2.5 minutes with an empty cache (building dominates) and ~45 s with a warm one, so the
big ones stay in the full suite (``make test``, hence CI); they are marked ``slow`` so that
``-m "not slow"`` leaves just squeezenet and shufflenet for quick local runs.
``MODELLOADER_CNN_MODELS=squeezenet,resnet50`` restricts the run to the named models.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import modelloader

ort = pytest.importorskip(
    "onnxruntime", reason="onnxruntime is the reference these models are checked against"
)

REPO = Path(__file__).resolve().parents[1]
MAKE_MODELS = REPO.parent / "shared" / "bench" / "make_models.py"
CACHE = REPO / ".cache" / "bench_models"
EXPOSED_KEY = "test_cnn_models.exposed_outputs"

FAST = ["squeezenet", "shufflenet"]
SLOW = [
    "inception_v1",
    "inception_v2",
    "densenet121",
    "resnet50",
    "bvlc_alexnet",
    "zfnet512",
    "vgg19",
]
WANTED = [n for n in os.environ.get("MODELLOADER_CNN_MODELS", "").split(",") if n]


def expose_logits(path: Path) -> None:
    """Adds the input of a final Softmax as an extra graph output, in place.

    With random weights the softmax saturates to ~one-hot, which would hide errors upstream.
    The names added are listed in the model's metadata under ``EXPOSED_KEY``.
    """
    model = onnx.load(str(path))
    outputs = {o.name for o in model.graph.output}
    exposed = [
        n.input[0] for n in model.graph.node if n.op_type == "Softmax" and n.output[0] in outputs
    ]
    model.graph.output.extend(
        helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in exposed
    )
    helper.set_model_props(model, {EXPOSED_KEY: ",".join(exposed)})
    onnx.save(model, str(path))


@pytest.fixture(scope="session")
def bench_model() -> Callable[[str], Path]:
    """Returns ``build(name) -> path``, building into the cache on first use.

    Each model is written to a private temp dir and renamed into place, so pytest-xdist workers
    (and interrupted runs) never see a half-written file.
    """
    if not MAKE_MODELS.is_file():
        pytest.fail(f"{MAKE_MODELS} not found: check out the shared repo beside this one")
    recipe = MAKE_MODELS.read_bytes() + inspect.getsource(expose_logits).encode()
    key = hashlib.sha256(recipe + onnx.__version__.encode()).hexdigest()[:12]
    cache = CACHE / key
    cache.mkdir(parents=True, exist_ok=True)

    def build(name: str) -> Path:
        path = cache / f"{name}.onnx"
        if path.exists():
            return path
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{name}-"))
        try:
            subprocess.run([sys.executable, str(MAKE_MODELS), str(tmp), name], check=True)
            expose_logits(tmp / f"{name}.onnx")
            os.replace(tmp / f"{name}.onnx", path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    return build


def params() -> list:
    out = []
    for name in FAST + SLOW:
        marks = [pytest.mark.slow] if name in SLOW else []
        if WANTED and name not in WANTED:
            marks.append(pytest.mark.skip(reason="not in MODELLOADER_CNN_MODELS"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", params())
def test_matches_onnxruntime(name: str, bench_model: Callable[[str], Path]) -> None:
    path = bench_model(name)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # pytest -n 2 already fills both cores
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    [inp] = sess.get_inputs()
    x = np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)
    names = [o.name for o in sess.get_outputs()]
    exposed = sess.get_modelmeta().custom_metadata_map.get(EXPOSED_KEY, "").split(",")
    want = dict(zip(names, sess.run(None, {inp.name: x}), strict=True))
    del sess

    model = modelloader.load(path)
    assert [i.name for i in model.inputs] == [inp.name]
    got = model.predict({inp.name: x})
    assert sorted(got) == sorted(want)
    for out_name, ref in want.items():
        assert (got[out_name].dtype, got[out_name].shape) == (ref.dtype, ref.shape), out_name
        # The exposed logits span ~1e7 in some models; float32 summation order alone moves their
        # small entries by more than 1e-5, so their absolute tolerance scales with the tensor.
        atol = 1e-4 * float(np.max(np.abs(ref))) if out_name in exposed else 1e-5
        np.testing.assert_allclose(got[out_name], ref, rtol=1e-4, atol=atol, err_msg=out_name)
