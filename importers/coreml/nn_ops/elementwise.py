"""activation (every params type), unary, softmax and elementwise (legacy + broadcastable) layers."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloader.errors import ModelFormatError
from modelloader.importers.coreml.neuralnetwork import NNContext, nn_layer, weights


def _f(ctx: NNContext, v: float) -> str:
    return ctx.constant(np.float32(v))


def _channel(ctx: NNContext, x: str, wp: Any) -> str:
    """Per-channel parameters shaped to broadcast on axis -3 (C of ...CHW)."""
    w = weights(wp)
    return ctx.constant(w.reshape(-1, 1, 1) if w.size > 1 else w.reshape(()))


@nn_layer("activation")
def activation(layer: Any, ctx: NNContext) -> None:
    a = layer.activation
    kind = a.WhichOneof("NonlinearityType")
    x, y = ctx.x(layer), ctx.y(layer)
    p = getattr(a, kind)
    if kind == "ReLU":
        ctx.node("Relu", [x], [y])
    elif kind == "leakyReLU":
        ctx.node("LeakyRelu", [x], [y], alpha=float(p.alpha))
    elif kind == "thresholdedReLU":
        ctx.node("ThresholdedRelu", [x], [y], alpha=float(p.alpha))
    elif kind == "PReLU":
        ctx.node("PRelu", [x, _channel(ctx, x, p.alpha)], [y])
    elif kind == "tanh":
        ctx.node("Tanh", [x], [y])
    elif kind == "scaledTanh":
        t = ctx.tmp("Tanh", [ctx.tmp("Mul", [x, _f(ctx, p.beta)])])
        ctx.node("Mul", [t, _f(ctx, p.alpha)], [y])
    elif kind == "sigmoid":
        ctx.node("Sigmoid", [x], [y])
    elif kind == "sigmoidHard":
        ctx.node("HardSigmoid", [x], [y], alpha=float(p.alpha), beta=float(p.beta))
    elif kind == "ELU":
        ctx.node("Elu", [x], [y], alpha=float(p.alpha))
    elif kind == "softsign":
        ctx.node("Softsign", [x], [y])
    elif kind == "softplus":
        ctx.node("Softplus", [x], [y])
    elif kind == "parametricSoftplus":
        bx = ctx.tmp("Mul", [x, _channel(ctx, x, p.beta)])
        ctx.node("Mul", [ctx.tmp("Softplus", [bx]), _channel(ctx, x, p.alpha)], [y])
    elif kind == "linear":
        ctx.node("Add", [ctx.tmp("Mul", [x, _f(ctx, p.alpha)]), _f(ctx, p.beta)], [y])
    else:
        raise ModelFormatError(f"unknown activation {kind}")


@nn_layer("softmax")
def softmax(layer: Any, ctx: NNContext) -> None:
    ctx.node("Softmax", [ctx.x(layer)], [ctx.y(layer)], axis=-3)


@nn_layer("softmaxND")
def softmax_nd(layer: Any, ctx: NNContext) -> None:
    ctx.node("Softmax", [ctx.x(layer)], [ctx.y(layer)], axis=int(layer.softmaxND.axis))


@nn_layer("unary")
def unary(layer: Any, ctx: NNContext) -> None:
    """f(scale * x + shift) for SQRT/RSQRT/INVERSE/POWER/EXP/LOG/ABS/THRESHOLD."""
    p = layer.unary
    x = ctx.x(layer)
    scale = p.scale if p.scale != 0 else 1.0
    if scale != 1.0:
        x = ctx.tmp("Mul", [x, _f(ctx, scale)])
    if p.shift:
        x = ctx.tmp("Add", [x, _f(ctx, p.shift)])
    y = ctx.y(layer)
    t = p.type
    eps = p.epsilon or 1e-6
    if t == 0:
        ctx.node("Sqrt", [x], [y])
    elif t == 1:
        ctx.node("Reciprocal", [ctx.tmp("Sqrt", [ctx.tmp("Add", [x, _f(ctx, eps)])])], [y])
    elif t == 2:
        ctx.node("Reciprocal", [ctx.tmp("Add", [x, _f(ctx, eps)])], [y])
    elif t == 3:
        ctx.node("Pow", [x, _f(ctx, p.alpha)], [y])
    elif t == 4:
        ctx.node("Exp", [x], [y])
    elif t == 5:
        ctx.node("Log", [ctx.tmp("Add", [x, _f(ctx, eps)])], [y])
    elif t == 6:
        ctx.node("Abs", [x], [y])
    else:  # THRESHOLD: max(x, alpha)
        ctx.node("Max", [x, _f(ctx, p.alpha)], [y])


def _nary(layer: Any, ctx: NNContext, op: str, alpha: float | None) -> None:
    ins = ctx.ins(layer)
    if len(ins) == 1:
        ins = ins + [_f(ctx, alpha if alpha is not None else 0.0)]
    ctx.node(op, ins, [ctx.y(layer)])


@nn_layer("add")
def add(layer: Any, ctx: NNContext) -> None:
    _nary(layer, ctx, "Sum" if len(layer.input) > 2 else "Add", layer.add.alpha)


@nn_layer("multiply")
def multiply(layer: Any, ctx: NNContext) -> None:
    ins = ctx.ins(layer)
    if len(ins) == 1:
        ctx.node("Mul", [ins[0], _f(ctx, layer.multiply.alpha)], [ctx.y(layer)])
        return
    acc = ins[0]
    for i, nxt in enumerate(ins[1:]):
        out = ctx.y(layer) if i == len(ins) - 2 else ctx.fresh("mul")
        ctx.node("Mul", [acc, nxt], [out])
        acc = out


@nn_layer("average")
def average(layer: Any, ctx: NNContext) -> None:
    ctx.node("Mean", ctx.ins(layer), [ctx.y(layer)])


@nn_layer("max")
def max_(layer: Any, ctx: NNContext) -> None:
    ctx.node("Max", ctx.ins(layer), [ctx.y(layer)])


@nn_layer("min")
def min_(layer: Any, ctx: NNContext) -> None:
    ctx.node("Min", ctx.ins(layer), [ctx.y(layer)])


_BCAST = {
    "addBroadcastable": "Add",
    "subtractBroadcastable": "Sub",
    "multiplyBroadcastable": "Mul",
    "divideBroadcastable": "Div",
    "maxBroadcastable": "Max",
    "minBroadcastable": "Min",
    "powBroadcastable": "Pow",
    "logicalAnd": "And",
    "logicalOr": "Or",
    "logicalXor": "Xor",
}


@nn_layer(*_BCAST)
def broadcastable(layer: Any, ctx: NNContext) -> None:
    kind = layer.WhichOneof("layer")
    ins = ctx.ins(layer)
    if kind.startswith("logical"):
        ins = [ctx.cast(i, np.bool_) for i in ins]
        y = ctx.tmp(_BCAST[kind], ins)
        ctx.node("Cast", [y], [ctx.y(layer)], to=1)
        return
    ctx.node(_BCAST[kind], ins, [ctx.y(layer)])
    ctx.rank[ctx.y(layer)] = max(ctx.rank_of(n) for n in layer.input)


_CMP = {
    "greaterThan": "Greater",
    "greaterEqual": "GreaterOrEqual",
    "lessThan": "Less",
    "lessEqual": "LessOrEqual",
    "equal": "Equal",
    "notEqual": "Equal",
}


@nn_layer(*_CMP)
def compare(layer: Any, ctx: NNContext) -> None:
    """Comparisons output float 0/1; one input compares against ``alpha``."""
    kind = layer.WhichOneof("layer")
    ins = ctx.ins(layer)
    if len(ins) == 1:
        ins.append(_f(ctx, getattr(layer, kind).alpha))
    b = ctx.tmp(_CMP[kind], ins)
    if kind == "notEqual":
        b = ctx.tmp("Not", [b])
    ctx.node("Cast", [b], [ctx.y(layer)], to=1)
    if len(layer.input) > 1:
        ctx.rank[ctx.y(layer)] = max(ctx.rank_of(n) for n in layer.input)


@nn_layer("logicalNot")
def logical_not(layer: Any, ctx: NNContext) -> None:
    b = ctx.tmp("Not", [ctx.cast(ctx.x(layer), np.bool_)])
    ctx.node("Cast", [b], [ctx.y(layer)], to=1)


_SIMPLE = {
    "erf": "Erf",
    "exp2": None,
    "ceil": "Ceil",
    "floor": "Floor",
    "round": "Round",
    "sign": "Sign",
    "sin": "Sin",
    "cos": "Cos",
    "tan": "Tan",
    "asin": "Asin",
    "acos": "Acos",
    "atan": "Atan",
    "sinh": "Sinh",
    "cosh": "Cosh",
    "tanh": "Tanh",
    "asinh": "Asinh",
    "acosh": "Acosh",
    "atanh": "Atanh",
}


@nn_layer(*_SIMPLE)
def simple(layer: Any, ctx: NNContext) -> None:
    kind = layer.WhichOneof("layer")
    if kind == "exp2":
        ctx.node("Pow", [_f(ctx, 2.0), ctx.x(layer)], [ctx.y(layer)])
    else:
        ctx.node(_SIMPLE[kind], [ctx.x(layer)], [ctx.y(layer)])


@nn_layer("gelu")
def gelu(layer: Any, ctx: NNContext) -> None:
    mode = layer.gelu.mode  # EXACT, TANH_APPROXIMATION, SIGMOID_APPROXIMATION
    x, y = ctx.x(layer), ctx.y(layer)
    if mode == 0:
        ctx.node("Gelu", [x], [y])
    elif mode == 1:
        ctx.node("Gelu", [x], [y], approximate="tanh")
    else:
        ctx.node("Mul", [x, ctx.tmp("Sigmoid", [ctx.tmp("Mul", [x, _f(ctx, 1.702)])])], [y])


@nn_layer("clip")
def clip(layer: Any, ctx: NNContext) -> None:
    p = layer.clip
    ctx.node("Clip", [ctx.x(layer), _f(ctx, p.minVal), _f(ctx, p.maxVal)], [ctx.y(layer)])


@nn_layer("scale")
def scale(layer: Any, ctx: NNContext) -> None:
    p = layer.scale
    x = ctx.tmp("Mul", [ctx.x(layer), _shaped(ctx, p.scale, list(p.shapeScale))])
    if p.hasBias:
        x = ctx.tmp("Add", [x, _shaped(ctx, p.bias, list(p.shapeBias))])
    ctx.node("Identity", [x], [ctx.y(layer)])


@nn_layer("bias")
def bias(layer: Any, ctx: NNContext) -> None:
    p = layer.bias
    ctx.node("Add", [ctx.x(layer), _shaped(ctx, p.bias, list(p.shape))], [ctx.y(layer)])


def _shaped(ctx: NNContext, wp: Any, shape: list[int]) -> str:
    w = weights(wp)
    if len(shape) == 1 and shape[0] > 1:
        w = w.reshape(-1, 1, 1)
    elif len(shape) == 3:
        w = w.reshape(shape)
    elif w.size == 1:
        w = w.reshape(())
    return ctx.constant(w)
