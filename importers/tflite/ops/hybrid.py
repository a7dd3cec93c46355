"""Hybrid (dynamic-range quantized) rows: float activations with constant int8 weights.

``qops`` hands CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED here when the input and
output are float32 and the filter is a constant int8 tensor with quantization; the ops
run as the ``modelloader``-domain kernels of kernels/cpu/tflite_hybrid.py, which
quantize the activations on the fly as TFLite's hybrid kernels do. Tensors keep
TFLite's layouts (NHWC input, OHWI / 1HWC / [units, K] filters), so no transposes.
"""

from __future__ import annotations

import numpy as np

from modelloader.importers.tflite.ops.nn import _dilations, _pads, _strides
from modelloader.importers.tflite.reader import TFLOperator
from modelloader.importers.tflite.table import TFLContext

ML = "modelloader"


def is_hybrid(op: TFLOperator, ctx: TFLContext) -> bool:
    """Float input/output with a constant int8 quantized filter (TFLite's ``is_hybrid``)."""
    if len(op.inputs) < 2 or not op.outputs:
        return False
    x, w, y = op.inputs[0], op.inputs[1], op.outputs[0]
    if x < 0 or w < 0 or ctx.dtype(x) != np.float32 or ctx.dtype(y) != np.float32:
        return False
    q = ctx.quant(w)
    c = ctx.const(w)
    if q is None or c is None or c.dtype != np.int8:
        return False
    return not np.any(q.zero_point != 0)


def _w_scale(ctx: TFLContext, i: int) -> str:
    q = ctx.quant(i)
    assert q is not None
    return ctx.constant(np.asarray(q.scale, np.float32).reshape(-1), "ws")


def _bias(ctx: TFLContext, op: TFLOperator, k: int) -> list[str]:
    if len(op.inputs) > k and op.inputs[k] >= 0:
        return [ctx.float_const(op.inputs[k])]
    return []


def conv(op: TFLOperator, ctx: TFLContext) -> bool:
    """CONV_2D / DEPTHWISE_CONV_2D: per-channel filters (scales not all equal) take the
    asymmetric per-channel path, others the symmetric per-tensor one (conv.cc Prepare)."""
    x, w = op.inputs[0], op.inputs[1]
    _, kh, kw, _ = ctx.shape(w)
    s, d = _strides(op), _dilations(op)
    attrs: dict[str, object] = {
        "strides": list(s),
        "dilations": list(d),
        "pads": _pads(ctx, op, (kh, kw), s, d),
    }
    ins = [ctx.name(x), ctx.name(w), _w_scale(ctx, w), *_bias(ctx, op, 2)]
    out = [ctx.name(op.outputs[0])]
    if op.name == "DEPTHWISE_CONV_2D":
        multiplier = ctx.shape(w)[3] // ctx.shape(x)[3]
        ctx.node("TFLiteHybridDepthwiseConv", ins, out, ML, depth_multiplier=multiplier, **attrs)
        return True
    q = ctx.quant(w)
    assert q is not None
    per_channel = q.scale.size > 1 and bool(np.any(q.scale != q.scale.reshape(-1)[0]))
    ctx.node("TFLiteHybridConv", ins, out, ML, per_channel=int(per_channel), **attrs)
    return True


def fully_connected(op: TFLOperator, ctx: TFLContext) -> bool:
    """FULLY_CONNECTED: rows quantized symmetric or asymmetric (asymmetric_quantize_inputs)."""
    if ctx.rank(op.inputs[1]) != 2:
        return False
    ctx.node(
        "TFLiteHybridFullyConnected",
        [ctx.name(op.inputs[0]), ctx.name(op.inputs[1]), _w_scale(ctx, op.inputs[1])]
        + _bias(ctx, op, 2),
        [ctx.name(op.outputs[0])],
        ML,
        asymmetric=int(bool(op.options.get("AsymmetricQuantizeInputs"))),
        keep_num_dims=int(bool(op.options.get("KeepNumDims"))),
    )
    return True
