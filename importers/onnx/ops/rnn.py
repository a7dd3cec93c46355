"""Rows for RNN, GRU and LSTM."""

from __future__ import annotations

from modelloader.importers.onnx.table import ImportContext, onnx_op
from modelloader.ir import Node


@onnx_op("RNN", "GRU", "LSTM")
def recurrent(node: Node, ctx: ImportContext) -> list[Node]:
    """Opset-1 ``output_sequence`` is dropped (Y is always produced now); ``layout`` (opset 14)
    defaults to 0 as before."""
    node.attrs.pop("output_sequence", None)
    return [node]
