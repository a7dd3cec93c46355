"""ONNX rows for onnxruntime's com.microsoft fusions: what its transformer optimizer writes
into ``model_optimized.onnx`` files (kernels/cpu/ms_transformer.py) and what a model saved
after its graph optimizations holds (kernels/cpu/ms_fused.py)."""

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
    "FusedConv",
    "FusedGemm",
    "FusedMatMul",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    domain="com.microsoft",
)

# registered by onnxruntime in the ai.onnx domain, though no ONNX opset has it
passthrough("SimplifiedLayerNormalization")
