"""CoreML fixtures (models/coreml, made by scripts/make_coreml_fixtures.py) against the
PyTorch/NumPy reference outputs stored beside them, with the manifest's tolerances."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("coremltools")

import modelloader  # noqa: E402

DIR = Path(__file__).resolve().parents[2] / "models" / "coreml"
MANIFEST = DIR / "manifest.json"


def _entries() -> list[tuple[str, dict[str, Any]]]:
    if not MANIFEST.exists():
        return []
    data = json.loads(MANIFEST.read_text())
    fixtures = data.get("fixtures", data)
    return [(k, v) for k, v in fixtures.items() if not k.startswith("_") and isinstance(v, dict)]


ENTRIES = _entries()


def check_output(name: str, got: Any, want: np.ndarray, entry: dict) -> float:
    """Asserts one output within the manifest's tolerance; returns the max abs error."""
    got = np.asarray(got)
    if want.dtype.kind in "USO":
        assert [str(v) for v in got.reshape(-1)] == [str(v) for v in want.reshape(-1)], name
        return 0.0
    assert got.size == want.size, f"{name}: shape {got.shape} != {want.shape}"
    g = got.astype(np.float64).reshape(want.shape)
    w = want.astype(np.float64)
    tol = entry["tolerance"]
    worst = float(np.abs(g - w).max(initial=0.0))
    np.testing.assert_allclose(g, w, rtol=tol["rtol"], atol=tol.get("atol", 0.0), err_msg=name)
    if tol.get("same_top1") and w.ndim >= 1 and w.size > 1:
        assert np.array_equal(
            g.reshape(w.shape[0], -1).argmax(-1), w.reshape(w.shape[0], -1).argmax(-1)
        ), name
    return worst


@pytest.mark.skipif(not ENTRIES, reason="models/coreml/manifest.json not generated yet")
@pytest.mark.parametrize("name,entry", ENTRIES, ids=[k for k, _ in ENTRIES])
def test_fixture_matches_reference(name: str, entry: dict) -> None:
    m = modelloader.load(DIR / entry["file"])
    arrays = np.load(DIR / entry["expected"], allow_pickle=True)
    feeds = {k.split(":", 1)[1]: arrays[k] for k in arrays.files if k.startswith("input:")}
    for info in m.inputs:
        x = feeds[info.name]
        if info.dtype is not None and x.dtype != info.dtype:
            feeds[info.name] = x.astype(info.dtype)
    out = m.predict(feeds)
    for k in arrays.files:
        if k.startswith("output:"):
            oname = k.split(":", 1)[1]
            assert oname in out, f"missing output {oname}; have {list(out)}"
            check_output(oname, out[oname], arrays[k], entry)
