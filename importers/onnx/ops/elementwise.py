"""Importer rows for elementwise math, comparison, logic, bitwise and cast ops.

Normalisations to the newest opset:
* opset < 6: the ``consumed_inputs`` attribute is dropped.
* opset < 7 binary ops: ``broadcast``/``axis`` become NumPy broadcasting. Without
  ``axis`` (or with ``broadcast=0``) the forms already agree. With ``axis`` the second
  input is reshaped by runtime nodes (Shape/Size/ConstantOfShape/Concat/Reshape) so
  that its dimensions line up starting at ``axis`` of the first input.
* Clip < 11: ``min``/``max`` attributes become inputs 1 and 2 (float32 constants; the
  kernel casts them to the input's dtype).
* Cast < 6: ``to`` was a type name string; it becomes the TensorProto enum value.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from modelloader.importers.onnx.table import ImportContext, attr_to_input, onnx_op, passthrough
from modelloader.ir import Node

passthrough(
    "Not",
    "BitwiseNot",
    "BitwiseAnd",
    "BitwiseOr",
    "BitwiseXor",
    "BitShift",
    "Erf",
    "Sign",
    "Round",
    "IsNaN",
    "IsInf",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Where",
    "Mod",
    "LessOrEqual",
    "GreaterOrEqual",
    "CastLike",
    "BitCast",
)

_UNARY_OLD = ("Abs", "Neg", "Reciprocal", "Sqrt", "Exp", "Log", "Ceil", "Floor")
_BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "And", "Or", "Xor", "Equal", "Less", "Greater")


@onnx_op(*_UNARY_OLD, "Sum", "Mean", "Max", "Min")
def drop_consumed_inputs(node: Node, ctx: ImportContext) -> list[Node]:
    """Opset-1 ops carried a meaningless ``consumed_inputs`` attribute."""
    node.attrs.pop("consumed_inputs", None)
    return [node]


@onnx_op(*_BINARY)
def binary(node: Node, ctx: ImportContext) -> list[Node]:
    """Legacy (opset < 7) ``broadcast``/``axis`` broadcasting to NumPy broadcasting."""
    node.attrs.pop("consumed_inputs", None)
    broadcast = node.attrs.pop("broadcast", 0)
    axis = node.attrs.pop("axis", None)
    if not broadcast or axis is None:
        return [node]
    return align_at_axis(node, ctx, int(axis))


def align_at_axis(node: Node, ctx: ImportContext, axis: int) -> list[Node]:
    """Reshapes input B to B.shape + [1] * (rank(A) - axis - rank(B)) at run time."""
    a, b = node.inputs[0], node.inputs[1]
    i64 = np.int64
    shape_a, shape_b = ctx.fresh("shape_a"), ctx.fresh("shape_b")
    rank_a, rank_b = ctx.fresh("rank_a"), ctx.fresh("rank_b")
    pad, ones, new_shape, b2 = (
        ctx.fresh("pad"),
        ctx.fresh("ones"),
        ctx.fresh("shape"),
        ctx.fresh("b"),
    )
    t1, t2 = ctx.fresh("t"), ctx.fresh("t")
    if axis < 0:
        # Negative axis counts from the end of A: trailing ones = -axis - rank(B).
        nodes = [
            Node("Shape", [b], [shape_b]),
            Node("Size", [shape_b], [rank_b]),
            Node("Sub", [ctx.constant(np.asarray(-axis, i64)), rank_b], [pad]),
        ]
    else:
        nodes = [
            Node("Shape", [a], [shape_a]),
            Node("Size", [shape_a], [rank_a]),
            Node("Shape", [b], [shape_b]),
            Node("Size", [shape_b], [rank_b]),
            Node("Sub", [rank_a, ctx.constant(np.asarray(axis, i64))], [t1]),
            Node("Sub", [t1, rank_b], [pad]),
        ]
    nodes += [
        Node("Unsqueeze", [pad, ctx.constant(np.asarray([0], i64))], [t2]),
        Node(
            "ConstantOfShape",
            [t2],
            [ones],
            {"value": np.ones(1, i64)},
        ),
        Node("Concat", [shape_b, ones], [new_shape], {"axis": 0}),
        Node("Reshape", [b, new_shape], [b2]),
    ]
    node.inputs[1] = b2
    return [*nodes, node]


@onnx_op("Clip")
def clip(node: Node, ctx: ImportContext) -> list[Node]:
    """Clip < 11 had ``min``/``max`` attributes; they become inputs 1 and 2."""
    node.attrs.pop("consumed_inputs", None)
    if ctx.opset() < 11:
        attr_to_input(node, ctx, "min", 1, np.float32)
        attr_to_input(node, ctx, "max", 2, np.float32)
    return [node]


@onnx_op("Cast")
def cast(node: Node, ctx: ImportContext) -> list[Node]:
    """Cast-1 named the target type as a string ("FLOAT"); later opsets use the enum."""
    to = node.attrs.get("to")
    if isinstance(to, (str, bytes)):
        name = to.decode() if isinstance(to, bytes) else to
        node.attrs["to"] = int(TensorProto.DataType.Value(name.upper()))
    return [node]
