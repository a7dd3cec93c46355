"""``pipeline`` / ``pipelineClassifier`` / ``pipelineRegressor``: sub-models chained by feature name."""

from __future__ import annotations

from typing import Any

from modelloader.importers.coreml.common import Builder
from modelloader.importers.coreml.reader import CoreMLFile


def import_pipeline(
    spec: Any,
    file: CoreMLFile,
    missing: list[tuple[str, str, int]],
    counter: list[int],
    prefix: str,
    densify: bool,
) -> Any:
    """Each stage reads earlier stages' outputs (or the pipeline's inputs) by name."""
    from modelloader.importers.coreml.importer import Part, feature_value, import_part

    kind = spec.WhichOneof("Type")
    pipe = getattr(spec, kind)
    if kind != "pipeline":
        pipe = pipe.pipeline
    b = Builder(prefix, counter=counter)
    compressed: dict[str, str] = {}
    labels = None
    opsets = []
    for i, sub in enumerate(pipe.models):
        part = import_part(sub, file, missing, counter, f"{prefix}p{i}_", densify)
        b.nodes.extend(part.builder.nodes)
        b.constants.update(part.builder.constants)
        compressed.update(part.compressed)
        labels = part.class_labels if part.class_labels is not None else labels
        if part.opset:
            opsets.append(part.opset)
    inputs = [feature_value(f) for f in spec.description.input]
    outputs = [feature_value(f) for f in spec.description.output]
    return Part(b, inputs, outputs, compressed, labels, "; ".join(opsets))
