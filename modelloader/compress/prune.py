"""Magnitude pruning (Deep Compression section 2, Han et al. 2015): per layer, the
smallest-magnitude weights are set to zero."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from modelloader.ir import Graph

#: (op, input index) pairs whose constant input is a prunable weight
WEIGHT_INPUTS = {
    ("", "Conv"): 1,
    ("modelloader", "FusedConv"): 1,
    ("", "Gemm"): 1,
    ("modelloader", "FusedGemm"): 1,
    ("", "MatMul"): 1,
}


def weight_layers(graph: Graph) -> dict[str, str]:
    """``{constant name: "conv" | "fc"}`` for float weights of Conv/Gemm/MatMul nodes."""
    out: dict[str, str] = {}
    for n in graph.nodes:
        k = WEIGHT_INPUTS.get((n.domain, n.op))
        if k is None or len(n.inputs) <= k:
            continue
        w = graph.constants.get(n.inputs[k])
        if isinstance(w, np.ndarray) and w.dtype.kind == "f" and w.ndim >= 2:
            out[n.inputs[k]] = "conv" if "Conv" in n.op else "fc"
    return out


def layer_rate(
    name: str, node_names: Mapping[str, str], rate: float, overrides: Mapping[str, float]
) -> float:
    """The pruning rate for weight ``name``: an override by weight name or node name wins."""
    if name in overrides:
        return overrides[name]
    node = node_names.get(name)
    return overrides.get(node, rate) if node is not None else rate


def prune(w: np.ndarray, rate: float) -> np.ndarray:
    """Zeros the ``rate`` fraction of ``w``'s entries with the smallest magnitude (a copy)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"pruning rate {rate} must lie in [0, 1)")
    k = int(round(rate * w.size))
    if k == 0:
        return np.array(w)
    out = np.array(w).reshape(-1)
    out[np.argpartition(np.abs(out), k - 1)[:k]] = 0
    return out.reshape(w.shape)
