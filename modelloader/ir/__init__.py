"""The typed intermediate representation every importer produces.

Ops follow ONNX operator semantics at the newest opset the installed ``onnx`` knows:
``Node.op``/``Node.domain`` name an ONNX op, inputs and attributes mean what that
op's newest schema says. Importers normalise everything else (older opsets, other
formats) into this form, so each kernel implements exactly one version of an op.
"""

from modelloader.ir.graph import Dim, Graph, Node, Value, ValueKind

__all__ = ["Dim", "Graph", "Node", "Value", "ValueKind"]
