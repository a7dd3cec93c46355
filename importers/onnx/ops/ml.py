"""Importer rows for the ai.onnx.ml domain."""

from modelloader.importers.onnx.table import passthrough

passthrough(
    "LabelEncoder",
    "ArrayFeatureExtractor",
    "Binarizer",
    "TreeEnsemble",
    "TreeEnsembleRegressor",
    "TreeEnsembleClassifier",
    domain="ai.onnx.ml",
)
