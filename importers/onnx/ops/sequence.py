"""Importer rows for sequence and optional ops (none changed in ways the kernels see)."""

from modelloader.importers.onnx.table import passthrough

passthrough(
    "SequenceConstruct",
    "SequenceEmpty",
    "SequenceInsert",
    "SequenceAt",
    "SequenceErase",
    "SequenceLength",
    "SplitToSequence",
    "ConcatFromSequence",
    "Optional",
    "OptionalGetElement",
    "OptionalHasElement",
)
