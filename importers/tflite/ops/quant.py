"""QUANTIZE / DEQUANTIZE rows."""

from __future__ import annotations

import numpy as np

from modelloader.importers.tflite.reader import TFLOperator
from modelloader.importers.tflite.table import TFL, TFLContext, qparams, tfl_op


@tfl_op("DEQUANTIZE", quantized=True)
def dequantize(op: TFLOperator, ctx: TFLContext) -> None:
    """int8/uint8/int16 -> float32 (affine); float16 -> float32 (a cast, folded at load)."""
    x, y = op.inputs[0], ctx.name(op.outputs[0])
    q = ctx.quant(x)
    if q is None:
        ctx.node("Cast", [ctx.name(x)], [y], to=1)
        return
    s, z, axis = qparams(ctx, q, ctx.dtype(x))
    ctx.node("DequantizeLinear", [ctx.name(x), s, z], [y], axis=axis)


@tfl_op("QUANTIZE", quantized=True)
def quantize(op: TFLOperator, ctx: TFLContext) -> None:
    """float -> int (round half away from zero, as TFLite); int -> int re-quantizes."""
    x, o = op.inputs[0], op.outputs[0]
    qo = ctx.quant(o)
    assert qo is not None
    dt = ctx.dtype(o)
    qi = ctx.quant(x)
    if qi is None:
        ctx.node(
            "TFLQuantize",
            [ctx.name(x)],
            [ctx.name(o)],
            TFL,
            scale=float(qo.scale[0]),
            zero_point=int(qo.zero_point[0]),
            dtype=str(np.dtype(dt)),
        )
        return
    ctx.node(
        "TFLRequantize",
        [ctx.name(x)],
        [ctx.name(o)],
        TFL,
        in_scale=float(qi.scale[0]),
        in_zero_point=int(qi.zero_point[0]),
        scale=float(qo.scale[0]),
        zero_point=int(qo.zero_point[0]),
        dtype=str(np.dtype(dt)),
    )
