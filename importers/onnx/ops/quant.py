"""ONNX rows for linear quantization; older opsets are subsets of the newest schema."""

from __future__ import annotations

from modelloader.importers.onnx.table import passthrough

passthrough("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
