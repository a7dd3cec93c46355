"""Activations, unary and binary elementwise MIL ops."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloader.importers.coreml.mlprogram import MILContext, mil_op

_BINARY = {
    "add": "Add",
    "sub": "Sub",
    "mul": "Mul",
    "real_div": "Div",
    "pow": "Pow",
    "maximum": "Max",
    "minimum": "Min",
    "equal": "Equal",
    "less": "Less",
    "less_equal": "LessOrEqual",
    "greater": "Greater",
    "greater_equal": "GreaterOrEqual",
    "logical_and": "And",
    "logical_or": "Or",
    "logical_xor": "Xor",
}
_UNARY = {
    "relu": "Relu",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "exp": "Exp",
    "log": "Log",
    "sqrt": "Sqrt",
    "abs": "Abs",
    "erf": "Erf",
    "sin": "Sin",
    "cos": "Cos",
    "tan": "Tan",
    "asin": "Asin",
    "acos": "Acos",
    "atan": "Atan",
    "sinh": "Sinh",
    "cosh": "Cosh",
    "asinh": "Asinh",
    "acosh": "Acosh",
    "atanh": "Atanh",
    "ceil": "Ceil",
    "floor": "Floor",
    "round": "Round",
    "sign": "Sign",
    "logical_not": "Not",
    "softsign": "Softsign",
    "identity": "Identity",
    "softplus": "Softplus",
}


def _binary(op: Any, ctx: MILContext) -> None:
    ctx.node(_BINARY[op.type], [ctx.arg(op, "x"), ctx.arg(op, "y")], [ctx.out(op)])


def _unary(op: Any, ctx: MILContext) -> None:
    ctx.node(_UNARY[op.type], [ctx.arg(op, "x")], [ctx.out(op)])


mil_op(*_BINARY)(_binary)
mil_op(*_UNARY)(_unary)


def _scalar(ctx: MILContext, op: Any, value: float) -> str:
    dt = ctx.dtype_of(ctx.out(op)) or np.dtype(np.float32)
    return ctx.constant(np.asarray(value, dt))


@mil_op("not_equal")
def not_equal(op: Any, ctx: MILContext) -> None:
    eq = ctx.tmp("Equal", [ctx.arg(op, "x"), ctx.arg(op, "y")])
    ctx.node("Not", [eq], [ctx.out(op)])


@mil_op("floor_div")
def floor_div(op: Any, ctx: MILContext) -> None:
    q = ctx.tmp("Div", [ctx.arg(op, "x"), ctx.arg(op, "y")])
    dt = ctx.dtype_of(ctx.out(op))
    if dt is not None and dt.kind == "f":
        ctx.node("Floor", [q], [ctx.out(op)])
    else:  # integer Div truncates; MIL floors
        ctx.node("Identity", [q], [ctx.out(op)])


@mil_op("mod")
def mod(op: Any, ctx: MILContext) -> None:
    dt = ctx.dtype_of(ctx.out(op))
    ctx.node(
        "Mod",
        [ctx.arg(op, "x"), ctx.arg(op, "y")],
        [ctx.out(op)],
        fmod=int(dt is not None and dt.kind == "f"),
    )


@mil_op("square")
def square(op: Any, ctx: MILContext) -> None:
    x = ctx.arg(op, "x")
    ctx.node("Mul", [x, x], [ctx.out(op)])


@mil_op("inverse")
def inverse(op: Any, ctx: MILContext) -> None:
    eps = float(ctx.const(op, "epsilon", 1e-4))
    d = ctx.tmp("Add", [ctx.arg(op, "x"), _scalar(ctx, op, eps)])
    ctx.node("Reciprocal", [d], [ctx.out(op)])


@mil_op("rsqrt")
def rsqrt(op: Any, ctx: MILContext) -> None:
    eps = float(ctx.const(op, "epsilon", 1e-12))
    d = ctx.tmp("Add", [ctx.arg(op, "x"), _scalar(ctx, op, eps)])
    ctx.node("Reciprocal", [ctx.tmp("Sqrt", [d])], [ctx.out(op)])


@mil_op("exp2")
def exp2(op: Any, ctx: MILContext) -> None:
    ctx.node("Pow", [_scalar(ctx, op, 2.0), ctx.arg(op, "x")], [ctx.out(op)])


@mil_op("relu6")
def relu6(op: Any, ctx: MILContext) -> None:
    ctx.node(
        "Clip", [ctx.arg(op, "x"), _scalar(ctx, op, 0.0), _scalar(ctx, op, 6.0)], [ctx.out(op)]
    )


@mil_op("clip")
def clip(op: Any, ctx: MILContext) -> None:
    ctx.node("Clip", [ctx.arg(op, "x"), ctx.arg(op, "alpha"), ctx.arg(op, "beta")], [ctx.out(op)])


@mil_op("clamped_relu")
def clamped_relu(op: Any, ctx: MILContext) -> None:
    alpha, beta = float(ctx.need(op, "alpha")), float(ctx.need(op, "beta"))
    x = ctx.arg(op, "x")
    lr = ctx.tmp("LeakyRelu", [x], alpha=alpha)
    ctx.node("Min", [lr, _scalar(ctx, op, beta)], [ctx.out(op)])


@mil_op("gelu")
def gelu(op: Any, ctx: MILContext) -> None:
    mode = str(ctx.const(op, "mode", "EXACT"))
    x = ctx.arg(op, "x")
    if mode == "EXACT":
        ctx.node("Gelu", [x], [ctx.out(op)])
    elif mode == "TANH_APPROXIMATION":
        ctx.node("Gelu", [x], [ctx.out(op)], approximate="tanh")
    else:  # SIGMOID_APPROXIMATION: x * sigmoid(1.702 x)
        s = ctx.tmp("Sigmoid", [ctx.tmp("Mul", [x, _scalar(ctx, op, 1.702)])])
        ctx.node("Mul", [x, s], [ctx.out(op)])


@mil_op("silu")
def silu(op: Any, ctx: MILContext) -> None:
    x = ctx.arg(op, "x")
    ctx.node("Mul", [x, ctx.tmp("Sigmoid", [x])], [ctx.out(op)])


@mil_op("leaky_relu")
def leaky_relu(op: Any, ctx: MILContext) -> None:
    ctx.node(
        "LeakyRelu", [ctx.arg(op, "x")], [ctx.out(op)], alpha=float(ctx.const(op, "alpha", 0.01))
    )


@mil_op("elu")
def elu(op: Any, ctx: MILContext) -> None:
    ctx.node("Elu", [ctx.arg(op, "x")], [ctx.out(op)], alpha=float(ctx.const(op, "alpha", 1.0)))


@mil_op("prelu")
def prelu(op: Any, ctx: MILContext) -> None:
    """alpha is per channel (axis 1 of a rank >= 3 input)."""
    alpha = np.asarray(ctx.need(op, "alpha"), np.float32)
    rank = ctx.in_rank(op)
    slope = ctx.constant(alpha.reshape((-1,) + (1,) * (rank - 2)))
    ctx.node("PRelu", [ctx.arg(op, "x"), slope], [ctx.out(op)])


@mil_op("sigmoid_hard")
def sigmoid_hard(op: Any, ctx: MILContext) -> None:
    ctx.node(
        "HardSigmoid",
        [ctx.arg(op, "x")],
        [ctx.out(op)],
        alpha=float(ctx.const(op, "alpha", 0.2)),
        beta=float(ctx.const(op, "beta", 0.5)),
    )


@mil_op("scaled_tanh")
def scaled_tanh(op: Any, ctx: MILContext) -> None:
    a, b = float(ctx.const(op, "alpha", 1.0)), float(ctx.const(op, "beta", 1.0))
    t = ctx.tmp("Tanh", [ctx.tmp("Mul", [ctx.arg(op, "x"), _scalar(ctx, op, b)])])
    ctx.node("Mul", [t, _scalar(ctx, op, a)], [ctx.out(op)])


@mil_op("linear_activation")
def linear_activation(op: Any, ctx: MILContext) -> None:
    a, b = float(ctx.const(op, "alpha", 1.0)), float(ctx.const(op, "beta", 0.0))
    t = ctx.tmp("Mul", [ctx.arg(op, "x"), _scalar(ctx, op, a)])
    ctx.node("Add", [t, _scalar(ctx, op, b)], [ctx.out(op)])


@mil_op("thresholded_relu")
def thresholded_relu(op: Any, ctx: MILContext) -> None:
    ctx.node(
        "ThresholdedRelu",
        [ctx.arg(op, "x")],
        [ctx.out(op)],
        alpha=float(ctx.const(op, "alpha", 1.0)),
    )


@mil_op("softmax")
def softmax(op: Any, ctx: MILContext) -> None:
    ctx.node("Softmax", [ctx.arg(op, "x")], [ctx.out(op)], axis=int(ctx.const(op, "axis", -1)))


@mil_op("log_softmax")
def log_softmax(op: Any, ctx: MILContext) -> None:
    ctx.node("LogSoftmax", [ctx.arg(op, "x")], [ctx.out(op)], axis=int(ctx.const(op, "axis", -1)))


@mil_op("select")
def select(op: Any, ctx: MILContext) -> None:
    cond = ctx.arg(op, "cond")
    if ctx.dtype_of(cond) is not None and ctx.dtype_of(cond) != np.bool_:
        cond = ctx.cast(cond, np.bool_)
    ctx.node("Where", [cond, ctx.arg(op, "a"), ctx.arg(op, "b")], [ctx.out(op)])
