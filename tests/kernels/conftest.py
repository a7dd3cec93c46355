"""Fixtures shared by the kernel tests."""

from __future__ import annotations

import pytest

from modelloader.kernels.cpu import _jit


@pytest.fixture(params=["jit", "numpy"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test through the compiled kernels (``_jit``) and through the NumPy ones."""
    if request.param == "jit" and not _jit.available:
        pytest.fail("numba is a test dependency: install the test extra")
    monkeypatch.setattr(_jit, "available", request.param == "jit")
    return request.param
