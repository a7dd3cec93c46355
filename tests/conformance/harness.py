"""Runs ONNX's node conformance cases (``onnx.backend.test.case.node``) through modelloader.

Shared by ``scripts/conformance.py`` (explore, rewrite the allow-list) and
``test_onnx_node.py`` (CI: every allow-listed case must pass).
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
ALLOWLIST = HERE / "allowlist.txt"
EXCLUSIONS = HERE / "exclusions.txt"


@functools.cache
def cases() -> dict[str, Any]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return {c.name: c for c in collect_testcases()}


def read_list(path: Path) -> dict[str, str]:
    """``name`` or ``name: reason`` per line; ``#`` starts a comment."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, reason = line.partition(":")
            out[name.strip()] = reason.strip()
    return out


def assert_close(actual: Any, expected: Any, rtol: float, atol: float, where: str = "") -> None:
    if expected is None:
        assert actual is None, f"{where}: expected an empty optional, got {type(actual).__name__}"
        return
    if isinstance(expected, list):
        assert isinstance(actual, list), (
            f"{where}: expected a sequence, got {type(actual).__name__}"
        )
        assert len(actual) == len(expected), (
            f"{where}: sequence length {len(actual)} != {len(expected)}"
        )
        for k, (a, e) in enumerate(zip(actual, expected)):
            assert_close(a, e, rtol, atol, f"{where}[{k}]")
        return
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray), f"{where}: expected ndarray, got {type(actual).__name__}"
    assert actual.dtype == expected.dtype, (
        f"{where}: dtype {actual.dtype} != expected {expected.dtype}"
    )
    assert actual.shape == expected.shape, (
        f"{where}: shape {actual.shape} != expected {expected.shape}"
    )
    if expected.dtype == object:
        assert actual.tolist() == expected.tolist(), f"{where}: values differ"
    elif expected.dtype.kind in "fc" or expected.dtype.itemsize == 1 and expected.dtype.kind == "V":
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=where)
    elif expected.dtype.kind in "biu":
        np.testing.assert_array_equal(actual, expected, err_msg=where)
    else:  # ml_dtypes (bfloat16, float8, int4, ...): compare as float32
        np.testing.assert_allclose(
            actual.astype(np.float32),
            expected.astype(np.float32),
            rtol=rtol,
            atol=atol,
            err_msg=where,
        )


def _array(x: Any) -> Any:
    """Cases give some tensors as TensorProto (Cast to float8, int4, ...)."""
    import onnx
    from onnx import numpy_helper

    return numpy_helper.to_array(x) if isinstance(x, onnx.TensorProto) else x


def run_case(name: str) -> None:
    """Loads and runs one case; raises AssertionError or a modelloader error on failure."""
    import modelloader

    case = cases()[name]
    model = modelloader.load(case.model.SerializeToString())
    for inputs, outputs in case.data_sets:
        inputs, outputs = [_array(x) for x in inputs], [_array(x) for x in outputs]
        with np.errstate(all="ignore"):
            got = model.predict({i.name: x for i, x in zip(model.inputs, inputs)})
        names = [o.name for o in case.model.graph.output]
        assert len(outputs) == len(names)
        for out_name, expected in zip(names, outputs):
            assert_close(got[out_name], expected, case.rtol, case.atol, out_name)
