#!/usr/bin/env python3
"""Export a tiny text transformer from PyTorch to ONNX, as a real producer writes one.

Output: ``models/tiny_transformer.onnx`` (~110 KB): token embedding + learned positions, two
``nn.TransformerEncoderLayer`` blocks (d_model 32, 4 heads, GELU, post-norm) with a key
padding mask, and a 5-class head on the first token. Inputs ``ids`` int64 [2, 16] and ``mask``
int64 [2, 16] (1 = token, 0 = padding); output ``logits`` float32 [2, 5]. Random weights
(seeded): the model exists to carry what PyTorch's exporter emits for attention (MatMul with
batch axes, Softmax, LayerNormalization, Erf, Where over a -inf mask, shape arithmetic through
Shape/Gather/Concat/Reshape). Tests compare it with onnxruntime, which needs no fixture outputs.

Needs ``torch`` (``pip install torch==2.13.0``, the CPU build); its TorchScript exporter bakes the
example's shapes in, so the model takes exactly [2, 16].

usage: python scripts/make_transformer.py [OUT_DIR]   (default: models/)
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import onnx
import torch


class TinyTransformer(torch.nn.Module):
    def __init__(self, vocab: int = 100, d: int = 32, seq: int = 16, classes: int = 5) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.randn(1, seq, d) * 0.1)
        layer = torch.nn.TransformerEncoderLayer(
            d, 4, 2 * d, dropout=0.0, batch_first=True, activation="gelu"
        )
        self.enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = torch.nn.Linear(d, classes)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(ids) + self.pos[:, : ids.shape[1]]
        h = self.enc(h, src_key_padding_mask=mask == 0)
        return self.head(h[:, 0])


def main(out_dir: Path) -> None:
    torch.manual_seed(0)
    model = TinyTransformer().eval()
    ids = torch.randint(0, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    mask[1, 10:] = 0
    out = out_dir / "tiny_transformer.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (ids, mask),
            str(out),
            input_names=["ids", "mask"],
            output_names=["logits"],
            opset_version=17,
            dynamo=False,
        )
    m = onnx.load(str(out))
    onnx.checker.check_model(m)
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(m.graph.node)} nodes)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "models")
