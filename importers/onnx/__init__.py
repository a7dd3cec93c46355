"""ONNX importer: ``ModelProto`` bytes -> ``modelloader.ir.Graph`` in newest-opset form."""

from modelloader.importers.onnx.reader import import_model, parse_model

__all__ = ["import_model", "parse_model"]
