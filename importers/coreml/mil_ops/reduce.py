"""reduce_* and reduce_argmax/argmin MIL ops."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloader.importers.coreml.mlprogram import MILContext, mil_op
from modelloader.ir.builder import onnx_dtype

_REDUCE = {
    "reduce_mean": "ReduceMean",
    "reduce_sum": "ReduceSum",
    "reduce_max": "ReduceMax",
    "reduce_min": "ReduceMin",
    "reduce_prod": "ReduceProd",
    "reduce_l1_norm": "ReduceL1",
    "reduce_l2_norm": "ReduceL2",
    "reduce_log_sum": "ReduceLogSum",
    "reduce_log_sum_exp": "ReduceLogSumExp",
    "reduce_sum_square": "ReduceSumSquare",
}


@mil_op(*_REDUCE)
def reduce(op: Any, ctx: MILContext) -> None:
    """axes None reduces every axis; keep_dims defaults to False."""
    axes = ctx.const(op, "axes")
    ins = [ctx.arg(op, "x")]
    if axes is not None:
        ins.append(ctx.int64(axes))
    ctx.node(
        _REDUCE[op.type],
        ins,
        [ctx.out(op)],
        keepdims=int(bool(ctx.const(op, "keep_dims", False))),
    )


@mil_op("reduce_argmax", "reduce_argmin")
def reduce_arg(op: Any, ctx: MILContext) -> None:
    i64 = ctx.tmp(
        "ArgMax" if op.type == "reduce_argmax" else "ArgMin",
        [ctx.arg(op, "x")],
        axis=int(ctx.const(op, "axis", -1)),
        keepdims=int(bool(ctx.const(op, "keep_dims", False))),
    )
    ctx.node("Cast", [i64], [ctx.out(op)], to=onnx_dtype(np.int32))
