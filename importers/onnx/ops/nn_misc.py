"""Rows for Attention, RotaryEmbedding, losses, training optimisers and TfIdfVectorizer."""

from __future__ import annotations

from modelloader.importers.onnx.table import passthrough

passthrough(
    "Attention",
    "RotaryEmbedding",
    "NegativeLogLikelihoodLoss",
    "SoftmaxCrossEntropyLoss",
    "TfIdfVectorizer",
    "LinearAttention",
)
passthrough("FlexAttention", domain="ai.onnx.preview")
passthrough("Adagrad", "Adam", "Momentum", domain="ai.onnx.preview.training")
