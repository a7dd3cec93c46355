"""Element-wise, activation and comparison rows."""

from __future__ import annotations

import numpy as np

from modelloader.importers.tflite.reader import TFLOperator
from modelloader.importers.tflite.table import TFLContext, simple, tfl_op
from modelloader.ir.builder import onnx_dtype

simple("Add", "ADD")
simple("Sub", "SUB")
simple("Mul", "MUL")
simple("Pow", "POW")
simple("Max", "MAXIMUM")
simple("Min", "MINIMUM")
simple("Sum", "ADD_N")
simple("Abs", "ABS")
simple("Neg", "NEG")
simple("Exp", "EXP")
simple("Log", "LOG")
simple("Sqrt", "SQRT")
simple("Sin", "SIN")
simple("Cos", "COS")
simple("Floor", "FLOOR")
simple("Ceil", "CEIL")
simple("Round", "ROUND")
simple("Sign", "SIGN")
simple("Sigmoid", "LOGISTIC")
simple("Tanh", "TANH")
simple("Relu", "RELU")
simple("HardSwish", "HARD_SWISH")
simple("Elu", "ELU")
simple("PRelu", "PRELU")
simple("Less", "LESS")
simple("Greater", "GREATER")
simple("Equal", "EQUAL")
simple("LessOrEqual", "LESS_EQUAL")
simple("GreaterOrEqual", "GREATER_EQUAL")
simple("And", "LOGICAL_AND")
simple("Or", "LOGICAL_OR")
simple("Not", "LOGICAL_NOT")
simple("Where", "SELECT", "SELECT_V2")


@tfl_op("DIV")
def div(op: TFLOperator, ctx: TFLContext) -> None:
    # TFLite integer DIV truncates toward zero (C semantics), as ONNX Div does
    ctx.node("Div", [ctx.name(i) for i in op.inputs], [ctx.name(op.outputs[0])])


@tfl_op("FLOOR_DIV")
def floor_div(op: TFLOperator, ctx: TFLContext) -> None:
    a, b = (ctx.name(i) for i in op.inputs)
    y = ctx.name(op.outputs[0])
    if ctx.dtype(op.inputs[0]).kind == "f":
        ctx.node("Floor", [ctx.tmp("Div", [a, b])], [y])
    else:
        ctx.node("FloorDiv", [a, b], [y], "modelloader")


@tfl_op("FLOOR_MOD")
def floor_mod(op: TFLOperator, ctx: TFLContext) -> None:
    """Result takes the divisor's sign (Python ``%``), for ints and floats alike."""
    ctx.node("FloorMod", [ctx.name(i) for i in op.inputs], [ctx.name(op.outputs[0])], "modelloader")


@tfl_op("SQUARED_DIFFERENCE")
def squared_difference(op: TFLOperator, ctx: TFLContext) -> None:
    d = ctx.tmp("Sub", [ctx.name(op.inputs[0]), ctx.name(op.inputs[1])])
    ctx.node("Mul", [d, d], [ctx.name(op.outputs[0])])


@tfl_op("SQUARE")
def square(op: TFLOperator, ctx: TFLContext) -> None:
    x = ctx.name(op.inputs[0])
    ctx.node("Mul", [x, x], [ctx.name(op.outputs[0])])


@tfl_op("RSQRT")
def rsqrt(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node("Reciprocal", [ctx.tmp("Sqrt", [ctx.name(op.inputs[0])])], [ctx.name(op.outputs[0])])


@tfl_op("NOT_EQUAL")
def not_equal(op: TFLOperator, ctx: TFLContext) -> None:
    e = ctx.tmp("Equal", [ctx.name(op.inputs[0]), ctx.name(op.inputs[1])])
    ctx.node("Not", [e], [ctx.name(op.outputs[0])])


def _clip(lo: float, hi: float | None) -> object:
    def fn(op: TFLOperator, ctx: TFLContext) -> None:
        bounds = [ctx.constant(np.float32(lo))]
        if hi is not None:
            bounds.append(ctx.constant(np.float32(hi)))
        ctx.node("Clip", [ctx.name(op.inputs[0]), *bounds], [ctx.name(op.outputs[0])])

    return fn


tfl_op("RELU6")(_clip(0.0, 6.0))  # type: ignore[arg-type]
tfl_op("RELU_N1_TO_1")(_clip(-1.0, 1.0))  # type: ignore[arg-type]
tfl_op("RELU_0_TO_1")(_clip(0.0, 1.0))  # type: ignore[arg-type]


@tfl_op("LEAKY_RELU")
def leaky_relu(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node(
        "LeakyRelu",
        [ctx.name(op.inputs[0])],
        [ctx.name(op.outputs[0])],
        alpha=float(op.options.get("Alpha", 0.2)),
    )


@tfl_op("GELU")
def gelu(op: TFLOperator, ctx: TFLContext) -> None:
    approx = "tanh" if op.options.get("Approximate") else "none"
    ctx.node("Gelu", [ctx.name(op.inputs[0])], [ctx.name(op.outputs[0])], approximate=approx)


@tfl_op("SOFTMAX")
def softmax(op: TFLOperator, ctx: TFLContext) -> None:
    x = ctx.name(op.inputs[0])
    beta = float(op.options.get("Beta", 1.0))
    if beta != 1.0:
        x = ctx.tmp("Mul", [x, ctx.constant(np.float32(beta))])
    ctx.node("Softmax", [x], [ctx.name(op.outputs[0])], axis=-1)


@tfl_op("LOG_SOFTMAX")
def log_softmax(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node("LogSoftmax", [ctx.name(op.inputs[0])], [ctx.name(op.outputs[0])], axis=-1)


@tfl_op("CAST")
def cast(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node(
        "Cast",
        [ctx.name(op.inputs[0])],
        [ctx.name(op.outputs[0])],
        to=onnx_dtype(ctx.dtype(op.outputs[0])),
    )
