"""Convolution, pooling, batchnorm, innerProduct, upsample and padding layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloader.errors import ModelFormatError
from modelloader.importers.coreml.neuralnetwork import NNContext, nn_layer


def _pad_attrs(p: Any, k: list[int], s: list[int], d: list[int]) -> dict[str, Any]:
    which = p.WhichOneof("ConvolutionPaddingType") if hasattr(p, "WhichOneof") else None
    del k, s, d
    if which == "same":
        mode = p.same.asymmetryMode
        return {"auto_pad": "SAME_LOWER" if mode == 1 else "SAME_UPPER"}
    amounts = p.valid.paddingAmounts.borderAmounts if which == "valid" else []
    if len(amounts) == 2:
        return {
            "pads": [
                amounts[0].startEdgeSize,
                amounts[1].startEdgeSize,
                amounts[0].endEdgeSize,
                amounts[1].endEdgeSize,
            ]
        }
    return {"pads": [0, 0, 0, 0]}


@nn_layer("convolution")
def convolution(layer: Any, ctx: NNContext) -> None:
    """weights [Cout, Cin/g, kh, kw] (deconvolution: [Cin, Cout/g, kh, kw])."""
    p = layer.convolution
    k = list(p.kernelSize) or [3, 3]
    s = list(p.stride) or [1, 1]
    d = list(p.dilationFactor) or [1, 1]
    g = int(p.nGroups) or 1
    cout, kc = int(p.outputChannels), int(p.kernelChannels)
    x4, r = ctx.to_nchw(ctx.x(layer))
    if len(layer.input) > 1:
        w = ctx.name(layer.input[1])
    elif p.isDeconvolution:
        w = ctx.weights(p.weights, (kc, cout // g, *k), axis=1)
    else:
        w = ctx.weights(p.weights, (cout, kc, *k))
    ins = [x4, w]
    if p.hasBias:
        ins.append(ctx.weights(p.bias, (cout,), hint="b"))
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": s, "dilations": d, "group": g}
    attrs.update(_pad_attrs(p, k, s, d))
    if p.isDeconvolution:
        if len(p.outputShape):
            attrs["output_shape"] = [int(v) for v in p.outputShape]
            attrs.pop("pads", None)
            attrs.setdefault("auto_pad", "SAME_UPPER")
        y = ctx.tmp("ConvTranspose", ins, **attrs)
    else:
        y = ctx.tmp("Conv", ins, **attrs)
    ctx.from_nchw(y, r, ctx.y(layer))


@nn_layer("pooling")
def pooling(layer: Any, ctx: NNContext) -> None:
    p = layer.pooling
    kind = ["MaxPool", "AveragePool", "LpPool"][p.type]
    x4, r = ctx.to_nchw(ctx.x(layer))
    if p.globalPooling:
        op = {
            "MaxPool": "GlobalMaxPool",
            "AveragePool": "GlobalAveragePool",
            "LpPool": "GlobalLpPool",
        }[kind]
        y = ctx.tmp(op, [x4])
        ctx.from_nchw(y, r, ctx.y(layer))
        return
    k = [int(v) for v in p.kernelSize] or [3, 3]
    s = [int(v) for v in p.stride] or [1, 1]
    attrs: dict[str, Any] = {"kernel_shape": k, "strides": s}
    which = p.WhichOneof("PoolingPaddingType")
    if which == "same":
        attrs["auto_pad"] = "SAME_LOWER" if p.same.asymmetryMode == 1 else "SAME_UPPER"
    elif which == "valid":
        a = p.valid.paddingAmounts.borderAmounts
        attrs["pads"] = (
            [a[0].startEdgeSize, a[1].startEdgeSize, a[0].endEdgeSize, a[1].endEdgeSize]
            if len(a) == 2
            else [0, 0, 0, 0]
        )
    else:  # includeLastPixel: symmetric padding, partial windows at the end kept
        a = list(p.includeLastPixel.paddingAmounts) or [0, 0]
        attrs["pads"] = [a[0], a[1], a[0], a[1]]
        attrs["ceil_mode"] = 1
    if kind == "AveragePool":
        attrs["count_include_pad"] = int(not p.avgPoolExcludePadding)
    if kind == "LpPool":
        attrs["p"] = 2
    y = ctx.tmp(kind, [x4], **attrs)
    ctx.from_nchw(y, r, ctx.y(layer))


@nn_layer("batchnorm")
def batchnorm(layer: Any, ctx: NNContext) -> None:
    p = layer.batchnorm
    c = int(p.channels)
    x4, r = ctx.to_nchw(ctx.x(layer))
    gamma = ctx.weights(p.gamma, (c,))
    beta = ctx.weights(p.beta, (c,))
    if p.instanceNormalization or p.computeMeanVar:
        if not p.instanceNormalization:
            raise ModelFormatError(
                "batchnorm with computeMeanVar across the batch is not supported"
            )
        y = ctx.tmp("InstanceNormalization", [x4, gamma, beta], epsilon=float(p.epsilon))
    else:
        y = ctx.tmp(
            "BatchNormalization",
            [x4, gamma, beta, ctx.weights(p.mean, (c,)), ctx.weights(p.variance, (c,))],
            epsilon=float(p.epsilon),
        )
    ctx.from_nchw(y, r, ctx.y(layer))


@nn_layer("innerProduct")
def inner_product(layer: Any, ctx: NNContext) -> None:
    """y = W x + b over the channel axis (rank-5: C*H*W flattened, H=W=1 out)."""
    p = layer.innerProduct
    cin, cout = int(p.inputChannels), int(p.outputChannels)
    if p.int8DynamicQuantize:
        raise ModelFormatError("innerProduct with int8DynamicQuantize is not supported")
    wt = ctx.constant(np.ascontiguousarray(ctx_w(p.weights, cout, cin).T), "wt")
    x = ctx.x(layer)
    r = ctx.rank_of(x)
    trailing = r >= 4 or ctx.rank5
    if trailing:
        x = ctx.tmp("Reshape", [x, ctx.int64([0] * (r - 3) + [-1])])
    y = ctx.tmp("MatMul", [x, wt])
    if p.hasBias:
        y = ctx.tmp("Add", [y, ctx.weights(p.bias, (cout,), hint="b")])
    if trailing:
        ctx.node("Unsqueeze", [y, ctx.int64([r - 2, r - 1])], [ctx.y(layer)])
    else:
        ctx.node("Identity", [y], [ctx.y(layer)])
    ctx.rank[ctx.y(layer)] = r


def ctx_w(wp: Any, cout: int, cin: int) -> np.ndarray:
    from modelloader.importers.coreml.neuralnetwork import weights

    return weights(wp, (cout, cin))


@nn_layer("upsample")
def upsample(layer: Any, ctx: NNContext) -> None:
    p = layer.upsample
    sh, sw = (list(p.fractionalScalingFactor) or list(p.scalingFactor) or [1, 1])[:2]
    x4, r = ctx.to_nchw(ctx.x(layer))
    scales = ctx.constant(np.asarray([1, 1, sh, sw], np.float32))
    if p.mode == 0:  # NN
        y = ctx.tmp(
            "Resize",
            [x4, "", scales],
            mode="nearest",
            nearest_mode="floor",
            coordinate_transformation_mode="asymmetric",
        )
    else:
        ctm = "half_pixel" if p.linearUpsampleMode == 2 else "align_corners"
        y = ctx.tmp("Resize", [x4, "", scales], mode="linear", coordinate_transformation_mode=ctm)
    ctx.from_nchw(y, r, ctx.y(layer))


@nn_layer("padding")
def padding(layer: Any, ctx: NNContext) -> None:
    p = layer.padding
    a = p.paddingAmounts.borderAmounts
    top, bottom = (a[0].startEdgeSize, a[0].endEdgeSize) if len(a) > 0 else (0, 0)
    left, right = (a[1].startEdgeSize, a[1].endEdgeSize) if len(a) > 1 else (0, 0)
    r = ctx.rank_of(ctx.x(layer))
    pads = [0] * (r - 2) + [top, left] + [0] * (r - 2) + [bottom, right]
    which = p.WhichOneof("PaddingType")
    ins = [ctx.x(layer), ctx.int64(pads)]
    if which == "constant":
        ins.append(ctx.constant(np.float32(p.constant.value)))
    mode = {"constant": "constant", "reflection": "reflect", "replication": "edge"}[which]
    ctx.node("Pad", ins, [ctx.y(layer)], mode=mode)


@nn_layer("l2normalize")
def l2normalize(layer: Any, ctx: NNContext) -> None:
    x = ctx.x(layer)
    ss = ctx.tmp("ReduceSumSquare", [x, ctx.int64([-3, -2, -1])], keepdims=1)
    eps = ctx.constant(np.float32(layer.l2normalize.epsilon or 1e-6))
    ctx.node("Div", [x, ctx.tmp("Sqrt", [ctx.tmp("Max", [ss, eps])])], [ctx.y(layer)])


@nn_layer("lrn")
def lrn(layer: Any, ctx: NNContext) -> None:
    p = layer.lrn
    x4, r = ctx.to_nchw(ctx.x(layer))
    y = ctx.tmp(
        "LRN",
        [x4],
        alpha=float(p.alpha),
        beta=float(p.beta),
        bias=float(p.k or 1.0),
        size=int(p.localSize),
    )
    ctx.from_nchw(y, r, ctx.y(layer))
