"""Importer rows for tensor-manipulation ops, normalised to the newest opset."""

from __future__ import annotations

import numpy as np

from modelloader.importers.onnx.table import ImportContext, attr_to_input, onnx_op, passthrough
from modelloader.ir import Node

passthrough(
    "Transpose",
    "Gather",
    "GatherElements",
    "GatherND",
    "Scatter",
    "ScatterElements",
    "ScatterND",
    "TensorScatter",
    "Expand",
    "Tile",
    "Flatten",
    "Shape",
    "Size",
    "Identity",
    "Constant",
    "ConstantOfShape",
    "Range",
    "OneHot",
    "NonZero",
    "Compress",
    "Unique",
    "DepthToSpace",
    "SpaceToDepth",
    "Trilu",
    "EyeLike",
    "ReverseSequence",
)


@onnx_op("Reshape")
def reshape(node: Node, ctx: ImportContext) -> list[Node]:
    if ctx.opset() < 5:  # shape attribute became input 1 in opset 5
        attr_to_input(node, ctx, "shape", 1, np.int64)
    node.attrs.pop("consumed_inputs", None)
    return [node]


@onnx_op("Concat")
def concat(node: Node, ctx: ImportContext) -> list[Node]:
    node.attrs.setdefault("axis", 1)  # Concat-1 defaulted axis to 1
    return [node]


@onnx_op("Split")
def split(node: Node, ctx: ImportContext) -> list[Node]:
    if ctx.opset() < 13:  # split attribute became input 1 in opset 13
        if len(node.inputs) > 1 and node.inputs[1]:
            pass  # Split-1 could already take split as an input
        else:
            attr_to_input(node, ctx, "split", 1, np.int64)
    has_split = len(node.inputs) > 1 and node.inputs[1] != ""
    if not has_split and "num_outputs" not in node.attrs:
        # before opset 18 an absent split meant equal parts, one per output
        node.attrs["num_outputs"] = len(node.outputs)
    return [node]


@onnx_op("Slice")
def slice_(node: Node, ctx: ImportContext) -> list[Node]:
    if ctx.opset() < 10:  # starts/ends/axes attributes became inputs in opset 10
        attr_to_input(node, ctx, "starts", 1, np.int64)
        attr_to_input(node, ctx, "ends", 2, np.int64)
        attr_to_input(node, ctx, "axes", 3, np.int64)
    return [node]


@onnx_op("Pad")
def pad(node: Node, ctx: ImportContext) -> list[Node]:
    if ctx.opset() < 11:  # pads/value attributes became inputs in opset 11
        if "paddings" in node.attrs:  # Pad-1 spelling
            node.attrs["pads"] = node.attrs.pop("paddings")
        attr_to_input(node, ctx, "pads", 1, np.int64)
        attr_to_input(node, ctx, "value", 2, np.float32)
    return [node]


@onnx_op("Squeeze", "Unsqueeze")
def squeeze(node: Node, ctx: ImportContext) -> list[Node]:
    if ctx.opset() < 13:  # axes attribute became input 1 in opset 13
        attr_to_input(node, ctx, "axes", 1, np.int64)
    return [node]
