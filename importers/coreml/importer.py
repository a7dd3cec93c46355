"""Dispatch over CoreML model types; shared input/output handling (images, classifiers)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelloader.errors import ModelFormatError, UnsupportedOpError
from modelloader.importers.coreml.common import Builder
from modelloader.importers.coreml.reader import CoreMLFile, protos
from modelloader.ir import Graph, Value
from modelloader.ir.builder import onnx_dtype, refusals_reported
from modelloader.kernels.registry import Registry

_ARRAY_DT = {
    "FLOAT32": np.float32,
    "FLOAT16": np.float16,
    "DOUBLE": np.float64,
    "INT32": np.int32,
    "INT8": np.int8,
}


@dataclass
class Part:
    """One imported (sub)model: nodes/constants plus its interface by feature name."""

    builder: Builder
    inputs: list[Value]
    outputs: list[Value]
    compressed: dict[str, str] = field(default_factory=dict)
    class_labels: list[Any] | None = None
    opset: str = ""


def feature_value(feature: Any) -> Value:
    """The graph-level Value of a ``FeatureDescription`` (images: uint8 HxWxC)."""
    t = feature.type
    kind = t.WhichOneof("Type")
    if kind == "multiArrayType":
        dt_name = protos().FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(
            t.multiArrayType.dataType
        )
        dt = np.dtype(_ARRAY_DT.get(dt_name, np.float32))
        shape: tuple[Any, ...] | None = tuple(int(s) for s in t.multiArrayType.shape) or None
        if t.multiArrayType.WhichOneof("ShapeFlexibility") is not None and shape is not None:
            flex = t.multiArrayType
            if flex.WhichOneof("ShapeFlexibility") == "shapeRange":
                shape = tuple(
                    r.lowerBound if r.lowerBound == r.upperBound else None
                    for r in flex.shapeRange.sizeRanges
                )
            else:
                shape = tuple(None for _ in shape)
        return Value(feature.name, dt, shape)
    if kind == "imageType":
        img = t.imageType
        gray = (
            protos()
            .FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(img.colorSpace)
            .startswith("GRAYSCALE")
        )
        h = int(img.height) or None
        w = int(img.width) or None
        return Value(feature.name, np.dtype(np.uint8), (h, w, 1 if gray else 3))
    if kind == "int64Type":
        return Value(feature.name, np.dtype(np.int64), (1,))
    if kind == "doubleType":
        return Value(feature.name, np.dtype(np.float64), (1,))
    if kind == "stringType":
        return Value(feature.name, np.dtype(object), (1,))
    if kind == "dictionaryType":
        return Value(feature.name, np.dtype(np.float32), (None,))
    raise ModelFormatError(f"feature '{feature.name}' has unsupported type {kind}")


def image_preprocess(
    b: Builder,
    feature: Any,
    rank: int,
    scale: float = 1.0,
    biases: list[float] | None = None,
) -> str:
    """uint8 HxWxC RGB -> float32 [1]*(rank-3) + [C, H, W] in the model's channel order."""
    img = feature.type.imageType
    space = protos().FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(img.colorSpace)
    x = b.tmp("Cast", [feature.name], to=onnx_dtype(np.float32))
    x = b.tmp("Transpose", [x], perm=[2, 0, 1])
    if space == "BGR":
        x = b.tmp("Gather", [x, b.constant(np.asarray([2, 1, 0], np.int64))], axis=0)
    if scale != 1.0:
        x = b.tmp("Mul", [x, b.constant(np.float32(scale))])
    if biases is not None and any(biases):
        x = b.tmp("Add", [x, b.constant(np.asarray(biases, np.float32).reshape(-1, 1, 1))])
    if rank > 3:
        x = b.tmp("Unsqueeze", [x, b.int64(list(range(rank - 3)))])
    return x


def classifier_outputs(
    b: Builder, spec: Any, probs: str, labels: list[Any], rename: dict[str, str]
) -> None:
    """Emits CoreML's class-label and probabilities outputs from a probability tensor."""
    desc = spec.description
    if probs in (desc.predictedProbabilitiesName, desc.predictedFeatureName):
        new = b.fresh("probs")
        for n in b.nodes:
            n.inputs = [new if i == probs else i for i in n.inputs]
            n.outputs = [new if o == probs else o for o in n.outputs]
        probs = new
    flat = b.tmp("Reshape", [probs, b.int64([-1])])
    if desc.predictedProbabilitiesName:
        b.node("Identity", [flat], [desc.predictedProbabilitiesName])
    if desc.predictedFeatureName:
        idx = b.tmp("ArgMax", [flat], axis=0, keepdims=1)
        table = np.asarray(labels, dtype=object if isinstance(labels[0], str) else np.int64)
        b.node("Gather", [b.constant(table), idx], [desc.predictedFeatureName], axis=0)
    del rename


def string_or_int_labels(params: Any) -> list[Any] | None:
    which = params.WhichOneof("ClassLabels")
    if which == "stringClassLabels":
        return list(params.stringClassLabels.vector)
    if which == "int64ClassLabels":
        return [int(v) for v in params.int64ClassLabels.vector]
    return None


def import_part(
    spec: Any,
    file: CoreMLFile,
    missing: list[tuple[str, str, int]],
    counter: list[int],
    prefix: str,
    densify: bool,
) -> Part:
    kind = spec.WhichOneof("Type")
    if kind == "mlProgram":
        from modelloader.importers.coreml.mlprogram import import_mlprogram

        return import_mlprogram(spec, file, missing, counter, prefix, densify)
    if kind in ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor"):
        from modelloader.importers.coreml.neuralnetwork import import_neuralnetwork

        return import_neuralnetwork(spec, file, missing, counter, prefix)
    if kind in ("pipeline", "pipelineClassifier", "pipelineRegressor"):
        from modelloader.importers.coreml.pipeline import import_pipeline

        return import_pipeline(spec, file, missing, counter, prefix, densify)
    missing.append((kind or "?", "coreml model type", int(spec.specificationVersion)))
    return Part(
        Builder(prefix, counter=counter), [feature_value(f) for f in spec.description.input], []
    )


def source_ops(spec: Any) -> Counter[str]:
    """The model's own layer types (NeuralNetwork) or MIL op types (ML Program, nested blocks
    included), over every model of a pipeline; other model types count as themselves."""
    counts: Counter[str] = Counter()
    kind = spec.WhichOneof("Type")
    if kind in ("pipeline", "pipelineClassifier", "pipelineRegressor"):
        pipe = spec.pipeline if kind == "pipeline" else getattr(spec, kind).pipeline
        for sub in pipe.models:
            counts += source_ops(sub)
    elif kind in ("neuralNetwork", "neuralNetworkClassifier", "neuralNetworkRegressor"):
        counts.update(layer.WhichOneof("layer") or "?" for layer in getattr(spec, kind).layers)
    elif kind == "mlProgram":
        blocks = [
            b for f in spec.mlProgram.functions.values() for b in f.block_specializations.values()
        ]
        while blocks:
            block = blocks.pop()
            for op in block.operations:
                counts[op.type] += 1
                blocks.extend(op.blocks)
    elif kind:
        counts[kind] += 1
    return counts


def import_model(file: CoreMLFile, registry: Registry, densify: bool = False) -> Graph:
    """Builds the IR of a CoreML model.

    Raises ``UnsupportedOpError`` listing every layer / MIL op / model type without a
    row, and every emitted op without a kernel.
    """
    spec = file.spec
    missing: list[tuple[str, str, int]] = []
    with refusals_reported(missing):
        part = import_part(spec, file, missing, [0], "", densify)
    for n in part.builder.nodes:
        if not registry.supports(n.op, n.domain):
            missing.append((n.op, n.domain or "ai.onnx", 0))
    if missing:
        raise UnsupportedOpError(missing)
    g = Graph(
        name="main",
        inputs=part.inputs,
        outputs=part.outputs,
        nodes=part.builder.nodes,
        constants=part.builder.constants,
    )
    for v in g.inputs + g.outputs:
        g.values[v.name] = v
    desc = spec.description
    meta = {k: v for k, v in desc.metadata.userDefined.items()}
    for key in ("shortDescription", "author", "license", "versionString"):
        val = getattr(desc.metadata, key)
        if val:
            meta[key] = val
    if part.class_labels is not None:
        meta["class_labels"] = json.dumps(part.class_labels)
    g.metadata["metadata"] = meta
    g.metadata["class_labels"] = part.class_labels
    g.metadata["coreml_spec_version"] = int(spec.specificationVersion)
    g.metadata["coreml_type"] = spec.WhichOneof("Type")
    g.metadata["coreml_opset"] = part.opset
    g.metadata["source_ops"] = source_ops(spec)
    kinds = sorted(set(part.compressed.values()))
    g.metadata["weight_storage"] = (
        f"compressed in memory ({', '.join(kinds)}: {len(part.compressed)} tensors, "
        "decompressed per run)"
        if part.compressed
        else "dense"
    )
    return g
