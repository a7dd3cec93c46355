#!/usr/bin/env python3
"""Build a BERT-base-sized transformer encoder as ONNX, the way PyTorch exporters write one.

12 post-norm layers, hidden 768, 12 heads, feed-forward 3072, sequence 128, batch 1, random
weights (seeded, N(0, 0.02)); input ``x`` float32 [1, 128, 768] (the embeddings' output),
output ``y`` float32 [1, 128, 768]. Each layer: Q/K/V MatMul + Add, Reshape/Transpose into
heads, MatMul, Div by sqrt(64), Add of a [1, 1, 1, 128] attention mask, Softmax, MatMul,
Transpose/Reshape back, output projection, residual Add, LayerNormalization, then the
feed-forward with the exact GELU as exporters spell it (Div, Erf, Add, Mul, Mul), residual
and LayerNormalization again. About 85 M parameters (340 MB).

usage: python bench/make_encoder.py OUT.onnx
"""

from __future__ import annotations

import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LAYERS, HIDDEN, HEADS, FF, SEQ = 12, 768, 12, 3072, 128


def build() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    def linear(x: str, n_in: int, n_out: int, tag: str) -> str:
        w = const(f"{tag}.w", (rng.standard_normal((n_in, n_out)) * 0.02).astype(np.float32))
        b = const(f"{tag}.b", np.zeros(n_out, np.float32))
        return node("Add", [node("MatMul", [x, w], f"{tag}.mm"), b], f"{tag}.out")

    head_dim = HIDDEN // HEADS
    split = const("split_heads", np.array([1, SEQ, HEADS, head_dim], np.int64))
    merge = const("merge_heads", np.array([1, SEQ, HIDDEN], np.int64))
    scale = const("sqrt_d", np.array(np.sqrt(head_dim), np.float32))
    mask = const("mask", np.zeros((1, 1, 1, SEQ), np.float32))
    sqrt2 = const("sqrt2", np.array(np.sqrt(2.0), np.float32))
    one = const("one", np.array(1.0, np.float32))
    half = const("half", np.array(0.5, np.float32))
    x = "x"
    for i in range(LAYERS):
        t = f"l{i}"

        def heads(src: str, name: str, perm: list[int], t: str = t) -> str:
            r = node(
                "Reshape", [linear(src, HIDDEN, HIDDEN, f"{t}.{name}"), split], f"{t}.{name}.r"
            )
            return node("Transpose", [r], f"{t}.{name}.t", perm=perm)

        q = heads(x, "q", [0, 2, 1, 3])
        k = heads(x, "k", [0, 2, 3, 1])
        v = heads(x, "v", [0, 2, 1, 3])
        s = node("Div", [node("MatMul", [q, k], f"{t}.qk"), scale], f"{t}.scaled")
        p = node("Softmax", [node("Add", [s, mask], f"{t}.masked")], f"{t}.p", axis=-1)
        ctx = node(
            "Transpose", [node("MatMul", [p, v], f"{t}.ctx")], f"{t}.ctx.t", perm=[0, 2, 1, 3]
        )
        ctx = node("Reshape", [ctx, merge], f"{t}.ctx.r")
        h = node("Add", [x, linear(ctx, HIDDEN, HIDDEN, f"{t}.o")], f"{t}.res1")
        g1 = const(f"{t}.ln1.g", np.ones(HIDDEN, np.float32))
        b1 = const(f"{t}.ln1.b", np.zeros(HIDDEN, np.float32))
        h = node("LayerNormalization", [h, g1, b1], f"{t}.ln1", axis=-1, epsilon=1e-12)
        f = linear(h, HIDDEN, FF, f"{t}.ff1")
        erf = node("Erf", [node("Div", [f, sqrt2], f"{t}.gelu.d")], f"{t}.gelu.e")
        gelu = node("Mul", [f, node("Add", [erf, one], f"{t}.gelu.a")], f"{t}.gelu.m")
        gelu = node("Mul", [gelu, half], f"{t}.gelu")
        out = node("Add", [h, linear(gelu, FF, HIDDEN, f"{t}.ff2")], f"{t}.res2")
        g2 = const(f"{t}.ln2.g", np.ones(HIDDEN, np.float32))
        b2 = const(f"{t}.ln2.b", np.zeros(HIDDEN, np.float32))
        x = node("LayerNormalization", [out, g2, b2], f"{t}.ln2", axis=-1, epsilon=1e-12)
    nodes.append(helper.make_node("Identity", [x], ["y"]))
    graph = helper.make_graph(
        nodes,
        "bert_base_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, SEQ, HIDDEN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, SEQ, HIDDEN])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    model = build()
    onnx.checker.check_model(model, full_check=False)
    onnx.save(model, sys.argv[1])
