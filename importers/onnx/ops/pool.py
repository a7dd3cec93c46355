"""ONNX rows for the pooling family."""

from __future__ import annotations

from modelloader.importers.onnx.table import ImportContext, onnx_op, passthrough
from modelloader.ir import Node

passthrough("AveragePool", "GlobalAveragePool", "GlobalMaxPool", "MaxUnpool")


@onnx_op("MaxPool")
def max_pool(node: Node, ctx: ImportContext) -> list[Node]:
    """MaxPool whose Indices output is used becomes ``modelloader.MaxPoolWithIndices``, so the
    common single-output MaxPool kernel never pays for computing indices."""
    if len(node.outputs) > 1 and node.outputs[1]:
        node.op = "MaxPoolWithIndices"
        node.domain = "modelloader"
    else:
        del node.outputs[1:]
    return [node]


@onnx_op("LpPool", "GlobalLpPool")
def lp_pool(node: Node, ctx: ImportContext) -> list[Node]:
    """LpPool/GlobalLpPool-1 took ``p`` as a float attribute; it is an int from opset 2."""
    if "p" in node.attrs:
        node.attrs["p"] = int(round(float(node.attrs["p"])))
    return [node]
