"""Convolution, pooling, matmul, resize, normalization and reduction rows (float path).

NHWC tensors are transposed to NCHW around ONNX's Conv/ConvTranspose/pools; weight
transposes are constants and fold at load.
"""

from __future__ import annotations

from modelloader.importers.tflite.reader import TFLOperator
from modelloader.importers.tflite.table import TFL, TFLContext, nchw_to_nhwc, nhwc_to_nchw, tfl_op

SAME, VALID = 0, 1


def _pads(
    ctx: TFLContext, op: TFLOperator, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int]
) -> list[int]:
    """Explicit ONNX pads for TFLite SAME/VALID (SAME puts the odd pixel at the end)."""
    if op.options.get("Padding", SAME) == VALID:
        return [0, 0, 0, 0]
    h, w = ctx.shape(op.inputs[0])[1:3]
    out = []
    for size, kk, ss, dd in zip((h, w), k, s, d):
        eff = (kk - 1) * dd + 1
        o = (size + ss - 1) // ss
        out.append(max((o - 1) * ss + eff - size, 0))
    return [out[0] // 2, out[1] // 2, out[0] - out[0] // 2, out[1] - out[1] // 2]


def _strides(op: TFLOperator) -> tuple[int, int]:
    return int(op.options.get("StrideH", 1)), int(op.options.get("StrideW", 1))


def _dilations(op: TFLOperator) -> tuple[int, int]:
    return int(op.options.get("DilationHFactor", 1)), int(op.options.get("DilationWFactor", 1))


def _conv_weights(ctx: TFLContext, i: int, perm: list[int]) -> str:
    w = ctx.float_const(i)
    return ctx.tmp("Transpose", [w], perm=perm)


def _conv(op: TFLOperator, ctx: TFLContext, perm: list[int], group: int) -> None:
    """NHWC float conv as Transpose -> ONNX Conv (filter permuted to OIHW) -> Transpose."""
    kh, kw = ctx.shape(op.inputs[1])[1:3]
    s, d = _strides(op), _dilations(op)
    ins = [nhwc_to_nchw(ctx, ctx.name(op.inputs[0])), _conv_weights(ctx, op.inputs[1], perm)]
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        ins.append(ctx.float_const(op.inputs[2]))
    y = ctx.tmp(
        "Conv",
        ins,
        kernel_shape=[kh, kw],
        strides=list(s),
        dilations=list(d),
        pads=_pads(ctx, op, (kh, kw), s, d),
        group=group,
    )
    nchw_to_nhwc(ctx, y, ctx.name(op.outputs[0]))


@tfl_op("CONV_2D")
def conv2d(op: TFLOperator, ctx: TFLContext) -> None:
    """input NHWC, filter OHWI, bias O; grouped when input channels exceed the filter's."""
    ci = ctx.shape(op.inputs[1])[3]
    cin = ctx.shape(op.inputs[0])[3]
    _conv(op, ctx, [0, 3, 1, 2], max(cin // ci, 1) if cin > 0 else 1)


@tfl_op("DEPTHWISE_CONV_2D")
def depthwise(op: TFLOperator, ctx: TFLContext) -> None:
    """filter [1, H, W, Cin*multiplier]; output channel c*m + j reads input channel c."""
    _conv(op, ctx, [3, 0, 1, 2], ctx.shape(op.inputs[0])[3])


@tfl_op("TRANSPOSE_CONV")
def transpose_conv(op: TFLOperator, ctx: TFLContext) -> None:
    """inputs (output_shape, filter OHWI, input NHWC[, bias])."""
    out_shape = ctx.ints(op.inputs[0])
    o, kh, kw, ci = ctx.shape(op.inputs[1])
    _, h, w_, _ = ctx.shape(op.inputs[2])
    s = _strides(op)
    if out_shape is None:
        out_shape = list(ctx.shape(op.outputs[0]))
    pads, extra = [0, 0, 0, 0], [0, 0]
    for ax, (size, k, st, out) in enumerate(zip((h, w_), (kh, kw), s, out_shape[1:3])):
        full = (size - 1) * st + k
        total = full - out
        if op.options.get("Padding", SAME) == SAME or total > 0:
            before = max(total, 0) // 2 if op.options.get("Padding", SAME) == SAME else 0
            pads[ax], pads[ax + 2] = before, max(total, 0) - before
        if total < 0:
            extra[ax] = -total
    w = _conv_weights(ctx, op.inputs[1], [3, 0, 1, 2])
    ins = [nhwc_to_nchw(ctx, ctx.name(op.inputs[2])), w]
    if len(op.inputs) > 3 and op.inputs[3] >= 0:
        ins.append(ctx.float_const(op.inputs[3]))
    y = ctx.tmp(
        "ConvTranspose",
        ins,
        kernel_shape=[kh, kw],
        strides=list(s),
        pads=pads,
        output_padding=extra,
    )
    nchw_to_nhwc(ctx, y, ctx.name(op.outputs[0]))


def _pool(kind: str) -> object:
    def fn(op: TFLOperator, ctx: TFLContext) -> None:
        k = (int(op.options["FilterHeight"]), int(op.options["FilterWidth"]))
        s = _strides(op)
        attrs: dict[str, object] = {
            "kernel_shape": list(k),
            "strides": list(s),
            "pads": _pads(ctx, op, k, s, (1, 1)),
        }
        if kind == "AveragePool":
            attrs["count_include_pad"] = 0
        x = nhwc_to_nchw(ctx, ctx.name(op.inputs[0]))
        nchw_to_nhwc(ctx, ctx.tmp(kind, [x], **attrs), ctx.name(op.outputs[0]))

    return fn


tfl_op("AVERAGE_POOL_2D")(_pool("AveragePool"))  # type: ignore[arg-type]
tfl_op("MAX_POOL_2D", raw_int=True)(_pool("MaxPool"))  # type: ignore[arg-type]


@tfl_op("FULLY_CONNECTED")
def fully_connected(op: TFLOperator, ctx: TFLContext) -> None:
    """y = x.reshape(-1, K) @ W.T + b; keep_num_dims keeps x's leading dims."""
    n, k = ctx.shape(op.inputs[1])
    x = ctx.name(op.inputs[0])
    w = ctx.float_const(op.inputs[1])
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    y = ctx.name(op.outputs[0])
    if op.options.get("KeepNumDims"):
        wt = ctx.tmp("Transpose", [w], perm=[1, 0])
        if has_bias:
            m = ctx.tmp("MatMul", [x, wt])
            ctx.node("Add", [m, ctx.float_const(op.inputs[2])], [y])
        else:
            ctx.node("MatMul", [x, wt], [y])
        return
    x2 = ctx.tmp("Reshape", [x, ctx.int64([-1, k])])
    ins = [x2, w] + ([ctx.float_const(op.inputs[2])] if has_bias else [])
    ctx.node("Gemm", ins, [y], transB=1)


@tfl_op("BATCH_MATMUL")
def batch_matmul(op: TFLOperator, ctx: TFLContext) -> None:
    a, b = ctx.float_const(op.inputs[0]), ctx.float_const(op.inputs[1])
    for flag, idx in (("AdjX", 0), ("AdjY", 1)):
        if op.options.get(flag):
            r = ctx.rank(op.inputs[idx])
            perm = list(range(r - 2)) + [r - 1, r - 2]
            if idx == 0:
                a = ctx.tmp("Transpose", [a], perm=perm)
            else:
                b = ctx.tmp("Transpose", [b], perm=perm)
    ctx.node("MatMul", [a, b], [ctx.name(op.outputs[0])])


def _resize(mode: str) -> object:
    def fn(op: TFLOperator, ctx: TFLContext) -> None:
        align = bool(op.options.get("AlignCorners"))
        half = bool(op.options.get("HalfPixelCenters"))
        if align:
            ctm = "align_corners"
        elif half:
            ctm = "half_pixel"  # nearest: floor((o + .5) * s) == round_prefer_ceil(.. - .5)
        else:
            ctm = "asymmetric"
        attrs: dict[str, object] = {
            "mode": mode,
            "coordinate_transformation_mode": ctm,
            "axes": [1, 2],
        }
        if mode == "nearest":
            attrs["nearest_mode"] = "round_prefer_ceil" if align or half else "floor"
        ctx.node(
            "Resize",
            [ctx.name(op.inputs[0]), "", "", ctx.as_int64(op.inputs[1])],
            [ctx.name(op.outputs[0])],
            **attrs,
        )

    return fn


tfl_op("RESIZE_BILINEAR")(_resize("linear"))  # type: ignore[arg-type]
tfl_op("RESIZE_NEAREST_NEIGHBOR", raw_int=True)(_resize("nearest"))  # type: ignore[arg-type]


@tfl_op("L2_NORMALIZATION")
def l2_normalization(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node("L2Normalization", [ctx.name(op.inputs[0])], [ctx.name(op.outputs[0])], TFL)


@tfl_op("LOCAL_RESPONSE_NORMALIZATION")
def lrn(op: TFLOperator, ctx: TFLContext) -> None:
    o = op.options
    ctx.node(
        "LocalResponseNormalization",
        [ctx.name(op.inputs[0])],
        [ctx.name(op.outputs[0])],
        TFL,
        radius=int(o.get("Radius", 5)),
        bias=float(o.get("Bias", 1.0)),
        alpha=float(o.get("Alpha", 1.0)),
        beta=float(o.get("Beta", 0.5)),
    )


_REDUCE = {
    "MEAN": "ReduceMean",
    "SUM": "ReduceSum",
    "REDUCE_MAX": "ReduceMax",
    "REDUCE_MIN": "ReduceMin",
    "REDUCE_PROD": "ReduceProd",
    "REDUCE_ANY": "ReduceMax",
    "REDUCE_ALL": "ReduceMin",
}


@tfl_op(*_REDUCE)
def reduce(op: TFLOperator, ctx: TFLContext) -> None:
    x = ctx.name(op.inputs[0])
    keep = int(bool(op.options.get("KeepDims", False)))
    axes = ctx.as_int64(op.inputs[1])
    y = ctx.name(op.outputs[0])
    if op.name in ("REDUCE_ANY", "REDUCE_ALL"):
        xi = ctx.tmp("Cast", [x], to=6)  # INT32
        r = ctx.tmp(_REDUCE[op.name], [xi, axes], keepdims=keep)
        ctx.node("Cast", [r], [y], to=9)  # BOOL
        return
    ctx.node(_REDUCE[op.name], [x, axes], [y], keepdims=keep)


@tfl_op("ARG_MAX", "ARG_MIN", raw_int=True)
def arg_max(op: TFLOperator, ctx: TFLContext) -> None:
    (axis,) = ctx.ints(op.inputs[1]) or [0]
    kind = "ArgMax" if op.name == "ARG_MAX" else "ArgMin"
    r = ctx.tmp(kind, [ctx.name(op.inputs[0])], axis=axis, keepdims=0)
    from modelloader.ir.builder import onnx_dtype

    ctx.node("Cast", [r], [ctx.name(op.outputs[0])], to=onnx_dtype(ctx.dtype(op.outputs[0])))


@tfl_op("TOPK_V2")
def topk(op: TFLOperator, ctx: TFLContext) -> None:
    k = ctx.as_int64(op.inputs[1])
    idx = ctx.fresh("topk_i")
    ctx.node(
        "TopK",
        [ctx.name(op.inputs[0]), ctx.tmp("Reshape", [k, ctx.int64([1])])],
        [ctx.name(op.outputs[0]), idx],
        axis=-1,
    )
    ctx.node("Cast", [idx], [ctx.name(op.outputs[1])], to=6)


@tfl_op("CUMSUM")
def cumsum(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node(
        "CumSum",
        [ctx.name(op.inputs[0]), ctx.name(op.inputs[1])],
        [ctx.name(op.outputs[0])],
        exclusive=int(bool(op.options.get("Exclusive"))),
        reverse=int(bool(op.options.get("Reverse"))),
    )
