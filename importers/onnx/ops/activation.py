"""Importer rows for activations and Softmax/LogSoftmax/Hardmax.

Before opset 13, Softmax/LogSoftmax/Hardmax coerced the input to 2-D at ``axis``
(default 1) and normalised over the whole flattened tail. The row rewrites such a
node to ``Shape(x)``, ``Flatten(x, axis)``, the op with ``axis=-1`` and ``Reshape``
back to the original shape, so kernels only see opset-13 semantics.
"""

from __future__ import annotations

from modelloader.importers.onnx.table import ImportContext, onnx_op, passthrough
from modelloader.ir import Node

passthrough(
    "Celu",
    "Gelu",
    "HardSwish",
    "Mish",
    "Softplus",
    "Softsign",
    "Swish",
    "SwiGLU",
    "ThresholdedRelu",
    "Shrink",
)


@onnx_op("Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "HardSigmoid", "Sigmoid", "Tanh")
def drop_consumed_inputs(node: Node, ctx: ImportContext) -> list[Node]:
    """Opset-1 activations carried a meaningless ``consumed_inputs`` attribute."""
    node.attrs.pop("consumed_inputs", None)
    return [node]


@onnx_op("Softmax", "LogSoftmax", "Hardmax")
def softmax_family(node: Node, ctx: ImportContext) -> list[Node]:
    """Opset < 13: 2-D coercion at ``axis`` (default 1) via Flatten + Reshape."""
    if ctx.opset() >= 13:
        return [node]
    axis = int(node.attrs.pop("axis", 1))
    if axis == -1:
        # Coercing at the last axis is the same as normalising along it.
        node.attrs["axis"] = -1
        return [node]
    x, y = node.inputs[0], node.outputs[0]
    shape, flat, out2d = ctx.fresh("shape"), ctx.fresh("flat"), ctx.fresh("out2d")
    return [
        Node("Shape", [x], [shape]),
        Node("Flatten", [x], [flat], {"axis": axis}),
        Node(node.op, [flat], [out2d], {"axis": -1}, node.domain, node.name),
        Node("Reshape", [out2d, shape], [y]),
    ]
