"""ONNX rows for onnxruntime's com.microsoft QOperator contrib ops (quantized models)."""

from __future__ import annotations

from modelloader.importers.onnx.table import passthrough

passthrough(
    "QLinearAdd",
    "QLinearMul",
    "QLinearAveragePool",
    "QLinearGlobalAveragePool",
    "QLinearConcat",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "QLinearReduceMean",
    "QLinearConv",
    "QGemm",
    domain="com.microsoft",
)
