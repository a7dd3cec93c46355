"""Importer rows for reductions, ArgMax/ArgMin, cumulative ops, TopK, Einsum and Det.

* ReduceSum < 13 and the other Reduce* < 18 had an ``axes`` attribute; it becomes the
  optional int64 input 1 (absent attribute: no input, i.e. reduce over all axes).
* TopK < 10 had a ``k`` attribute; it becomes input 1 as an int64 tensor of shape [1].
"""

from __future__ import annotations

import numpy as np

from modelloader.importers.onnx.table import ImportContext, attr_to_input, onnx_op, passthrough
from modelloader.ir import Node

passthrough("ArgMax", "ArgMin", "CumSum", "CumProd", "Einsum", "Det")

_AXES_INPUT_SINCE = {"ReduceSum": 13}
_REDUCE = (
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceSumSquare",
    "ReduceLogSum",
    "ReduceLogSumExp",
)


@onnx_op(*_REDUCE)
def reduce(node: Node, ctx: ImportContext) -> list[Node]:
    """Moves the pre-13/18 ``axes`` attribute to input 1."""
    if ctx.opset() < _AXES_INPUT_SINCE.get(node.op, 18):
        attr_to_input(node, ctx, "axes", 1, np.int64)
    return [node]


@onnx_op("TopK")
def topk(node: Node, ctx: ImportContext) -> list[Node]:
    """TopK < 10 took ``k`` as an attribute; it becomes input 1 (int64, shape [1])."""
    if ctx.opset() < 10 and "k" in node.attrs:
        node.attrs["k"] = [int(node.attrs["k"])]
        attr_to_input(node, ctx, "k", 1, np.int64)
    return [node]
