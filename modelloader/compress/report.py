"""Accuracy report and gate for ``compress`` (a minimal stand-in: the quantization issue's
``modelloader/quantize/report.py`` did not exist when this was written)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: what ``eval=`` accepts: an .npz path (arrays X and y), an (X, y) pair, or model -> accuracy
EvalSpec = str | Path | tuple[np.ndarray, np.ndarray] | Callable[[Any], float]


@dataclass(frozen=True)
class AccuracyReport:
    baseline: float
    compressed: float
    max_drop: float | None

    @property
    def drop(self) -> float:
        """Accuracy lost, in percentage points."""
        return 100.0 * (self.baseline - self.compressed)

    @property
    def passed(self) -> bool:
        return self.max_drop is None or self.drop <= self.max_drop

    def __str__(self) -> str:
        gate = (
            ""
            if self.max_drop is None
            else f" (gate {self.max_drop:g} points: {'pass' if self.passed else 'FAIL'})"
        )
        return (
            f"accuracy {100 * self.baseline:.2f}% -> {100 * self.compressed:.2f}% "
            f"(drop {self.drop:+.2f} points){gate}"
        )


def load_eval(spec: EvalSpec) -> Callable[[Any], float]:
    """``model -> top-1 accuracy`` from an eval spec."""
    if callable(spec):
        return spec
    if isinstance(spec, (str, Path)):
        with np.load(spec) as d:
            if "X" not in d or "y" not in d:
                raise ValueError(f"{spec}: an eval .npz needs arrays 'X' and 'y' (labels)")
            x, y = d["X"], d["y"]
    else:
        x, y = spec
    return lambda model: accuracy(model, x, y)


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy: argmax of the model's first 2-D float output against labels ``y``
    (``x`` is reshaped to the model's input shape when only the rank differs)."""
    shape = model.inputs[0].shape
    if shape is not None and x.ndim != len(shape) and all(isinstance(d, int) for d in shape[1:]):
        x = x.reshape(-1, *shape[1:])  # e.g. flat 8x8 digits for an NCHW model
    out = model.predict(x)
    scores = next(v for v in out.values() if getattr(v, "ndim", 0) == 2 and v.dtype.kind == "f")
    return float(np.mean(np.argmax(scores, axis=1) == np.asarray(y).reshape(-1)))
