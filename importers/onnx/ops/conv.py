"""ONNX rows for the convolution family."""

from __future__ import annotations

from modelloader.importers.onnx.table import passthrough

passthrough(
    "Conv",
    "ConvTranspose",
    "ConvInteger",
    "QLinearConv",
    "DeformConv",
    "Col2Im",
    "CausalConvWithState",
)
