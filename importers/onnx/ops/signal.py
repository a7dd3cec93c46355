"""Rows for DFT, STFT, window functions and MelWeightMatrix."""

from __future__ import annotations

import numpy as np

from modelloader.importers.onnx.table import ImportContext, onnx_op, passthrough
from modelloader.ir import Node

passthrough("STFT", "HannWindow", "HammingWindow", "BlackmanWindow", "MelWeightMatrix")


@onnx_op("DFT")
def dft(node: Node, ctx: ImportContext) -> list[Node]:
    """DFT-17 had ``axis`` as an attribute defaulting to 1; DFT-20 takes it as input 2
    (default -2), so it is always made explicit."""
    if ctx.opset() < 20:
        axis = ctx.constant(np.asarray(node.attrs.pop("axis", 1), dtype=np.int64), "DFT_axis")
        while len(node.inputs) < 2:
            node.inputs.append("")
        node.inputs[2:] = [axis]
    return [node]
