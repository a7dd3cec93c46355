"""ONNX rows for the pooling family."""

from __future__ import annotations

from modelloader.importers.onnx.table import ImportContext, onnx_op, passthrough
from modelloader.ir import Node

passthrough("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "MaxUnpool")


@onnx_op("LpPool", "GlobalLpPool")
def lp_pool(node: Node, ctx: ImportContext) -> list[Node]:
    """LpPool/GlobalLpPool-1 took ``p`` as a float attribute; it is an int from opset 2."""
    if "p" in node.attrs:
        node.attrs["p"] = int(round(float(node.attrs["p"])))
    return [node]
