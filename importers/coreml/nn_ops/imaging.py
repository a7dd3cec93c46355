"""Image, volume and detection layers: resizeBilinear, cropResize, crop, reorganizeData,
convolution3d, pooling3d, globalPooling3d, NonMaximumSuppression (NeuralNetwork.proto
semantics, cited per row).

Spatial layers act on the last axes; for ranks above 4 the leading axes are batch
("the leading dimensions, starting from 0 to -4 (inclusive), are all treated as batch"),
folded into one batch axis around the ONNX op and restored after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from modelloader.errors import ModelFormatError
from modelloader.importers.coreml.common import ML
from modelloader.importers.coreml.neuralnetwork import NNContext, nn_layer
from modelloader.importers.coreml.reader import protos

_I64_MAX = np.iinfo(np.int64).max
#: SamplingMode.Method and BoxCoordinatesMode.Coordinates names CoreMLNNCropResize knows
_SAMPLING = (
    "STRICT_ALIGN_ENDPOINTS_MODE",
    "ALIGN_ENDPOINTS_MODE",
    "UPSAMPLE_MODE",
    "ROI_ALIGN_MODE",
)
_BOXES = (
    "CORNERS_HEIGHT_FIRST",
    "CORNERS_WIDTH_FIRST",
    "CENTER_SIZE_HEIGHT_FIRST",
    "CENTER_SIZE_WIDTH_FIRST",
)


def _nchw(ctx: NNContext, x: str, rank: int, op: Callable[[str], str], out: str) -> None:
    """Applies ``op`` (rank-4 NCHW in, rank-4 out) to a rank >= 3 value, the axes before
    C, H, W folded into N and restored after."""
    if rank < 3:
        raise ModelFormatError(f"a spatial layer got a rank-{rank} input (needs rank >= 3)")
    if rank in (3, 4):
        x4, r = ctx.to_nchw(x)
        ctx.from_nchw(op(x4), r, out)
        return
    shape = ctx.tmp("Shape", [x])
    lead = ctx.tmp("Slice", [shape, ctx.int64([0]), ctx.int64([rank - 3]), ctx.int64([0])])
    chw = ctx.tmp("Slice", [shape, ctx.int64([rank - 3]), ctx.int64([rank]), ctx.int64([0])])
    x4 = ctx.tmp("Reshape", [x, ctx.tmp("Concat", [ctx.int64([-1]), chw], axis=0)])
    y4 = op(x4)
    tail = ctx.tmp(
        "Slice", [ctx.tmp("Shape", [y4]), ctx.int64([1]), ctx.int64([4]), ctx.int64([0])]
    )
    ctx.node("Reshape", [y4, ctx.tmp("Concat", [lead, tail], axis=0)], [out])


def _sampling(mode: Any) -> str:
    name = protos().NeuralNetwork_pb2.SamplingMode.Method.Name(mode.samplingMethod)
    if name not in _SAMPLING:
        raise ModelFormatError(f"unknown sampling mode {name}")
    return name


def _target(sizes: Any) -> list[int]:
    t = [int(v) for v in sizes] or [1, 1]
    if len(t) != 2 or min(t) < 1:
        raise ModelFormatError(f"targetSize must be 2 positive sizes [H, W], got {t}")
    return t


@nn_layer("resizeBilinear")
def resize_bilinear(layer: Any, ctx: NNContext) -> None:
    """ResizeBilinearLayer: last two axes to ``targetSize`` on the ``SamplingMode`` grid
    (-> CoreMLNNResizeBilinear; only UPSAMPLE_MODE matches an ONNX Resize mode)."""
    p = layer.resizeBilinear
    ctx.node(
        "CoreMLNNResizeBilinear",
        [ctx.x(layer)],
        [ctx.y(layer)],
        domain=ML,
        target_size=_target(p.targetSize),
        mode=_sampling(p.mode),
    )


@nn_layer("cropResize")
def crop_resize(layer: Any, ctx: NNContext) -> None:
    """CropResizeLayer: x [1, B, C, H, W], boxes [N, 1, 4 or 5, 1, 1] -> [N, B or 1, C, h, w]
    (-> CoreMLNNCropResize)."""
    p = layer.cropResize
    if len(layer.input) != 2:
        raise ModelFormatError(f"cropResize '{layer.name}' needs 2 inputs (image, boxes)")
    x, roi = ctx.ins(layer)
    rank = ctx.rank_of(layer.input[0])
    if rank == 5:
        x = ctx.tmp("Squeeze", [x, ctx.int64([0])])
    elif rank != 4:
        raise ModelFormatError(f"cropResize '{layer.name}': image must be rank 5, got {rank}")
    roi = ctx.tmp("Reshape", [roi, ctx.int64([0, -1])])
    box_mode = protos().NeuralNetwork_pb2.BoxCoordinatesMode.Coordinates.Name(
        p.boxIndicesMode.boxMode
    )
    if box_mode not in _BOXES:
        raise ModelFormatError(f"unknown box coordinates mode {box_mode}")
    ctx.node(
        "CoreMLNNCropResize",
        [x, roi],
        [ctx.y(layer)],
        domain=ML,
        target_size=_target(p.targetSize),
        mode=_sampling(p.mode),
        normalized=int(p.normalizedCoordinates),
        box_mode=box_mode,
        spatial_scale=float(p.spatialScale) or 1.0,  # proto3 leaves an unset scale at 0
    )
    ctx.rank[ctx.y(layer)] = 5


@nn_layer("crop")
def crop(layer: Any, ctx: NNContext) -> None:
    """CropLayer on the last two axes: one input -> ``cropAmounts`` off each edge; two
    inputs -> ``x1[..., offset[0]:offset[0] + H2, offset[1]:offset[1] + W2]`` (H2, W2 from
    the second input's shape)."""
    p = layer.crop
    x = ctx.x(layer)
    axes = ctx.int64([-2, -1])
    if len(layer.input) == 1:
        a = p.cropAmounts.borderAmounts
        if len(a) != 2:
            raise ModelFormatError(f"crop '{layer.name}': cropAmounts needs [H, W] edges")
        starts = [int(a[0].startEdgeSize), int(a[1].startEdgeSize)]
        ends = [-int(e.endEdgeSize) if e.endEdgeSize else _I64_MAX for e in a]
        ctx.node("Slice", [x, ctx.int64(starts), ctx.int64(ends), axes], [ctx.y(layer)])
        return
    off = [int(v) for v in p.offset] or [0, 0]
    if len(off) != 2:
        raise ModelFormatError(f"crop '{layer.name}': offset needs 2 values [H, W], got {off}")
    ref = ctx.name(layer.input[1])
    hw = ctx.tmp(
        "Slice", [ctx.tmp("Shape", [ref]), ctx.int64([-2]), ctx.int64([_I64_MAX]), ctx.int64([0])]
    )
    ends = ctx.tmp("Add", [hw, ctx.int64(off)])
    ctx.node("Slice", [x, ctx.int64(off), ends, axes], [ctx.y(layer)])


@nn_layer("reorganizeData")
def reorganize_data(layer: Any, ctx: NNContext) -> None:
    """ReorganizeDataLayer on [.., C, H, W]: SPACE_TO_DEPTH -> SpaceToDepth, DEPTH_TO_SPACE
    -> DepthToSpace (DCR: channel (i*b + j)*C' + c goes to block offset (i, j)), PIXEL_SHUFFLE
    -> DepthToSpace CRD (channel c*b*b + i*b + j), per the proto's worked example."""
    p = layer.reorganizeData
    b = int(p.blockSize)
    if b < 2:
        raise ModelFormatError(f"reorganizeData '{layer.name}': blockSize must be > 1, got {b}")
    mode = int(p.mode)
    if mode not in (0, 1, 2):
        raise ModelFormatError(f"reorganizeData '{layer.name}': unknown mode {mode}")

    def op(x4: str) -> str:
        if mode == 0:
            return ctx.tmp("SpaceToDepth", [x4], blocksize=b)
        return ctx.tmp("DepthToSpace", [x4], blocksize=b, mode="DCR" if mode == 1 else "CRD")

    _nchw(ctx, ctx.x(layer), ctx.rank_of(layer.input[0]), op, ctx.y(layer))


def _rank5(ctx: NNContext, layer: Any) -> str:
    return ctx.rank5_input(layer, "[Batch, C, D, H, W]")


def _pads3d(p: Any, where: str) -> dict[str, Any]:
    """CUSTOM -> explicit pads (front, top, left, back, bottom, right); VALID -> none;
    SAME -> ceil(in / stride) outputs, an odd total padding's extra at the back/bottom/right."""
    kind = int(p.paddingType)
    if kind == 0:
        return {
            "pads": [
                int(p.customPaddingFront),
                int(p.customPaddingTop),
                int(p.customPaddingLeft),
                int(p.customPaddingBack),
                int(p.customPaddingBottom),
                int(p.customPaddingRight),
            ]
        }
    if kind == 1:
        return {"pads": [0] * 6}
    if kind == 2:
        return {"auto_pad": "SAME_UPPER"}
    raise ModelFormatError(f"{where}: unknown padding type {kind}")


@nn_layer("convolution3d")
def convolution3d(layer: Any, ctx: NNContext) -> None:
    """Convolution3DLayer on [B, C, D, H, W]: weights [Cout, Cin/groups, kD, kH, kW] -> Conv;
    deconvolution weights [Cin, Cout/groups, kD, kH, kW] -> ConvTranspose (pads crop the
    output, ``outputShape`` sets it)."""
    p = layer.convolution3d
    where = f"convolution3d '{layer.name}'"
    x = _rank5(ctx, layer)
    g = int(p.nGroups) or 1
    cin, cout = int(p.inputChannels), int(p.outputChannels)
    k = [int(p.kernelDepth), int(p.kernelHeight), int(p.kernelWidth)]
    s = [int(p.strideDepth) or 1, int(p.strideHeight) or 1, int(p.strideWidth) or 1]
    d = [int(p.dilationDepth) or 1, int(p.dilationHeight) or 1, int(p.dilationWidth) or 1]
    if min(k) < 1 or cin < 1 or cout < 1 or cin % g or cout % g:
        raise ModelFormatError(f"{where}: bad kernel {k}, channels {cin}->{cout} or groups {g}")
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": s, "dilations": d, "group": g}
    attrs.update(_pads3d(p, where))
    if p.isDeconvolution:
        w = ctx.weights(p.weights, (cin, cout // g, *k), axis=1)
        if len(p.outputShape):
            attrs["output_shape"] = [int(v) for v in p.outputShape]
            attrs.pop("pads", None)
            attrs["auto_pad"] = "SAME_UPPER"
        elif attrs.get("auto_pad") == "SAME_UPPER":
            raise ModelFormatError(f"{where}: SAME padding without outputShape is not supported")
    else:
        w = ctx.weights(p.weights, (cout, cin // g, *k))
    ins = [x, w]
    if p.hasBias:
        ins.append(ctx.weights(p.bias, (cout,), hint="b"))
    op = "ConvTranspose" if p.isDeconvolution else "Conv"
    ctx.node(op, ins, [ctx.y(layer)], **attrs)


@nn_layer("pooling3d")
def pooling3d(layer: Any, ctx: NNContext) -> None:
    """Pooling3DLayer (MAX / AVERAGE) on [B, C, D, H, W] -> MaxPool / AveragePool; average
    counts padded cells unless ``countExcludePadding``. Max pooling never selects padding
    (the proto says padding is zeros; ONNX and every other runtime skip it)."""
    p = layer.pooling3d
    where = f"pooling3d '{layer.name}'"
    x = _rank5(ctx, layer)
    k = [int(p.kernelDepth), int(p.kernelHeight), int(p.kernelWidth)]
    s = [int(p.strideDepth) or 1, int(p.strideHeight) or 1, int(p.strideWidth) or 1]
    if min(k) < 1:
        raise ModelFormatError(f"{where}: kernel sizes must be positive, got {k}")
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": s}
    attrs.update(_pads3d(p, where))
    if int(p.type) == 0:
        ctx.node("MaxPool", [x], [ctx.y(layer)], **attrs)
    elif int(p.type) == 1:
        attrs["count_include_pad"] = int(not p.countExcludePadding)
        ctx.node("AveragePool", [x], [ctx.y(layer)], **attrs)
    else:
        raise ModelFormatError(f"{where}: unknown pooling type {int(p.type)}")


@nn_layer("globalPooling3d")
def global_pooling3d(layer: Any, ctx: NNContext) -> None:
    """GlobalPooling3DLayer: max / average over D, H, W of [B, C, D, H, W], kept as size 1."""
    kind = int(layer.globalPooling3d.type)
    if kind not in (0, 1):
        raise ModelFormatError(f"globalPooling3d '{layer.name}': unknown pooling type {kind}")
    op = "GlobalMaxPool" if kind == 0 else "GlobalAveragePool"
    ctx.node(op, [_rank5(ctx, layer)], [ctx.y(layer)])


@nn_layer("NonMaximumSuppression")
def non_maximum_suppression(layer: Any, ctx: NNContext) -> None:
    """NonMaximumSuppressionLayer: boxes (B, N, 4) as centre x, centre y, width, height and
    scores (B, N, C) -> boxes, scores, indices (-1 padded) and counts, padded to ``maxBoxes``
    -> CoreMLNNNonMaximumSuppression. Thresholds / box limit given as inputs 3-5 must be
    constants."""
    p = layer.NonMaximumSuppression
    where = f"NonMaximumSuppression '{layer.name}'"
    if not 2 <= len(layer.input) <= 5 or len(layer.output) != 4:
        raise ModelFormatError(f"{where}: needs 2 to 5 inputs and 4 outputs")
    values: list[float] = [float(p.iouThreshold), float(p.scoreThreshold), float(p.maxBoxes)]
    for k, name in enumerate(layer.input[2:]):
        known = ctx.constants.get(ctx.name(name))
        if known is None:
            raise ModelFormatError(
                f"{where}: input '{name}' (threshold / box limit) must be a constant"
            )
        values[k] = float(np.asarray(known).reshape(-1)[0])
    if values[2] < 1:
        raise ModelFormatError(f"{where}: maxBoxes must be positive")
    ctx.node(
        "CoreMLNNNonMaximumSuppression",
        ctx.ins(layer)[:2],
        list(layer.output),
        domain=ML,
        iou_threshold=values[0],
        score_threshold=values[1],
        max_boxes=int(values[2]),
        per_class_suppression=int(p.perClassSuppression),
    )
    for o, rank in zip(layer.output, (3, 3, 2, 1)):
        ctx.rank[o] = rank
