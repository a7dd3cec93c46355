"""Control-flow rows. Loop/If/Scan subgraphs are imported by the reader."""

from modelloader.importers.onnx.table import ImportContext, onnx_op, passthrough
from modelloader.ir import Node

passthrough("If", "Loop", "SequenceMap")


@onnx_op("Scan")
def scan(node: Node, ctx: ImportContext) -> list[Node]:
    # Scan-8 carried a batch axis and sequence_lens; opset 9 dropped both.
    return ctx.reject(node) if ctx.opset() < 9 else [node]
