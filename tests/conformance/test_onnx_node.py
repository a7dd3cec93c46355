"""ONNX's node conformance suite, replayed through modelloader.

Every case in allowlist.txt must pass; every other case is in exclusions.txt with
a reason. Regenerate both with ``python scripts/conformance.py --write-allowlist``.
"""

from __future__ import annotations

import harness
import onnx
import pytest

ALLOWED = sorted(harness.read_list(harness.ALLOWLIST))
MIN_PASSING = 1600


def test_allowlist_meets_target() -> None:
    assert len(ALLOWED) >= MIN_PASSING, f"only {len(ALLOWED)} cases allow-listed"


def test_every_case_is_accounted_for() -> None:
    assert onnx.__version__.startswith("1.23."), "the lists were made with onnx 1.23.x"
    excluded = harness.read_list(harness.EXCLUSIONS)
    all_cases = set(harness.cases())
    assert set(ALLOWED) <= all_cases, sorted(set(ALLOWED) - all_cases)[:5]
    assert not set(ALLOWED) & set(excluded)
    unaccounted = all_cases - set(ALLOWED) - set(excluded)
    assert not unaccounted, f"cases neither allowed nor excluded: {sorted(unaccounted)[:10]}"
    assert all(excluded.values()), "every exclusion needs a reason"


@pytest.mark.parametrize("name", ALLOWED)
def test_node_case(name: str) -> None:
    harness.run_case(name)
