"""ai.onnx.ml kernels: LabelEncoder, ArrayFeatureExtractor, Binarizer, TreeEnsemble."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloader.kernels.cpu._registry import kernel

ML = "ai.onnx.ml"


def _lookup(x: np.ndarray, keys: np.ndarray, values: np.ndarray, default: Any) -> np.ndarray:
    """values[i] where x == keys[i], else default (NaN keys match NaN inputs)."""
    if keys.dtype == object or x.dtype == object:
        table = dict(zip(keys.tolist(), values.tolist(), strict=True))
        flat = [table.get(v, default) for v in x.reshape(-1).tolist()]
        out = np.empty(len(flat), dtype=values.dtype)
        out[:] = flat
        return out.reshape(x.shape)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    pos = np.clip(np.searchsorted(sk, x), 0, max(len(sk) - 1, 0))
    hit = (sk[pos] == x) if len(sk) else np.zeros(x.shape, bool)
    if sk.dtype.kind == "f":
        nan_keys = np.flatnonzero(np.isnan(sk))
        if nan_keys.size:  # NaN sorts last; searchsorted cannot find it
            nan_in = np.isnan(x)
            pos = np.where(nan_in, nan_keys[0], pos)
            hit = hit | nan_in
    return np.where(hit, values[order][pos], np.asarray(default, dtype=values.dtype)).astype(values.dtype)


@kernel("LabelEncoder", domain=ML)
def label_encoder(
    x: np.ndarray,
    *,
    default_float: float = -0.0,
    default_int64: int = -1,
    default_string: str = "_Unused",
    default_tensor: np.ndarray | None = None,
    keys_floats: list[float] | None = None,
    keys_int64s: list[int] | None = None,
    keys_strings: list[str] | None = None,
    keys_tensor: np.ndarray | None = None,
    values_floats: list[float] | None = None,
    values_int64s: list[int] | None = None,
    values_strings: list[str] | None = None,
    values_tensor: np.ndarray | None = None,
) -> np.ndarray:
    """ai.onnx.ml LabelEncoder-4: map each element through keys -> values, else the default."""
    if keys_tensor is not None:
        keys = np.asarray(keys_tensor).reshape(-1)
    elif keys_strings is not None:
        keys = np.asarray(keys_strings, dtype=object)
    elif keys_int64s is not None:
        keys = np.asarray(keys_int64s, dtype=np.int64)
    elif keys_floats is not None:
        keys = np.asarray(keys_floats, dtype=np.float32)
    else:
        raise ValueError("LabelEncoder needs keys")
    default: Any
    if values_tensor is not None:
        values = np.asarray(values_tensor).reshape(-1)
        if default_tensor is not None:
            default = np.asarray(default_tensor).reshape(-1)[0]
        elif values.dtype == object:
            default = "_Unused"
        elif values.dtype.kind in "iu":
            default = -1
        else:
            default = -0.0
    elif values_strings is not None:
        values, default = np.asarray(values_strings, dtype=object), default_string
    elif values_int64s is not None:
        values, default = np.asarray(values_int64s, dtype=np.int64), default_int64
    elif values_floats is not None:
        values, default = np.asarray(values_floats, dtype=np.float32), default_float
    else:
        raise ValueError("LabelEncoder needs values")
    if keys.dtype != object and x.dtype != object:
        keys = keys.astype(x.dtype)
    return _lookup(x, keys, values, default)


@kernel("ArrayFeatureExtractor", domain=ML)
def array_feature_extractor(x: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """ai.onnx.ml ArrayFeatureExtractor-1: select last-axis columns; 1-D input gives [1, k]."""
    idx = indices.astype(np.int64).reshape(-1)
    out = np.take(x, idx, axis=-1)
    return out.reshape(1, idx.size) if x.ndim == 1 else out


@kernel("Binarizer", domain=ML)
def binarizer(x: np.ndarray, *, threshold: float = 0.0) -> np.ndarray:
    """ai.onnx.ml Binarizer-1: 1 where x > threshold, else 0, in x's type."""
    return (x > threshold).astype(x.dtype)


def _post_transform(scores: np.ndarray, post_transform: int) -> np.ndarray:
    if post_transform == 0:
        return scores
    if post_transform == 1:
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if post_transform == 2:
        return 1.0 / (1.0 + np.exp(-scores))
    if post_transform == 3:  # softmax over the non-zero scores only
        nz = scores != 0
        e = np.where(nz, np.exp(scores - np.where(nz, scores, -np.inf).max(axis=1, keepdims=True)), 0)
        s = e.sum(axis=1, keepdims=True)
        return np.where(s > 0, e / np.where(s > 0, s, 1), 0)
    if post_transform == 4:
        from scipy.special import erfinv  # noqa: PLC0415 - optional dependency, rarely used

        return np.sqrt(2.0) * erfinv(2.0 * scores - 1.0)
    raise ValueError(f"TreeEnsemble: unknown post_transform {post_transform}")


@kernel("TreeEnsemble", domain=ML)
def tree_ensemble(
    x: np.ndarray,
    *,
    nodes_splits: np.ndarray,
    nodes_featureids: list[int],
    nodes_modes: np.ndarray,
    nodes_truenodeids: list[int],
    nodes_falsenodeids: list[int],
    nodes_trueleafs: list[int],
    nodes_falseleafs: list[int],
    leaf_targetids: list[int],
    leaf_weights: np.ndarray,
    tree_roots: list[int],
    n_targets: int,
    aggregate_function: int = 1,
    post_transform: int = 0,
    nodes_hitrates: np.ndarray | None = None,
    nodes_missing_value_tracks_true: list[int] | None = None,
    membership_values: np.ndarray | None = None,
) -> np.ndarray:
    """ai.onnx.ml TreeEnsemble-5: evaluate all trees for all rows level by level.

    Modes: 0 LEQ, 1 LT, 2 GTE, 3 GT, 4 EQ, 5 NEQ, 6 MEMBER. aggregate_function:
    0 AVERAGE, 1 SUM, 2 MIN, 3 MAX. Output [N, n_targets] in X's float type.
    """
    x2 = x.reshape(x.shape[0], -1)
    splits = np.asarray(nodes_splits).astype(np.float64).reshape(-1)
    feats = np.asarray(nodes_featureids, dtype=np.int64)
    modes = np.asarray(nodes_modes).astype(np.int64).reshape(-1)
    tnext = np.asarray(nodes_truenodeids, dtype=np.int64)
    fnext = np.asarray(nodes_falsenodeids, dtype=np.int64)
    tleaf = np.asarray(nodes_trueleafs, dtype=bool)
    fleaf = np.asarray(nodes_falseleafs, dtype=bool)
    missing = (
        np.zeros(len(feats), bool)
        if nodes_missing_value_tracks_true is None
        else np.asarray(nodes_missing_value_tracks_true, dtype=bool)
    )
    # set members per MEMBER node as a NaN-padded matrix, in node order
    members = np.full((len(feats), 1), np.nan)
    if membership_values is not None:
        mv = np.asarray(membership_values, dtype=np.float64).reshape(-1)
        groups: list[list[float]] = [[]]
        for v in mv.tolist():
            if np.isnan(v):
                groups.append([])
            else:
                groups[-1].append(v)
        member_nodes = np.flatnonzero(modes == 6)
        width = max((len(g) for g in groups), default=1) or 1
        members = np.full((len(feats), width), np.nan)
        for node, g in zip(member_nodes.tolist(), groups, strict=False):
            members[node, : len(g)] = g

    roots = np.asarray(tree_roots, dtype=np.int64)
    n, t = x2.shape[0], len(roots)
    degenerate = tleaf[roots] & fleaf[roots] & (tnext[roots] == fnext[roots])
    cur = np.broadcast_to(np.where(degenerate, tnext[roots], roots), (n, t)).copy()
    done = np.broadcast_to(degenerate, (n, t)).copy()
    rows = np.broadcast_to(np.arange(n)[:, None], (n, t))
    while not done.all():
        r, c = np.nonzero(~done)
        node = cur[r, c]
        v = x2[r, feats[node]].astype(np.float64)
        s, m = splits[node], modes[node]
        cond = np.select(
            [m == 0, m == 1, m == 2, m == 3, m == 4, m == 5],
            [v <= s, v < s, v >= s, v > s, v == s, v != s],
            default=(members[node] == v[:, None]).any(axis=1),
        )
        cond |= missing[node] & np.isnan(v)
        cur[r, c] = np.where(cond, tnext[node], fnext[node])
        done[r, c] = np.where(cond, tleaf[node], fleaf[node])

    weights = np.asarray(leaf_weights).astype(np.float64).reshape(-1)[cur]
    targets = np.asarray(leaf_targetids, dtype=np.int64)[cur]
    if aggregate_function in (0, 1):
        out = np.zeros((n, n_targets))
        np.add.at(out, (rows, targets), weights)
        if aggregate_function == 0:
            out /= t
    elif aggregate_function == 2:
        out = np.full((n, n_targets), np.finfo(x.dtype).max, dtype=np.float64)
        np.minimum.at(out, (rows, targets), weights)
    elif aggregate_function == 3:
        out = np.full((n, n_targets), np.finfo(x.dtype).min, dtype=np.float64)
        np.maximum.at(out, (rows, targets), weights)
    else:
        raise ValueError(f"TreeEnsemble: unknown aggregate_function {aggregate_function}")
    return _post_transform(out, post_transform).astype(x.dtype)
