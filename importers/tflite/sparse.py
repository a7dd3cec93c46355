"""TACO-style sparse tensors (TFLite ``SparsityParameters``) -> dense arrays.

A tensor of rank ``n`` with ``k`` blocked dimensions is viewed as ``n + k``
"expanded" dimensions: the ``n`` original ones (a blocked one divided by its block
size) followed by the ``k`` block dimensions (``block_map[j]`` is the original
dimension block ``j`` splits). ``traversal_order`` lists the expanded dimensions in
storage order and ``dim_metadata[i]`` describes level ``i`` of that order: DENSE
(every coordinate ``0..dense_size-1`` present) or SPARSE_CSR (``array_segments``
delimit, per parent position, a run of ``array_indices`` coordinates). The leaves,
in order, are the stored values.
"""

from __future__ import annotations

import numpy as np

from modelloader.errors import SparsityError
from modelloader.importers.tflite.reader import Sparsity

DENSE, SPARSE_CSR = 0, 1


def densify(values: np.ndarray, shape: tuple[int, ...], sp: Sparsity, name: str) -> np.ndarray:
    """The dense array of ``shape`` whose non-stored entries are zero.

    Raises ``SparsityError`` for metadata that is inconsistent (traversal order not a
    permutation, block sizes that do not divide, segments not monotone or of the
    wrong length, indices out of range, a leaf count that differs from the number of
    stored values) instead of reading out of bounds.
    """
    n, k = len(shape), len(sp.block_map)
    m = n + k

    def bad(msg: str) -> SparsityError:
        return SparsityError(f"sparse tensor '{name}' (shape {list(shape)}): {msg}")

    if any(d < 0 for d in shape):
        raise bad("negative dimension")
    if sorted(sp.traversal_order) != list(range(m)):
        raise bad(f"traversal_order {sp.traversal_order} is not a permutation of 0..{m - 1}")
    if len(sp.dim_metadata) != m:
        raise bad(f"{len(sp.dim_metadata)} dim_metadata entries, expected {m}")
    if len(set(sp.block_map)) != k or any(not 0 <= d < n for d in sp.block_map):
        raise bad(f"block_map {sp.block_map} must name distinct dimensions below {n}")
    level_of = {e: i for i, e in enumerate(sp.traversal_order)}
    expanded = list(shape) + [0] * k
    for j, d in enumerate(sp.block_map):
        meta = sp.dim_metadata[level_of[n + j]]
        bs = meta.dense_size
        if meta.format != DENSE or bs <= 0 or shape[d] % bs:
            raise bad(
                f"block {j} of dimension {d} has size {bs}, which must be dense and divide {shape[d]}"
            )
        expanded[n + j] = bs
        expanded[d] = shape[d] // bs

    pos = np.zeros(1, np.int64)  # storage position of each partial path
    coords: list[np.ndarray] = []  # per level, the coordinate of each path
    for i, meta in enumerate(sp.dim_metadata):
        size = expanded[sp.traversal_order[i]]
        if meta.format == DENSE:
            if meta.dense_size != size:
                raise bad(f"level {i} is dense with size {meta.dense_size}, expected {size}")
            if pos.size * size > max(int(np.prod(shape, dtype=np.int64)), 1):
                raise bad("dense levels describe more elements than the tensor has")
            child = np.arange(size, dtype=np.int64)
            coords = [np.repeat(c, size) for c in coords]
            coords.append(np.tile(child, pos.size))
            pos = (pos[:, None] * size + child).ravel()
        elif meta.format == SPARSE_CSR:
            seg, idx = meta.segments, meta.indices
            if seg is None or idx is None:
                raise bad(f"level {i} is sparse but lacks array_segments or array_indices")
            nparent = int(pos.max()) + 1 if pos.size else 0
            if seg.size < nparent + 1:
                raise bad(f"level {i} has {seg.size} segments for {nparent} parents")
            if seg.size and (seg[0] != 0 or np.any(np.diff(seg) < 0)):
                raise bad(f"level {i} array_segments are not monotone from 0")
            if seg.size and seg[-1] > idx.size:
                raise bad(
                    f"level {i} segments end at {int(seg[-1])} but there are {idx.size} indices"
                )
            if idx.size and (idx.min() < 0 or idx.max() >= size):
                raise bad(
                    f"level {i} index {int(idx.max())} out of range for dimension size {size}"
                )
            starts, counts = seg[pos], seg[pos + 1] - seg[pos]
            total = int(counts.sum())
            rep = np.repeat(np.arange(pos.size), counts)
            offs = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
            pos = starts[rep] + offs
            coords = [c[rep] for c in coords]
            coords.append(idx[pos])
        else:
            raise bad(f"level {i} has unknown format {meta.format}")
    if pos.size != values.size:
        raise bad(f"metadata describes {pos.size} stored values, the buffer holds {values.size}")
    full = [np.zeros(pos.size, np.int64) for _ in range(n)]
    for level, e in enumerate(sp.traversal_order):
        if e < n:
            full[e] = full[e] + coords[level] * (
                expanded[n + sp.block_map.index(e)] if e in sp.block_map else 1
            )
        else:
            full[sp.block_map[e - n]] = full[sp.block_map[e - n]] + coords[level]
    dense = np.zeros(shape, values.dtype)
    order = np.argsort(pos, kind="stable")
    dense[tuple(c[order] for c in full)] = values.reshape(-1)[pos[order]]
    return dense
