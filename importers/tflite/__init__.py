"""TFLite importer: FlatBuffer bytes -> ``modelloader.ir.Graph`` (ONNX op semantics)."""

from modelloader.importers.tflite.importer import import_model
from modelloader.importers.tflite.reader import parse

__all__ = ["import_model", "parse"]
