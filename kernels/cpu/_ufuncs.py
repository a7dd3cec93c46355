"""NumPy ufuncs that ``numpy``'s namespace only wraps in Python.

``np.clip`` checks and dispatches in Python (a few microseconds a call, which small tensors
and blockwise loops feel); the ``clip`` ufunc beneath it does the same work directly. Both
bounds must be given."""

from __future__ import annotations

try:
    from numpy._core.umath import clip
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.umath import clip

__all__ = ["clip"]
