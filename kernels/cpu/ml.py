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
    return np.where(hit, values[order][pos], np.asarray(default, dtype=values.dtype)).astype(
        values.dtype
    )


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


_POST = {"NONE": 0, "SOFTMAX": 1, "LOGISTIC": 2, "SOFTMAX_ZERO": 3, "PROBIT": 4}
_AGG = {"AVERAGE": 0, "SUM": 1, "MIN": 2, "MAX": 3}
_LEGACY_MODES = {
    "BRANCH_LEQ": 0,
    "BRANCH_LT": 1,
    "BRANCH_GTE": 2,
    "BRANCH_GT": 3,
    "BRANCH_EQ": 4,
    "BRANCH_NEQ": 5,
    "BRANCH_MEMBER": 6,
    "LEAF": -1,
}


def _erfinv(x: np.ndarray) -> np.ndarray:
    """Winitzki's approximation, as onnxruntime uses for PROBIT."""
    sgn = np.where(x < 0, -1.0, 1.0)
    w = (1.0 - x) * (1.0 + x)
    with np.errstate(divide="ignore", invalid="ignore"):
        log = np.log(w)
        v = 2.0 / (np.pi * 0.147) + 0.5 * log
        r = sgn * np.sqrt(-v + np.sqrt(v * v - log / 0.147))
    return np.where(w == 0, 0.0, r)


def _post_transform(scores: np.ndarray, post_transform: int) -> np.ndarray:
    """Row-wise score transform (NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO, PROBIT)."""
    if post_transform == 0:
        return scores
    if post_transform == 1:
        e = np.exp(scores - scores.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    if post_transform == 2:
        return 1.0 / (1.0 + np.exp(-scores))
    if post_transform == 3:  # softmax over the non-zero scores; zeros stay 0, all-zero rows 0.5
        nz = np.abs(scores) > 1e-7
        e = np.where(nz, np.exp(scores - scores.max(axis=1, keepdims=True)), 0.0)
        s = e.sum(axis=1, keepdims=True)
        return np.where(s == 0, 0.5, e / np.where(s == 0, 1.0, s))
    if post_transform == 4:
        return np.sqrt(2.0) * _erfinv(2.0 * scores - 1.0)
    raise ValueError(f"unknown post_transform {post_transform}")


def _walk(
    x: np.ndarray,
    start: np.ndarray,
    start_done: np.ndarray,
    feats: np.ndarray,
    modes: np.ndarray,
    splits: np.ndarray,
    tnext: np.ndarray,
    fnext: np.ndarray,
    tleaf: np.ndarray,
    fleaf: np.ndarray,
    missing: np.ndarray,
    members: np.ndarray,
) -> np.ndarray:
    """Follows every (row, tree) pair from ``start`` down to a leaf, one level per step.

    Returns the [rows, trees] array of the index each walk ended on (a leaf index).
    """
    n, t = x.shape[0], start.size
    cur = np.broadcast_to(start, (n, t)).copy()
    done = np.broadcast_to(start_done, (n, t)).copy()
    while not done.all():
        r, c = np.nonzero(~done)
        node = cur[r, c]
        v = x[r, feats[node]].astype(np.float64)
        s, m = splits[node], modes[node]
        with np.errstate(invalid="ignore"):
            cond = np.select(
                [m == 0, m == 1, m == 2, m == 3, m == 4, m == 5],
                [v <= s, v < s, v >= s, v > s, v == s, v != s],
                default=(members[node] == v[:, None]).any(axis=1),
            )
        cond |= missing[node] & np.isnan(v)
        cur[r, c] = np.where(cond, tnext[node], fnext[node])
        done[r, c] = np.where(cond, tleaf[node], fleaf[node])
    return cur


def _aggregate(
    leaf: np.ndarray,
    entry_leaf: np.ndarray,
    entry_target: np.ndarray,
    entry_weight: np.ndarray,
    n_leaves: int,
    n_targets: int,
    aggregate_function: int,
    dtype: np.dtype,
) -> np.ndarray:
    """Combines, per row, the (target, weight) entries of the leaves each tree reached.

    Returns the [rows, targets] scores and how many entries reached each of them.
    """
    n, t = leaf.shape
    hits = np.zeros((n_leaves, n_targets), dtype=np.int64)
    np.add.at(hits, (entry_leaf, entry_target), 1)
    count = hits[leaf].sum(axis=1)
    if aggregate_function in (0, 1):
        table = np.zeros((n_leaves, n_targets))
        np.add.at(table, (entry_leaf, entry_target), entry_weight)
        out = table[leaf].sum(axis=1)
        return (out / t if aggregate_function == 0 else out), count
    if aggregate_function in (2, 3):
        big = np.finfo(dtype).max if aggregate_function == 2 else np.finfo(dtype).min
        table = np.full((n_leaves, n_targets), big, dtype=np.float64)
        ufunc = np.minimum if aggregate_function == 2 else np.maximum
        ufunc.at(table, (entry_leaf, entry_target), entry_weight)
        return ufunc.reduce(table[leaf], axis=1), count
    raise ValueError(f"unknown aggregate_function {aggregate_function}")


def _float_input(x: np.ndarray) -> np.ndarray:
    x2 = x.reshape(x.shape[0], -1) if x.ndim != 1 else x.reshape(1, -1)
    return x2 if x2.dtype.kind == "f" else x2.astype(np.float32)


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
    x2 = _float_input(x)
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
    # set members per MEMBER node as a NaN-padded matrix; groups are NaN-separated, in node order
    members = np.full((len(feats), 1), np.nan)
    if membership_values is not None:
        groups: list[list[float]] = [[]]
        for v in np.asarray(membership_values, dtype=np.float64).reshape(-1).tolist():
            if np.isnan(v):
                groups.append([])
            else:
                groups[-1].append(v)
        width = max((len(g) for g in groups), default=1) or 1
        members = np.full((len(feats), width), np.nan)
        for node, g in zip(np.flatnonzero(modes == 6).tolist(), groups, strict=False):
            members[node, : len(g)] = g

    roots = np.asarray(tree_roots, dtype=np.int64)
    # a tree that is a single leaf: both branches of its root name the same leaf
    degenerate = tleaf[roots] & fleaf[roots] & (tnext[roots] == fnext[roots])
    start = np.where(degenerate, tnext[roots], roots)
    splits = np.asarray(nodes_splits).astype(np.float64).reshape(-1)
    leaf = _walk(
        x2, start, degenerate, feats, modes, splits, tnext, fnext, tleaf, fleaf, missing, members
    )
    weights = np.asarray(leaf_weights).astype(np.float64).reshape(-1)
    n_leaves = weights.size
    out, _ = _aggregate(
        leaf,
        np.arange(n_leaves),
        np.asarray(leaf_targetids, dtype=np.int64),
        weights,
        n_leaves,
        n_targets,
        aggregate_function,
        x2.dtype,
    )
    return _post_transform(out, post_transform).astype(x2.dtype)


def _legacy_trees(
    x: np.ndarray,
    nodes_treeids: list[int],
    nodes_nodeids: list[int],
    nodes_featureids: list[int],
    nodes_modes: list[str],
    nodes_values: Any,
    nodes_truenodeids: list[int],
    nodes_falsenodeids: list[int],
    nodes_missing_value_tracks_true: list[int] | None,
    entry_treeids: list[int],
    entry_nodeids: list[int],
    entry_ids: list[int],
    entry_weights: Any,
    n_targets: int,
    aggregate_function: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores [N, n_targets] (and per-score entry counts) for the legacy tree encoding."""
    tree_ids = np.asarray(nodes_treeids, dtype=np.int64)
    key = {(t, nid): i for i, (t, nid) in enumerate(zip(nodes_treeids, nodes_nodeids, strict=True))}
    modes = np.asarray([_LEGACY_MODES[m] for m in nodes_modes], dtype=np.int64)
    is_leaf = modes == -1
    tnext = np.asarray(
        [key.get((t, nid), 0) for t, nid in zip(nodes_treeids, nodes_truenodeids, strict=True)],
        np.int64,
    )
    fnext = np.asarray(
        [key.get((t, nid), 0) for t, nid in zip(nodes_treeids, nodes_falsenodeids, strict=True)],
        np.int64,
    )
    missing = (
        np.zeros(len(modes), bool)
        if not nodes_missing_value_tracks_true
        else np.asarray(nodes_missing_value_tracks_true, dtype=bool)
    )
    # roots: the first node listed for each tree (the id-0 node when present)
    uniq, first = np.unique(tree_ids, return_index=True)
    roots = np.asarray(
        [key.get((int(t), 0), int(f)) for t, f in zip(uniq, first, strict=True)], np.int64
    )
    leaf = _walk(
        _float_input(x),
        roots,
        is_leaf[roots],
        np.asarray(nodes_featureids, dtype=np.int64),
        modes,
        np.asarray(nodes_values, dtype=np.float64).reshape(-1),
        tnext,
        fnext,
        is_leaf[tnext],
        is_leaf[fnext],
        missing,
        np.full((len(modes), 1), np.nan),
    )
    entry_leaf = np.asarray(
        [key[(t, nid)] for t, nid in zip(entry_treeids, entry_nodeids, strict=True)], np.int64
    )
    return _aggregate(
        leaf,
        entry_leaf,
        np.asarray(entry_ids, dtype=np.int64),
        np.asarray(entry_weights, dtype=np.float64).reshape(-1),
        len(modes),
        n_targets,
        _AGG[aggregate_function],
        np.dtype(np.float32),
    )


@kernel("TreeEnsembleRegressor", domain=ML)
def tree_ensemble_regressor(
    x: np.ndarray,
    *,
    nodes_treeids: list[int],
    nodes_nodeids: list[int],
    nodes_featureids: list[int],
    nodes_modes: list[str],
    nodes_truenodeids: list[int],
    nodes_falsenodeids: list[int],
    target_treeids: list[int],
    target_nodeids: list[int],
    target_ids: list[int],
    nodes_values: list[float] | None = None,
    nodes_values_as_tensor: np.ndarray | None = None,
    target_weights: list[float] | None = None,
    target_weights_as_tensor: np.ndarray | None = None,
    n_targets: int = 1,
    aggregate_function: str = "SUM",
    base_values: list[float] | None = None,
    base_values_as_tensor: np.ndarray | None = None,
    post_transform: str = "NONE",
    nodes_hitrates: list[float] | None = None,
    nodes_hitrates_as_tensor: np.ndarray | None = None,
    nodes_missing_value_tracks_true: list[int] | None = None,
) -> np.ndarray:
    """ai.onnx.ml TreeEnsembleRegressor-3: [N, n_targets] float32 (base_values added last)."""
    scores, count = _legacy_trees(
        x,
        nodes_treeids,
        nodes_nodeids,
        nodes_featureids,
        nodes_modes,
        nodes_values if nodes_values_as_tensor is None else nodes_values_as_tensor,
        nodes_truenodeids,
        nodes_falsenodeids,
        nodes_missing_value_tracks_true,
        target_treeids,
        target_nodeids,
        target_ids,
        target_weights if target_weights_as_tensor is None else target_weights_as_tensor,
        n_targets,
        aggregate_function,
    )
    base = base_values if base_values_as_tensor is None else base_values_as_tensor
    if base is not None:
        scores = scores + np.asarray(base, dtype=np.float64).reshape(1, -1)
    scores = np.where(count > 0, scores, 0.0)  # onnxruntime: a target no leaf voted for is 0
    return _post_transform(scores, _POST[post_transform]).astype(np.float32)


def _labels(best: np.ndarray, ints: list[int] | None, strings: list[str] | None) -> np.ndarray:
    if strings is not None:
        out = np.empty(best.size, dtype=object)
        out[:] = [strings[i] for i in best.tolist()]
        return out
    return np.asarray(ints, dtype=np.int64)[best]


@kernel("TreeEnsembleClassifier", domain=ML)
def tree_ensemble_classifier(
    x: np.ndarray,
    *,
    nodes_treeids: list[int],
    nodes_nodeids: list[int],
    nodes_featureids: list[int],
    nodes_modes: list[str],
    nodes_truenodeids: list[int],
    nodes_falsenodeids: list[int],
    class_treeids: list[int],
    class_nodeids: list[int],
    class_ids: list[int],
    nodes_values: list[float] | None = None,
    nodes_values_as_tensor: np.ndarray | None = None,
    class_weights: list[float] | None = None,
    class_weights_as_tensor: np.ndarray | None = None,
    classlabels_int64s: list[int] | None = None,
    classlabels_strings: list[str] | None = None,
    base_values: list[float] | None = None,
    base_values_as_tensor: np.ndarray | None = None,
    post_transform: str = "NONE",
    nodes_hitrates: list[float] | None = None,
    nodes_hitrates_as_tensor: np.ndarray | None = None,
    nodes_missing_value_tracks_true: list[int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """ai.onnx.ml TreeEnsembleClassifier-3: (labels [N], scores [N, classes] float32).

    Follows onnxruntime where the spec is silent: classes no leaf voted for are left
    out of the arg-max, and two-class models use its binary rules (``_binary_scores``).
    """
    n_classes = len(
        classlabels_strings if classlabels_strings is not None else classlabels_int64s or []
    )
    weights = class_weights if class_weights_as_tensor is None else class_weights_as_tensor
    scores, count = _legacy_trees(
        x,
        nodes_treeids,
        nodes_nodeids,
        nodes_featureids,
        nodes_modes,
        nodes_values if nodes_values_as_tensor is None else nodes_values_as_tensor,
        nodes_truenodeids,
        nodes_falsenodeids,
        nodes_missing_value_tracks_true,
        class_treeids,
        class_nodeids,
        class_ids,
        weights,
        max(n_classes, max(class_ids) + 1),
        "SUM",
    )
    base = base_values if base_values_as_tensor is None else base_values_as_tensor
    base_arr = np.zeros(0) if base is None else np.asarray(base, dtype=np.float64).reshape(-1)
    post = _POST[post_transform]
    if scores.shape[1] > 2:
        if base_arr.size:
            scores = scores + base_arr[None, :]
            count = np.where(count > 0, count, 1)
        best = np.argmax(np.where(count > 0, scores, -np.inf), axis=1)
        probs = _post_transform(scores, post)
        return _labels(best, classlabels_int64s, classlabels_strings), probs.astype(np.float32)
    binary = len(set(class_ids)) == 1
    all_positive = bool((np.asarray(weights) >= 0).all())
    labels, probs = _binary_scores(scores, count > 0, base_arr, post, binary, all_positive)
    if not binary and classlabels_strings is None:
        return labels, probs  # onnxruntime yields the raw values 1/0 here
    return _labels(labels, classlabels_int64s, classlabels_strings), probs


def _binary_scores(
    scores: np.ndarray,
    has: np.ndarray,
    base: np.ndarray,
    post: int,
    binary: bool,
    all_positive: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """onnxruntime's two-class rules: (label index [N], scores [N, 2] float32)."""
    s0, s1 = scores[:, 0].copy(), scores[:, 1].copy()
    h0, h1 = has[:, 0], has[:, 1]
    add = np.full(s0.shape, -1)
    if base.size == 2:
        s1, s0 = (
            np.where(h1, base[1] + s0, s1 + base[1]),
            np.where(h1, -(base[1] + s0), s0 + base[0]),
        )
    elif base.size == 1:
        s0 = s0 + base[0]
    else:
        add[:] = 3
    h0 = h0 | (base.size > 0)
    pos = np.where(h1, s1, np.where(h0, s0, 0.0))
    if binary:
        label = (pos > 0.5) if all_positive else (pos > 0)
        add = np.where(label, 0, 1) if all_positive else np.where(label, 2, 3)
    else:
        label = pos > 0
    two = _post_transform(np.stack([s0, s1], axis=1), post)  # rows where class 1 scored
    if post == 4:
        one = np.stack([_post_transform(s0[:, None], 4)[:, 0], np.zeros_like(s0)], axis=1)
    elif post == 2:
        sig = 1.0 / (1.0 + np.exp(-s0))
        cond = add[:, None]
        one = np.where(
            cond >= 2, np.stack([1.0 - sig, sig], axis=1), np.stack([1.0 - s0, s0], axis=1)
        )
    else:
        cond = add[:, None]
        one = np.where(
            cond >= 2,
            np.stack([-s0, s0], 1),
            np.where(cond >= 0, np.stack([1.0 - s0, s0], 1), np.stack([s0, np.zeros_like(s0)], 1)),
        )
    probs = np.where(h1[:, None], two, one)
    return label.astype(np.int64), probs.astype(np.float32)
