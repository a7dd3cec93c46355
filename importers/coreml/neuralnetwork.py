"""NeuralNetwork (``.mlmodel`` layers) -> IR.

Shapes: with ``EXACT_ARRAY_MAPPING`` (what ``ct.convert`` emits) tensors keep their
declared ranks. Legacy rank-5 networks (``NeuralNetworkBuilder`` default) see every
input as ``[Seq, Batch, C, H, W]``: inputs are reshaped to rank 5 on entry and outputs
back to their declared shapes on exit. Legacy layers (convolution, pooling, ...) act
on the last three axes as C, H, W; a rank-5 value is squeezed to NCHW around them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelloader.errors import ModelFormatError
from modelloader.importers.coreml.common import Builder
from modelloader.importers.coreml.reader import CoreMLFile, protos
from modelloader.ir.builder import run_row

LayerFn = Callable[[Any, "NNContext"], None]
NN_TABLE: dict[str, LayerFn] = {}


def nn_layer(*names: str) -> Callable[[LayerFn], LayerFn]:
    """Registers a builder for NeuralNetworkLayer oneof names (``"convolution"``)."""

    def deco(fn: LayerFn) -> LayerFn:
        for n in names:
            NN_TABLE[n] = fn
        return fn

    return deco


def _unpack_msb(raw: bytes, nbits: int, count: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(raw, np.uint8))[: count * nbits]
    if bits.size < count * nbits:
        raise ModelFormatError(f"quantized weights hold fewer than {count} {nbits}-bit values")
    weights = (1 << np.arange(nbits - 1, -1, -1)).astype(np.uint16)
    return (bits.reshape(count, nbits).astype(np.uint16) @ weights).astype(np.uint8)


def weights(wp: Any, shape: tuple[int, ...] | list[int] | None = None, axis: int = 0) -> np.ndarray:
    """A ``WeightParams`` as float32: float, float16, raw float32 or quantized (1-8 bits)."""
    count = int(np.prod(shape)) if shape is not None else None
    if len(wp.floatValue):
        arr = np.asarray(wp.floatValue, np.float32)
    elif len(wp.float16Value):
        arr = np.frombuffer(wp.float16Value, np.float16).astype(np.float32)
    elif wp.HasField("quantization"):
        q = wp.quantization
        nbits = int(q.numberOfBits)
        raw = wp.rawValue or wp.int8RawValue
        if count is None:
            count = len(raw) * 8 // max(nbits, 1)
        if len(wp.int8RawValue):
            idx = np.frombuffer(wp.int8RawValue, np.int8)[:count].astype(np.float32)
        else:
            idx = _unpack_msb(raw, nbits, count)
        which = q.WhichOneof("QuantizationType")
        if which == "lookupTableQuantization":
            lut = np.asarray(q.lookupTableQuantization.floatValue, np.float32)
            arr = lut[idx.astype(np.int64)]
        elif which == "linearQuantization":
            scale = np.asarray(q.linearQuantization.scale, np.float32)
            bias = np.asarray(q.linearQuantization.bias, np.float32)
            assert shape is not None
            w = idx.astype(np.float32).reshape(shape)
            ax = [1] * w.ndim
            if scale.size > 1:
                ax[axis] = -1
            arr = w * scale.reshape(ax) + (bias.reshape(ax) if bias.size else 0)
        else:
            raise ModelFormatError(f"unknown weight quantization {which}")
    elif len(wp.rawValue):
        arr = np.frombuffer(wp.rawValue, np.float32).astype(np.float32)
    elif len(wp.int8RawValue):
        arr = np.frombuffer(wp.int8RawValue, np.int8).astype(np.float32)
    else:
        arr = np.zeros(0, np.float32)
    if shape is not None:
        if arr.size != count:
            raise ModelFormatError(
                f"weights hold {arr.size} values, the layer needs {count} {tuple(shape)}"
            )
        arr = arr.reshape(shape)
    return np.asarray(arr, np.float32)


@dataclass
class NNContext(Builder):
    """One NeuralNetwork under construction; ``rank`` tracks each value's rank."""

    rank: dict[str, int] = field(default_factory=dict)
    rank5: bool = False
    alias: dict[str, str] = field(default_factory=dict)
    class_labels: list[Any] | None = None

    def name(self, n: str) -> str:
        return self.alias.get(n, n)

    def ins(self, layer: Any) -> list[str]:
        return [self.name(n) for n in layer.input]

    def x(self, layer: Any) -> str:
        return self.name(layer.input[0])

    def y(self, layer: Any) -> str:
        return layer.output[0]

    def rank_of(self, n: str) -> int:
        r = self.rank.get(self.name(n), self.rank.get(n))
        if r is None:
            raise ModelFormatError(f"rank of '{n}' is unknown")
        return r

    def rank5_input(self, layer: Any, layout: str) -> str:
        """The layer's first input, which must be rank 5 (``layout`` names its axes)."""
        rank = self.rank_of(layer.input[0])
        if rank != 5:
            raise ModelFormatError(
                f"{layer.WhichOneof('layer')} '{layer.name}': input must be rank 5 "
                f"{layout}, got rank {rank}"
            )
        return self.x(layer)

    def weights(self, wp: Any, shape: Any = None, axis: int = 0, hint: str = "w") -> str:
        return self.constant(weights(wp, shape, axis), hint)

    def to_nchw(self, x: str) -> tuple[str, int]:
        """Rank-3/5 CHW-last values -> rank 4 NCHW (and the original rank)."""
        r = self.rank_of(x)
        if r == 4:
            return x, r
        if r == 3:
            return self.tmp("Unsqueeze", [x, self.int64([0])]), r
        if r == 5:
            return self.tmp("Squeeze", [x, self.int64([0])]), r
        raise ModelFormatError(f"a spatial layer got a rank-{r} input")

    def from_nchw(self, y4: str, rank: int, out: str) -> None:
        if rank == 4:
            self.node("Identity", [y4], [out])
        elif rank == 3:
            self.node("Squeeze", [y4, self.int64([0])], [out])
        else:
            self.node("Unsqueeze", [y4, self.int64([0])], [out])


def _net(spec: Any) -> Any:
    kind = spec.WhichOneof("Type")
    return getattr(spec, kind)


def import_neuralnetwork(
    spec: Any,
    file: CoreMLFile,
    missing: list[tuple[str, str, int]],
    counter: list[int],
    prefix: str,
) -> Any:
    """A NeuralNetwork(+Classifier/Regressor) model as a ``Part``."""
    from modelloader.importers.coreml import nn_ops  # noqa: F401  (registers the rows)
    from modelloader.importers.coreml.importer import (
        Part,
        classifier_outputs,
        feature_value,
        image_preprocess,
        string_or_int_labels,
    )

    del file
    nn = _net(spec)
    pb = protos().NeuralNetwork_pb2
    exact = nn.arrayInputShapeMapping == pb.NeuralNetworkMultiArrayShapeMapping.Value(
        "EXACT_ARRAY_MAPPING"
    )
    ctx = NNContext(prefix=prefix, counter=counter, rank5=not exact)
    pre = {p.featureName: p for p in nn.preprocessing}
    inputs: list[Value] = []
    for f in spec.description.input:
        v = feature_value(f)
        inputs.append(v)
        if f.type.WhichOneof("Type") == "imageType":
            rank = 5 if ctx.rank5 else 4
            scale, biases = 1.0, None
            p = pre.get(f.name) or pre.get("")
            if p is not None and p.WhichOneof("preprocessor") == "scaler":
                s = p.scaler
                scale = float(s.channelScale) if s.channelScale else 1.0
                space = protos().FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(
                    f.type.imageType.colorSpace
                )
                if space == "BGR":
                    biases = [s.blueBias, s.greenBias, s.redBias]
                elif space == "RGB":
                    biases = [s.redBias, s.greenBias, s.blueBias]
                else:
                    biases = [s.grayBias]
            ctx.alias[f.name] = image_preprocess(ctx, f, rank, scale, biases)
            ctx.rank[ctx.alias[f.name]] = rank
            continue
        src = f.name
        if v.dtype is not None and v.dtype != np.float32 and v.dtype.kind in "fi":
            src = ctx.cast(src, np.float32)  # the network computes in float32
        if ctx.rank5 and v.shape is not None:
            shape = [d if isinstance(d, int) else 0 for d in v.shape]
            r5 = {1: [1, 1, -1, 1, 1], 3: [1, 1] + shape, 5: shape}.get(len(shape))
            if r5 is None:
                r5 = [1] * (5 - len(shape)) + shape
            src = ctx.tmp("Reshape", [src, ctx.int64(r5)])
            ctx.rank[src] = 5
        else:
            ctx.rank[src] = len(v.shape) if v.shape is not None else 4
        if src != f.name:
            ctx.alias[f.name] = src
    version = int(spec.specificationVersion)
    for layer in nn.layers:
        kind = layer.WhichOneof("layer")
        row = NN_TABLE.get(kind or "")
        if row is None:
            missing.append((kind or "?", "coreml neuralnetwork", version))
            continue
        known = {o: None for o in layer.output}
        run_row(missing, row, layer, ctx)
        for i, o in enumerate(layer.output):
            if o in ctx.rank:
                continue
            if i < len(layer.outputTensor) and layer.outputTensor[i].rank:
                ctx.rank[o] = int(layer.outputTensor[i].rank)
            elif ctx.rank5:
                ctx.rank[o] = 5
            elif layer.input:
                ctx.rank[o] = ctx.rank_of(layer.input[0])
        del known
    outputs: list[Value] = []
    labels = None
    kind = spec.WhichOneof("Type")
    desc = spec.description
    class_names = {desc.predictedFeatureName, desc.predictedProbabilitiesName} - {""}
    if kind == "neuralNetworkClassifier":
        labels = string_or_int_labels(nn)
        probs = nn.labelProbabilityLayerName or (nn.layers[-1].output[0] if nn.layers else "")
        if labels:
            classifier_outputs(ctx, spec, ctx.name(probs), labels, {})
    for f in desc.output:
        v = feature_value(f)
        outputs.append(v)
        if kind == "neuralNetworkClassifier" and f.name in class_names and labels:
            continue
        src = ctx.name(f.name)
        reshape = ctx.rank5 and v.shape is not None and all(isinstance(d, int) for d in v.shape)
        cast = v.dtype is not None and v.dtype.kind == "f" and v.dtype != np.float32
        if not (reshape or cast or src != f.name):
            continue
        if src == f.name:
            src = _retarget(ctx, f.name)
        if reshape:
            src = ctx.tmp("Reshape", [src, ctx.int64(v.shape)])
        if cast:
            src = ctx.tmp("Cast", [src], to=_onnx(v.dtype))
        ctx.node("Identity", [src], [f.name])
    return Part(ctx, inputs, outputs, {}, labels, f"specificationVersion {version}")


def _retarget(ctx: NNContext, name: str) -> str:
    """Renames value ``name`` everywhere in the network so ``name`` can be redefined."""
    new = ctx.fresh("net_out")
    if name in ctx.constants:  # a loadConstant output that is also a model output
        ctx.constants[new] = ctx.constants.pop(name)
    for n in ctx.nodes:
        n.inputs = [new if i == name else i for i in n.inputs]
        n.outputs = [new if o == name else o for o in n.outputs]
    return new


def _onnx(dt: np.dtype) -> int:
    from modelloader.ir.builder import onnx_dtype

    return onnx_dtype(dt)


from modelloader.ir import Value  # noqa: E402
