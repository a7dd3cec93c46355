"""The accuracy report: quantized vs float outputs on held-out samples, and per-layer SNR."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelloader.ir import Graph
from modelloader.quantize.calibrate import Dataset, Progress, no_progress, run_with_intermediates
from modelloader.quantize.rewrite import Layer

SNR_CAP = 200.0  # dB reported for an exact match


@dataclass
class OutputStats:
    """How one output of the quantized model differs from the float model's."""

    name: str
    max_abs_error: float
    mean_abs_error: float
    relative_error: float
    snr_db: float
    cosine: float
    top1_agreement: float | None = None  # classifier-shaped float outputs; exact match for ints
    float_accuracy: float | None = None  # against the data's labels, when it has them
    quant_accuracy: float | None = None


@dataclass
class LayerStats:
    name: str
    op: str
    value: str
    snr_db: float
    max_abs_error: float


@dataclass
class Report:
    """What a quantization cost. ``drop`` is the gated figure in percentage points."""

    mode: str
    samples: int
    outputs: list[OutputStats]
    layers: list[LayerStats] = field(default_factory=list)
    drop: float = 0.0
    drop_basis: str = ""
    max_drop: float | None = None
    excluded: list[str] = field(default_factory=list)
    auto_excluded: list[str] = field(default_factory=list)
    #: layers kept in float because calibration saw inf/NaN at their inputs or outputs
    nonfinite_excluded: list[str] = field(default_factory=list)
    size_before: int = 0
    size_after: int = 0
    #: no data was given: ``samples`` are seeded random inputs, so the figures measure the
    #: quantization error, not accuracy
    random_inputs: bool = False

    @property
    def passed(self) -> bool:
        return self.max_drop is None or self.drop <= self.max_drop + 1e-9

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return _finite(d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def format(self) -> str:
        """The report as printable text."""
        if self.random_inputs:
            lines = [
                f"accuracy report ({self.mode}, {self.samples} seeded random "
                f"input{'s' if self.samples != 1 else ''}: no "
                "evaluation data was given, so this is the quantization error, not accuracy; "
                "pass --eval DATA for accuracy)"
            ]
        else:
            lines = [f"accuracy report ({self.mode}, {self.samples} held-out samples)"]
        lines.append(
            f"  {'output':<20} {'max abs':>10} {'rel err':>9} {'SNR dB':>8} {'cosine':>9} {'top-1 agree':>11}"
        )
        for o in self.outputs:
            agree = "" if o.top1_agreement is None else f"{100 * o.top1_agreement:.2f}%"
            lines.append(
                f"  {o.name:<20} {o.max_abs_error:>10.4g} {o.relative_error:>9.3g} "
                f"{o.snr_db:>8.2f} {o.cosine:>9.6f} {agree:>11}"
            )
            if o.float_accuracy is not None and o.quant_accuracy is not None:
                lines.append(
                    f"    accuracy vs labels: float {100 * o.float_accuracy:.2f}%  "
                    f"quantized {100 * o.quant_accuracy:.2f}%"
                )
        if self.layers:
            lines.append("  per-layer SNR (lowest first):")
            for lay in sorted(self.layers, key=lambda x: x.snr_db)[:20]:
                lines.append(f"    {lay.snr_db:8.2f} dB  {lay.op:<18} {lay.name}")
        if self.size_before:
            lines.append(
                f"  size: {self.size_before / 1024:.1f} KiB -> {self.size_after / 1024:.1f} KiB"
                f" ({self.size_after / self.size_before:.2f}x the original size)"
            )
        if self.excluded:
            lines.append(f"  kept in float: {', '.join(self.excluded)}")
        gate = (
            ""
            if self.max_drop is None
            else f" (gate {self.max_drop:g}: " + ("passed)" if self.passed else "MISSED)")
        )
        lines.append(f"  drop: {self.drop:.2f} points of {self.drop_basis}{gate}")
        return "\n".join(lines)

    def plot(self, path: str | Path) -> None:
        """Draws the per-layer SNR table as a bar chart (needs matplotlib: the ``plot`` extra)."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as e:
            raise RuntimeError("--plot needs matplotlib: pip install 'modelloader[plot]'") from e
        names = [f"{lay.name} ({lay.op})" for lay in self.layers] or ["(no layers)"]
        snr = [lay.snr_db for lay in self.layers] or [0.0]
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.3 * len(names) + 1)))
        ax.barh(range(len(names)), snr, color="tab:blue")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("SNR vs float (dB, higher is better)")
        ax.set_title(f"{self.mode}: drop {self.drop:.2f} points of {self.drop_basis}")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def _finite(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    return v


def _errors(ref: np.ndarray, got: np.ndarray) -> tuple[float, float, float, float, float]:
    """(max abs, mean abs, relative, SNR dB, cosine) of ``got`` against ``ref``."""
    a = np.asarray(ref, np.float64).ravel()
    b = np.asarray(got, np.float64).ravel()
    if a.size == 0:
        return 0.0, 0.0, 0.0, SNR_CAP, 1.0
    d = b - a
    sig, noise = float(a @ a), float(d @ d)
    snr = (
        SNR_CAP
        if noise == 0
        else (min(SNR_CAP, 10 * math.log10(sig / noise)) if sig > 0 else -SNR_CAP)
    )
    na, nb = math.sqrt(sig), math.sqrt(float(b @ b))
    cos = 1.0 if na == 0 and nb == 0 else (float(a @ b) / (na * nb) if na and nb else 0.0)
    rel = math.sqrt(noise) / na if na else (0.0 if noise == 0 else math.inf)
    return float(np.abs(d).max()), float(np.abs(d).mean()), rel, snr, cos


def is_classifier(x: np.ndarray) -> bool:
    """Float scores over classes: rank 2+, the last axis has several entries."""
    return x.dtype.kind == "f" and x.ndim >= 2 and x.shape[-1] > 1


def collect(
    models: Iterable[Any], data: Dataset, progress: Progress, label: str
) -> list[dict[str, np.ndarray]]:
    """Every model's outputs over ``data``, concatenated along the batch axis."""
    models = list(models)
    parts: list[dict[str, list[np.ndarray]]] = [{} for _ in models]
    for feeds in progress(data.batches, len(data.batches), label):
        for m, acc in zip(models, parts):
            for k, v in m.predict(dict(feeds)).items():
                acc.setdefault(k, []).append(np.asarray(v))
    return [
        {k: np.concatenate(v) if v[0].ndim else np.stack(v) for k, v in p.items()} for p in parts
    ]


def compare_outputs(
    ref: dict[str, np.ndarray], got: dict[str, np.ndarray], labels: np.ndarray | None
) -> list[OutputStats]:
    stats = []
    for k, a in ref.items():
        b = got[k]
        if a.dtype.kind not in "fiub":
            continue
        mx, mean, rel, snr, cos = _errors(a, b)
        s = OutputStats(k, mx, mean, rel, snr, cos)
        if is_classifier(a):
            fa, qa = a.argmax(-1), b.argmax(-1)
            s.top1_agreement = float((fa == qa).mean())
            if labels is not None and labels.shape == fa.shape:
                s.float_accuracy = float((fa == labels).mean())
                s.quant_accuracy = float((qa == labels).mean())
        elif a.dtype.kind in "iub":
            s.top1_agreement = float((a == b).mean())
            if labels is not None and labels.shape == a.shape:
                s.float_accuracy = float((a == labels).mean())
                s.quant_accuracy = float((b == labels).mean())
        stats.append(s)
    return stats


def drop_of(outputs: list[OutputStats]) -> tuple[float, str]:
    """The gated drop in points: accuracy vs labels, else top-1 disagreement, else 1 - cosine."""
    for o in outputs:
        if o.float_accuracy is not None and o.quant_accuracy is not None:
            return 100.0 * (o.float_accuracy - o.quant_accuracy), f"top-1 accuracy ({o.name})"
    for o in outputs:
        if o.top1_agreement is not None:
            return 100.0 * (1.0 - o.top1_agreement), f"top-1 agreement ({o.name})"
    worst = min((o.cosine for o in outputs), default=1.0)
    return 100.0 * (1.0 - worst), "cosine similarity"


def layer_snr(
    float_graph: Graph,
    quant_graph: Graph,
    layers: list[Layer],
    data: Dataset,
    max_samples: int,
) -> list[LayerStats]:
    """SNR of each quantized layer's output against the float graph's, on ``data``."""
    if not layers or not data.batches:
        return []
    sub = data.take(0, min(max_samples, data.samples))
    fvals = [lay.float_value for lay in layers]
    qvals = [lay.quant_value for lay in layers]
    fs: dict[str, list[np.ndarray]] = {}
    qs: dict[str, list[np.ndarray]] = {}
    for out in run_with_intermediates(float_graph, list(dict.fromkeys(fvals)), sub.batches):
        for k, v in out.items():
            fs.setdefault(k, []).append(np.asarray(v, np.float64))
    for out in run_with_intermediates(quant_graph, list(dict.fromkeys(qvals)), sub.batches):
        for k, v in out.items():
            qs.setdefault(k, []).append(np.asarray(v, np.float64))
    stats = []
    for lay in layers:
        a = np.concatenate([x.ravel() for x in fs[lay.float_value]])
        b = np.concatenate([x.ravel() for x in qs[lay.quant_value]])
        mx, _, _, snr, _ = _errors(a, b)
        stats.append(LayerStats(lay.name, lay.op, lay.float_value, snr, mx))
    return stats


__all__ = [
    "LayerStats",
    "OutputStats",
    "Report",
    "collect",
    "compare_outputs",
    "drop_of",
    "layer_snr",
    "no_progress",
]
