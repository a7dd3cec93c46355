"""Rows for normalisation ops and Dropout."""

from __future__ import annotations

import numpy as np

from modelloader.importers.onnx.table import ImportContext, attr_to_input, onnx_op, passthrough
from modelloader.ir import Node

passthrough(
    "LayerNormalization",
    "RMSNormalization",
    "GroupNormalization",
    "LRN",
    "LpNormalization",
    "MeanVarianceNormalization",
)


@onnx_op("BatchNormalization")
def batch_normalization(node: Node, ctx: ImportContext) -> list[Node]:
    """Opset < 7 ``consumed_inputs``/``is_test`` and opset < 9 ``spatial`` are dropped (the kernel
    broadcasts per-activation parameters itself); before opset 14 training mode was implied by
    asking for the running statistics, and outputs 3-4 (saved mean/var) no longer exist."""
    for a in ("consumed_inputs", "is_test", "spatial"):
        node.attrs.pop(a, None)
    if ctx.opset() < 14:
        if any(node.outputs[1:]):
            node.attrs["training_mode"] = 1
        node.outputs = node.outputs[:3]
    return [node]


@onnx_op("InstanceNormalization")
def instance_normalization(node: Node, ctx: ImportContext) -> list[Node]:
    """Opset 1 ``consumed_inputs`` is dropped."""
    node.attrs.pop("consumed_inputs", None)
    return [node]


@onnx_op("Dropout")
def dropout(node: Node, ctx: ImportContext) -> list[Node]:
    """Before opset 12 ``ratio`` was an attribute; opset < 7 ``is_test``/``consumed_inputs`` are
    dropped (old models are imported for inference)."""
    node.attrs.pop("is_test", None)
    node.attrs.pop("consumed_inputs", None)
    if ctx.opset() < 12:
        attr_to_input(node, ctx, "ratio", 1, np.float32)
    return [node]
