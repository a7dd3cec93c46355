"""ONNX rows for the matrix-multiply family."""

from __future__ import annotations

from modelloader.importers.onnx.table import ImportContext, onnx_op, passthrough
from modelloader.ir import Node

passthrough("MatMul", "MatMulInteger", "QLinearMatMul")


@onnx_op("Gemm")
def gemm(node: Node, ctx: ImportContext) -> list[Node]:
    """Gemm < 7 carried ``broadcast`` (and < 6 ``consumed_inputs``); C now always broadcasts."""
    node.attrs.pop("broadcast", None)
    node.attrs.pop("consumed_inputs", None)
    return [node]
