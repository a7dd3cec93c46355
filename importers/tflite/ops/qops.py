"""Full-integer rows: TFLite int8/uint8/int16 ops run with integer arithmetic.

Each builder returns False to decline, which sends the op through the table's
dequantize/float/quantize fallback. Hybrid ops (float activations, constant int8
filters) go to ``ops/hybrid.py``.
Fused activations are applied by ``convert_op`` as an integer clamp afterwards.
"""

from __future__ import annotations

import numpy as np

from modelloader.importers.tflite.ops import hybrid
from modelloader.importers.tflite.ops.nn import _dilations, _pads, _strides
from modelloader.importers.tflite.reader import Quant, TFLOperator
from modelloader.importers.tflite.table import TFLContext, nchw_to_nhwc, nhwc_to_nchw, tfl_qop

MS, ML = "com.microsoft", "modelloader"


def _w(q: Quant) -> dict[str, object]:
    if q.per_axis:
        return {"w_scale": [float(s) for s in q.scale], "w_zp": [int(z) for z in q.zero_point]}
    return {"w_scale": float(q.scale[0]), "w_zp": int(q.zero_point[0])}


def _xy(ctx: TFLContext, op: TFLOperator) -> tuple[Quant, Quant] | None:
    qx, qy = ctx.quant(op.inputs[0]), ctx.quant(op.outputs[0])
    if qx is None or qy is None or qx.per_axis or qy.per_axis:
        return None
    return qx, qy


def _bias(ctx: TFLContext, op: TFLOperator, k: int = 2) -> list[str]:
    return [ctx.name(op.inputs[k])] if len(op.inputs) > k and op.inputs[k] >= 0 else []


def _sz(ctx: TFLContext, q: Quant, dt: np.dtype) -> list[str]:
    return [
        ctx.constant(np.float32(q.scale[0]), "s"),
        ctx.constant(np.asarray(q.zero_point[0], dt), "zp"),
    ]


@tfl_qop("CONV_2D", "DEPTHWISE_CONV_2D")
def conv(op: TFLOperator, ctx: TFLContext) -> bool:
    if hybrid.is_hybrid(op, ctx):
        return hybrid.conv(op, ctx)
    xy, qw = _xy(ctx, op), ctx.quant(op.inputs[1])
    if xy is None or qw is None or ctx.const(op.inputs[1]) is None:
        return False
    qx, qy = xy
    dw = op.name == "DEPTHWISE_CONV_2D"
    _, kh, kw, _ = ctx.shape(op.inputs[1])
    cin = ctx.shape(op.inputs[0])[3]
    ci = ctx.shape(op.inputs[1])[3]
    s, d = _strides(op), _dilations(op)
    w = ctx.tmp("Transpose", [ctx.name(op.inputs[1])], perm=[3, 0, 1, 2] if dw else [0, 3, 1, 2])
    wq = Quant(qw.scale, qw.zero_point, 0)
    y = ctx.tmp(
        "TFLiteConv",
        [nhwc_to_nchw(ctx, ctx.name(op.inputs[0])), w, *_bias(ctx, op)],
        ML,
        x_scale=float(qx.scale[0]),
        x_zp=int(qx.zero_point[0]),
        y_scale=float(qy.scale[0]),
        y_zp=int(qy.zero_point[0]),
        **_w(wq),
        strides=list(s),
        dilations=list(d),
        pads=_pads4(ctx, op, (kh, kw), s, d),
        group=cin if dw else max(cin // ci, 1),
    )
    nchw_to_nhwc(ctx, y, ctx.name(op.outputs[0]))
    return True


def _pads4(
    ctx: TFLContext, op: TFLOperator, k: tuple[int, int], s: tuple[int, int], d: tuple[int, int]
) -> list[int]:
    t, l_, b, r = _pads(ctx, op, k, s, d)
    return [t, l_, b, r]


@tfl_qop("FULLY_CONNECTED")
def fully_connected(op: TFLOperator, ctx: TFLContext) -> bool:
    if hybrid.is_hybrid(op, ctx):
        return hybrid.fully_connected(op, ctx)
    xy, qw = _xy(ctx, op), ctx.quant(op.inputs[1])
    if xy is None or qw is None:
        return False
    qx, qy = xy
    ctx.node(
        "TFLiteFullyConnected",
        [ctx.name(op.inputs[0]), ctx.name(op.inputs[1]), *_bias(ctx, op)],
        [ctx.name(op.outputs[0])],
        ML,
        x_scale=float(qx.scale[0]),
        x_zp=int(qx.zero_point[0]),
        y_scale=float(qy.scale[0]),
        y_zp=int(qy.zero_point[0]),
        **_w(Quant(qw.scale, qw.zero_point, 0)),
        keep_num_dims=int(bool(op.options.get("KeepNumDims"))),
    )
    return True


@tfl_qop("ADD", "SUB", "MUL")
def binary(op: TFLOperator, ctx: TFLContext) -> bool:
    qa, qb, qy = (ctx.quant(i) for i in (*op.inputs[:2], op.outputs[0]))
    if qa is None or qb is None or qy is None or any(q.per_axis for q in (qa, qb, qy)):
        return False
    if ctx.dtype(op.inputs[0]) == np.int16 and op.name == "SUB":
        return False
    kind = {"ADD": "TFLiteAdd", "SUB": "TFLiteSub", "MUL": "TFLiteMul"}[op.name]
    ctx.node(
        kind,
        [ctx.name(op.inputs[0]), ctx.name(op.inputs[1])],
        [ctx.name(op.outputs[0])],
        ML,
        a_scale=float(qa.scale[0]),
        a_zp=int(qa.zero_point[0]),
        b_scale=float(qb.scale[0]),
        b_zp=int(qb.zero_point[0]),
        y_scale=float(qy.scale[0]),
        y_zp=int(qy.zero_point[0]),
    )
    return True


@tfl_qop("AVERAGE_POOL_2D")
def average_pool(op: TFLOperator, ctx: TFLContext) -> bool:
    xy = _xy(ctx, op)
    if xy is None or ctx.dtype(op.inputs[0]) == np.int16:
        return False
    qx, qy = xy
    dt = ctx.dtype(op.inputs[0])
    k = (int(op.options["FilterHeight"]), int(op.options["FilterWidth"]))
    s = _strides(op)
    ctx.node(
        "QLinearAveragePool",
        [ctx.name(op.inputs[0]), *_sz(ctx, qx, dt), *_sz(ctx, qy, dt)],
        [ctx.name(op.outputs[0])],
        MS,
        kernel_shape=list(k),
        strides=list(s),
        pads=_pads(ctx, op, k, s, (1, 1)),
        channels_last=1,
    )
    return True


@tfl_qop("MEAN")
def mean(op: TFLOperator, ctx: TFLContext) -> bool:
    xy, axes = _xy(ctx, op), ctx.ints(op.inputs[1])
    if xy is None or axes is None or ctx.dtype(op.inputs[0]) == np.int16:
        return False
    qx, qy = xy
    dt = ctx.dtype(op.inputs[0])
    ctx.node(
        "QLinearReduceMean",
        [ctx.name(op.inputs[0]), *_sz(ctx, qx, dt), *_sz(ctx, qy, dt)],
        [ctx.name(op.outputs[0])],
        MS,
        axes=axes,
        keepdims=int(bool(op.options.get("KeepDims"))),
    )
    return True


@tfl_qop("SOFTMAX", "LOGISTIC")
def lut_ops(op: TFLOperator, ctx: TFLContext) -> bool:
    xy = _xy(ctx, op)
    if (
        xy is None
        or ctx.dtype(op.inputs[0]) == np.int16
        or float(op.options.get("Beta", 1.0)) != 1.0
    ):
        return False
    qx, qy = xy
    dt = ctx.dtype(op.inputs[0])
    ins = [ctx.name(op.inputs[0]), *_sz(ctx, qx, dt), *_sz(ctx, qy, dt)]
    if op.name == "SOFTMAX":
        ctx.node("QLinearSoftmax", ins, [ctx.name(op.outputs[0])], MS, opset=13, axis=-1)
    else:
        ctx.node("QLinearSigmoid", ins, [ctx.name(op.outputs[0])], MS)
    return True


@tfl_qop("CONCATENATION")
def concat(op: TFLOperator, ctx: TFLContext) -> bool:
    qy = ctx.quant(op.outputs[0])
    qs = [ctx.quant(i) for i in op.inputs]
    if (
        qy is None
        or any(q is None or q.per_axis for q in qs)
        or ctx.dtype(op.outputs[0]) == np.int16
    ):
        return False
    dt = ctx.dtype(op.outputs[0])
    ins = _sz(ctx, qy, dt)
    for i, q in zip(op.inputs, qs):
        assert q is not None
        ins += [ctx.name(i), *_sz(ctx, q, dt)]
    ctx.node(
        "QLinearConcat", ins, [ctx.name(op.outputs[0])], MS, axis=int(op.options.get("Axis", 0))
    )
    return True
