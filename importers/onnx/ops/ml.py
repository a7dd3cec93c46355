"""Importer rows for the ai.onnx.ml domain."""

from modelloader.importers.onnx.table import passthrough

passthrough(
    "LabelEncoder", "ArrayFeatureExtractor", "Binarizer", "TreeEnsemble", domain="ai.onnx.ml"
)
