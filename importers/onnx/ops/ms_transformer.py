"""ONNX rows for onnxruntime's com.microsoft transformer fusions (what its transformer
optimizer writes into ``model_optimized.onnx`` files); kernels in kernels/cpu/ms_transformer.py."""

from __future__ import annotations

from modelloader.importers.onnx.table import passthrough

passthrough(
    "Gelu",
    "BiasGelu",
    "FastGelu",
    "QuickGelu",
    "SkipLayerNormalization",
    "SkipSimplifiedLayerNormalization",
    "Attention",
    "EmbedLayerNormalization",
    domain="com.microsoft",
)
