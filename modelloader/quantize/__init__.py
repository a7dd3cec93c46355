"""Quantization with an accuracy gate.

>>> import modelloader
>>> q = modelloader.quantize("model.onnx", config=modelloader.QuantConfig(mode="static"),
...                          calibration="calib.npz")
>>> print(q.report.format())
>>> q.save("model.int8.onnx")

``quantize`` rewrites the float graph (``rewrite``), calibrates activation ranges
(``calibrate``), and measures the result against the float model on held-out samples
(``report``). With ``max_drop`` it raises ``AccuracyGateError`` when the gate is missed;
``auto_exclude`` first keeps the lowest-SNR layers in float, one at a time.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from modelloader.api import Model, load
from modelloader.errors import ModelLoaderError
from modelloader.ir import Graph
from modelloader.quantize.calibrate import (
    Calibrator,
    Dataset,
    Entropy,
    MinMax,
    Percentile,
    Progress,
    calibrate,
    load_data,
    make_calibrator,
    no_progress,
    random_dataset,
)
from modelloader.quantize.config import QuantConfig
from modelloader.quantize.report import Report, collect, compare_outputs, drop_of, layer_snr
from modelloader.quantize.rewrite import (
    Layer,
    clone,
    dynamic,
    float16,
    plan_static,
    static,
    unbounded_layers,
    unfuse,
)

__all__ = [
    "AccuracyGateError",
    "Calibrator",
    "Dataset",
    "Entropy",
    "MinMax",
    "Percentile",
    "QuantConfig",
    "QuantizedModel",
    "Report",
    "load_data",
    "quantize",
]


class AccuracyGateError(ModelLoaderError):
    """The quantized model lost more than ``max_drop``; ``report`` says by how much."""

    def __init__(self, message: str, report: Report) -> None:
        super().__init__(message)
        self.report = report


class QuantizedModel(Model):
    """A quantized ``Model``: runs like any other (QDQ patterns as integer ops), ``report`` is
    its accuracy report and ``save(path)`` writes the quantized ONNX (QDQ for static mode)."""

    def __init__(self, graph: Graph, *, source: str, report: Report | None = None) -> None:
        from modelloader.export import to_onnx

        self.export_graph = graph
        self.report = report
        size = len(to_onnx(graph).SerializeToString())
        super().__init__(clone(graph), format="onnx", size_bytes=size, source=source)

    def save(self, path: str | os.PathLike[str]) -> None:  # type: ignore[override]
        """Writes the quantized model as ONNX (onnxruntime runs it)."""
        from modelloader.export import save

        save(self.export_graph, path)


def _float_graph(src: Any) -> tuple[Graph, int, str]:
    if isinstance(src, Model):
        return unfuse(clone(src.graph)), src.size_bytes, src.source
    m = load(src, optimize=False)
    return clone(m.graph), m.size_bytes, m.source


#: seeded random samples the report uses when no calibration or evaluation data is given
RANDOM_SAMPLES = 8


def quantize(
    model_or_path: Any,
    config: QuantConfig | None = None,
    calibration: Any = None,
    *,
    evaluation: Any = None,
    progress: Progress | None = None,
) -> QuantizedModel:
    """Quantizes a model (a ``Model``, or anything ``modelloader.load`` takes).

    ``calibration``/``evaluation``: an ``.npz`` path, a directory of ``.npy``/``.npz``, a
    ``Dataset`` or an iterable of input dicts (see ``load_data``). Static mode needs
    calibration data; without ``evaluation`` the last ``config.eval_split`` of it is held out
    for the report. ``progress(iterable, length, label)`` wraps the calibration and
    evaluation loops (a progress bar). Raises ``AccuracyGateError`` when ``config.max_drop``
    is missed (after ``auto_exclude`` ran out of layers to keep in float).
    """
    config = config or QuantConfig()
    progress = progress or no_progress
    graph, size_before, source = _float_graph(model_or_path)
    bs = config.batch_size
    data = load_data(calibration, graph.inputs, bs) if calibration is not None else None
    if evaluation is not None:
        calib, held = data, load_data(evaluation, graph.inputs, bs)
    elif data is not None and config.eval_split > 0 and data.samples > 1:
        calib, held = data.split(config.eval_split)
    else:
        calib, held = data, data
    if config.mode == "static" and (calib is None or not calib.batches):
        raise ValueError("static quantization needs calibration data")
    random_inputs = held is None
    if random_inputs:
        if config.max_drop is not None:
            raise ValueError(
                "max_drop needs data to measure the drop on: pass evaluation data "
                "(--eval DATA, with labels for accuracy) or calibration data"
            )
        # no data: the report measures the quantization error on seeded random inputs
        held = random_dataset(graph.inputs, RANDOM_SAMPLES)
    float_model = Model(clone(graph), format="onnx", source=source)
    ref = collect([float_model], held, progress, "float reference")[0] if held else {}
    labels = np.concatenate(held.labels) if held and held.labels else None

    ranges: dict[str, tuple[float, float]] = {}
    auto: list[str] = []
    nonfinite: list[str] = []  # layers kept in float: inf/NaN seen in calibration
    while True:
        if config.mode == "static":
            plan = plan_static(graph, config)
            missing = [t for t in plan.tensors if t not in ranges]
            if missing:
                cal = make_calibrator(config.method, config.percentile, config.num_bins)
                ranges.update(calibrate(graph, missing, calib, cal, progress))  # type: ignore[arg-type]
            unbounded = unbounded_layers(plan, ranges)
            if unbounded:
                nonfinite += unbounded
                config = replace(config, exclude=config.exclude + tuple(unbounded))
                continue
            qgraph, layers = static(graph, plan, ranges, config)
        elif config.mode == "dynamic":
            qgraph, layers = dynamic(graph, config)
        else:
            qgraph, layers = float16(graph, config)
        qmodel = QuantizedModel(qgraph, source=source)
        report = _report(
            config, float_model, qmodel, graph, qgraph, layers, held, ref, labels, progress
        )
        report.size_before, report.size_after = size_before, qmodel.size_bytes
        report.random_inputs = random_inputs
        report.auto_excluded = list(auto)
        report.nonfinite_excluded = list(nonfinite)
        qmodel.report = report
        if report.passed or not config.auto_exclude:
            break
        done = set(config.exclude)
        worst = [
            lay for lay in sorted(report.layers, key=lambda x: x.snr_db) if lay.name not in done
        ]
        if not worst:
            break
        auto.append(worst[0].name)
        config = replace(config, exclude=config.exclude + (worst[0].name,))
    if not report.passed:
        raise AccuracyGateError(
            f"quantized model drops {report.drop:.2f} points of {report.drop_basis}, "
            f"more than max_drop {config.max_drop:g}"
            + (f" (kept in float: {', '.join(auto)})" if auto else ""),
            report,
        )
    return qmodel


def _report(
    config: QuantConfig,
    float_model: Model,
    qmodel: Model,
    graph: Graph,
    qgraph: Graph,
    layers: list[Layer],
    held: Dataset | None,
    ref: dict[str, np.ndarray],
    labels: np.ndarray | None,
    progress: Progress,
) -> Report:
    if held is None or not held.batches:
        return Report(config.mode, 0, [], max_drop=config.max_drop, excluded=list(config.exclude))
    got = collect([qmodel], held, progress, "evaluating")[0]
    outputs = compare_outputs(ref, got, labels)
    drop, basis = drop_of(outputs)
    per_layer = layer_snr(graph, qgraph, layers, held, config.layer_report_samples)
    return Report(
        config.mode,
        held.samples,
        outputs,
        per_layer,
        drop,
        basis,
        config.max_drop,
        list(config.exclude),
    )


def save_report(report: Report, path: str | Path) -> None:
    report.save(path)
