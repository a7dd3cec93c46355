"""Sparse constants in the IR, and the load-time choice between sparse and dense kernels.

A ``SparseTensor`` is a weight whose 2-D view ``(shape[0], prod(shape[1:]))`` is held in
CSR form. ``sparsify`` rewrites each MatMul/Gemm/Conv reading one into ``SparseGemm`` /
``SparseConv`` (domain ``modelloader``, kernels in ``kernels/cpu/sparse.py``) when the
weight's density is below the threshold for its layer kind, and densifies it once
otherwise.

Thresholds (``FC_MAX_DENSITY``, ``CONV_MAX_DENSITY``) are a calibrated rule (numbers in
docs/container.md): below them the CSR product beat the dense BLAS kernel on every shape
tried. Convolutions a little denser than that are measured where they run: their kernel
times both forms in its first calls (which wins depends on the machine's BLAS and cores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelloader.ir import Graph, Node
from modelloader.kernels.cpu.coreml_ops import unpack_bits

#: sparse wins for fully-connected layers (batch <= 8) below this density
FC_MAX_DENSITY = 0.35
#: sparse im2col convolution wins below this density (measured with a one-threaded CSR product)
CONV_MAX_DENSITY = 0.04
#: convolutions between CONV_MAX_DENSITY and this are timed both ways in their first runs
#: (``SparseTensor.choose``): which wins there depends on the machine's BLAS and cores
CONV_TIMED_DENSITY = 0.3
#: calls per kernel, each running both, before a timed layer keeps the faster
TIMED_CALLS = 2
DOMAIN = "modelloader"


@dataclass(eq=False)
class SparseTensor:
    """CSR weight: row ``r`` of the 2-D view holds ``data[indptr[r]:indptr[r+1]]`` at
    columns ``indices[...]``; ``shape`` is the dense shape."""

    data: np.ndarray
    indices: np.ndarray
    indptr: np.ndarray
    shape: tuple[int, ...]
    _csr: Any = field(default=None, repr=False)
    _blocks: dict[int, list[tuple[int, int, Any]]] = field(default_factory=dict, repr=False)
    _cblocks: dict[int, list[tuple[int, int, Any]]] = field(default_factory=dict, repr=False)
    _ranges: dict[int, list[tuple[int, int]]] = field(default_factory=dict, repr=False)
    _narrow: np.ndarray | None = field(default=None, repr=False)
    _diagonal: dict[int, SparseTensor] = field(default_factory=dict, repr=False)
    #: flat positions of the non-zeros when built from them (``to_dense`` reuses them)
    _positions: np.ndarray | None = field(default=None, repr=False)
    #: a timed layer's dense copy, until its kernel has chosen (``choose``)
    dense_twin: np.ndarray | None = field(default=None, repr=False)
    #: "sparse" / "dense" once chosen; None while timing (or for untimed layers)
    choice: str | None = field(default=None, repr=False)
    _times: list[tuple[float, float]] = field(default_factory=list, repr=False)

    def choose(self, dense_s: float, sparse_s: float) -> None:
        """Records one call's time of each form; after ``TIMED_CALLS`` keeps the faster by
        their best times (a sparse choice drops the dense copy)."""
        self._times.append((dense_s, sparse_s))
        if len(self._times) >= TIMED_CALLS and self.choice is None:
            dense = min(t[0] for t in self._times)
            sparse = min(t[1] for t in self._times)
            self.choice = "sparse" if sparse <= dense else "dense"
            if self.choice == "sparse":
                self.dense_twin = None

    @property
    def dtype(self) -> np.dtype:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nnz(self) -> int:
        return int(self.data.size)

    @property
    def density(self) -> float:
        return self.nnz / max(self.size, 1)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        rows = self.shape[0] if self.shape else 1
        return rows, self.size // max(rows, 1)

    @classmethod
    def from_positions(
        cls, pos: np.ndarray, values: np.ndarray, shape: tuple[int, ...]
    ) -> SparseTensor:
        """From increasing flat positions of the non-zeros and their values."""
        rows, cols = (shape[0] if shape else 1), math.prod(shape[1:])
        pos = np.asarray(pos, np.int64)
        r = pos // max(cols, 1)
        indptr = np.zeros(rows + 1, np.int64)
        np.cumsum(np.bincount(r, minlength=rows), out=indptr[1:])
        itype = np.int32 if max(cols, pos.size) < 2**31 else np.int64
        return cls(
            np.ascontiguousarray(values),
            (pos - r * cols).astype(itype),
            indptr.astype(itype),
            tuple(shape),
            _positions=pos,
        )

    @classmethod
    def from_dense(cls, x: np.ndarray) -> SparseTensor:
        flat = np.ascontiguousarray(x).reshape(-1)
        pos = np.flatnonzero(flat)
        return cls.from_positions(pos, flat[pos], x.shape)

    def to_dense(self) -> np.ndarray:
        rows, cols = self.matrix_shape
        out = np.zeros(rows * cols, self.dtype)
        pos = self._positions
        if pos is None:
            # flat positions: row starts repeated per non-zero, plus the columns
            pos = np.repeat(np.arange(0, rows * cols, cols, dtype=np.int64), np.diff(self.indptr))
            pos += self.indices
        out[pos] = self.data
        return out.reshape(self.shape)

    def csr(self) -> Any:
        """The scipy ``csr_matrix`` of the 2-D view (built once)."""
        if self._csr is None:
            from scipy.sparse import csr_matrix

            self._csr = csr_matrix((self.data, self.indices, self.indptr), shape=self.matrix_shape)
        return self._csr

    def row_blocks(self, parts: int) -> list[tuple[int, int, Any]]:
        """``(lo, hi, csr)`` row blocks of the 2-D view with about equal non-zeros each, for
        ``parts`` threads (built once per count; the blocks view this tensor's arrays)."""
        cache = self._blocks
        if parts not in cache:
            from scipy.sparse import csr_matrix

            cols = self.matrix_shape[1]
            blocks = []
            for lo, hi in self.row_ranges(parts):
                a, b = int(self.indptr[lo]), int(self.indptr[hi])
                ptr = self.indptr[lo : hi + 1] - self.indptr[lo]
                m = csr_matrix((self.data[a:b], self.indices[a:b], ptr), shape=(hi - lo, cols))
                blocks.append((lo, hi, m))
            cache[parts] = blocks
        return cache[parts]

    def row_ranges(self, parts: int) -> list[tuple[int, int]]:
        """Up to ``parts`` contiguous ``(lo, hi)`` row ranges of the 2-D view with about equal
        non-zeros each (computed once per count)."""
        if parts not in self._ranges:
            self._ranges[parts] = _balanced(self.indptr, parts)
        return self._ranges[parts]

    def narrow_indices(self) -> np.ndarray:
        """The column indices as uint16 when the 2-D view has at most 65,536 columns (a copy
        made once: a matrix-vector product reads a third fewer bytes), else as stored."""
        if self._narrow is None:
            narrow = self.matrix_shape[1] <= 1 << 16
            self._narrow = self.indices.astype(np.uint16) if narrow else self.indices
        return self._narrow

    def block_diagonal(self, groups: int) -> SparseTensor:
        """A grouped conv weight (M, C/groups, *k) as the block-diagonal (M, C * prod(k))
        matrix whose group g rows read only group g's im2col rows (built once per count,
        sharing this tensor's values)."""
        if groups not in self._diagonal:
            rows, cols = self.matrix_shape
            per = rows // groups
            offsets = np.repeat(np.arange(groups, dtype=np.int64) * cols, per)
            counts = np.diff(self.indptr).astype(np.int64)
            indices = self.indices.astype(np.int64) + np.repeat(offsets, counts)
            itype = np.int32 if groups * cols < 2**31 else np.int64
            self._diagonal[groups] = SparseTensor(
                self.data, indices.astype(itype), self.indptr, (rows, groups * cols)
            )
        return self._diagonal[groups]

    def column_blocks(self, parts: int) -> list[tuple[int, int, Any]]:
        """``(lo, hi, csc)`` column blocks of the 2-D view with about equal non-zeros each
        (built once per count). A matrix-vector product by columns has no dependency chain
        between consecutive non-zeros (scipy's CSR kernel sums each row serially), and the
        blocks' partial results just add up."""
        cache = self._cblocks
        if parts not in cache:
            csc = self.csr().tocsc()
            cache[parts] = [(lo, hi, csc[:, lo:hi]) for lo, hi in _balanced(csc.indptr, parts)]
        return cache[parts]

    def transposed(self) -> SparseTensor:
        """The CSR of the 2-D view's transpose (shape reversed)."""
        t = self.csr().T.tocsr()
        t.sort_indices()
        rows, cols = self.matrix_shape
        return SparseTensor(t.data, t.indices, t.indptr, (cols, rows), t)


def _balanced(indptr: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Up to ``parts`` contiguous ``(lo, hi)`` ranges of a compressed axis (``indptr``) with
    about equal non-zeros each, empty ranges dropped."""
    n = indptr.size - 1
    cuts = np.searchsorted(indptr, np.linspace(0, int(indptr[-1]), parts + 1)[1:-1])
    bounds = [0, *sorted({int(c) for c in cuts if 0 < c < n}), n]
    return list(zip(bounds[:-1], bounds[1:]))


def scipy_available() -> bool:
    try:
        import scipy.sparse  # noqa: F401
    except ImportError:
        return False
    return True


def _eligible(node: Node, graph: Graph, name: str) -> str | None:
    """'fc' / 'conv' if ``node`` reads sparse constant ``name`` as a weight a sparse kernel
    takes, else None."""
    if node.domain not in ("", DOMAIN) or len(node.inputs) < 2 or node.inputs[1] != name:
        return None
    if name in node.inputs[:1] + node.inputs[2:]:
        return None
    w = graph.constants[name]
    if node.op in ("Gemm", "FusedGemm") and w.ndim == 2 and not node.attrs.get("transA", 0):
        return "fc"
    if node.op == "MatMul" and not node.domain and w.ndim == 2:
        return "fc"
    if (
        node.op in ("Conv", "FusedConv")
        and w.ndim >= 3
        # grouped convs, but not depthwise ones (one input channel per group: dense loops)
        and (node.attrs.get("group", 1) == 1 or w.shape[1] > 1)
        and not node.attrs.get("shuffle")
    ):
        return "conv"
    return None


def sparsify(
    graph: Graph,
    *,
    fc_max_density: float = FC_MAX_DENSITY,
    conv_max_density: float = CONV_MAX_DENSITY,
    conv_timed_density: float = CONV_TIMED_DENSITY,
) -> dict[str, str]:
    """Rewrites nodes reading ``SparseTensor`` constants; returns ``{weight: "sparse" |
    "dense" | "timed"}``.

    Every ``SparseTensor`` left in ``graph.constants`` afterwards is read only by sparse
    kernels; all others are densified here, once. Convolution weights with a density in
    ``[conv_max_density, conv_timed_density)`` are "timed": they also keep a dense copy,
    and their kernel runs both forms in its first calls and keeps the faster
    (``SparseTensor.choose``). Without scipy everything is densified.
    """
    sparse = [k for k, v in graph.constants.items() if isinstance(v, SparseTensor)]
    if not sparse:
        return {}
    users: dict[str, list[int]] = {k: [] for k in sparse}
    other: set[str] = {o.name for o in graph.outputs}
    for i, n in enumerate(graph.nodes):
        for x in n.inputs:
            if x in users:
                users[x].append(i)
        for g in n.subgraphs():
            other.update(g.outer_refs())
    have_scipy = scipy_available()
    limit = {"fc": fc_max_density, "conv": max(conv_max_density, conv_timed_density)}
    decision: dict[str, str] = {}
    for name in sparse:
        w: SparseTensor = graph.constants[name]
        kinds = [_eligible(graph.nodes[i], graph, name) for i in users[name]]
        if not (have_scipy and name not in other and _under(w, kinds, limit)):
            graph.constants[name] = w.to_dense()
            decision[name] = "dense"
            continue
        timed = "conv" in kinds and w.density >= conv_max_density
        if timed:
            w.dense_twin = w.to_dense()
        w._positions = None  # kept sparse: only the CSR arrays stay (and a timed twin)
        for i in users[name]:
            n = graph.nodes[i]
            attrs = dict(n.attrs)
            if n.op in ("Conv", "FusedConv"):
                attrs.setdefault("kernel_shape", list(w.shape[2:]))
                graph.nodes[i] = Node(
                    "SparseConv", list(n.inputs), n.outputs, attrs, DOMAIN, n.name
                )
                continue
            # SparseGemm wants op(B) transposed, i.e. [N, K] rows: Gemm transB=1 stores that
            trans_b = n.op != "MatMul" and attrs.pop("transB", 0)
            csr_name = name if trans_b else f"{name}__csr_t"
            if not trans_b and csr_name not in graph.constants:
                graph.constants[csr_name] = w.transposed()
            inputs = [n.inputs[0], csr_name, *n.inputs[2:]]
            graph.nodes[i] = Node("SparseGemm", inputs, n.outputs, attrs, DOMAIN, n.name)
        if not any(graph.nodes[i].inputs[1] == name for i in users[name]):
            del graph.constants[name]
        decision[name] = "timed" if timed else "sparse"
    return decision


def adopt_sparse(graph: Graph) -> dict[str, str]:
    """Brings weights a source format stored sparse into the IR as ``SparseTensor`` constants
    and lets ``sparsify`` choose sparse kernels or one densification for each: constants in
    ``graph.sparse_sources`` (TFLite SparsityParameters; a constant Transpose of one is folded
    first, as TFLite's OHWI conv filters have) and CoreML ``constexpr_sparse_to_dense``
    weights (input-less ``CoreMLSparseToDense`` nodes), the latter only where every reader
    is a sparse-kernel weight input under its threshold: any other keeps its packed node.
    Returns ``sparsify``'s decisions; without scipy nothing changes (the importers' dense
    and packed forms stay)."""
    coreml = [i for i, n in enumerate(graph.nodes) if n.op == "CoreMLSparseToDense"]
    if not (graph.sparse_sources or coreml) or not scipy_available():
        return {}
    limit = {"fc": FC_MAX_DENSITY, "conv": max(CONV_MAX_DENSITY, CONV_TIMED_DENSITY)}
    outputs = {o.name for o in graph.outputs}
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(graph.nodes):
        for x in n.inputs:
            if x:
                readers.setdefault(x, []).append(i)
    sources = set(graph.sparse_sources)
    dead: set[int] = set()
    # nodes are in order: a weight's Identity (TFLite DENSIFY) comes before its Transpose
    for i, n in enumerate(graph.nodes):
        src = n.inputs[0] if n.inputs else ""
        if (
            n.op in ("Identity", "Transpose")
            and not n.domain
            and src in sources
            and isinstance(graph.constants.get(src), np.ndarray)
            and len(readers.get(src, [])) == 1
            and src not in outputs
        ):
            arr = graph.constants.pop(src)
            if n.op == "Transpose":
                arr = np.ascontiguousarray(np.transpose(arr, n.attrs.get("perm")))
            graph.constants[n.outputs[0]] = arr
            sources.add(n.outputs[0])
            dead.add(i)
    for i in coreml:
        n = graph.nodes[i]
        if n.domain != DOMAIN or n.outputs[0] in outputs:
            continue
        values = np.asarray(n.attrs["values"])
        if values.dtype != np.float32:
            continue
        shape = tuple(int(d) for d in n.attrs["shape"])
        size = math.prod(shape)
        try:
            pos = np.flatnonzero(unpack_bits(np.asarray(n.attrs["mask"], np.uint8), 1, size))
        except (ValueError, TypeError):
            continue  # a malformed mask is the kernel's to report, at run time
        if pos.size > values.size:
            continue
        name = n.outputs[0]
        w = graph.constants[name] = SparseTensor.from_positions(pos, values[: pos.size], shape)
        kinds = [_eligible(graph.nodes[j], graph, name) for j in readers.get(name, [])]
        if _under(w, kinds, limit):
            dead.add(i)
        else:
            del graph.constants[name]
    graph.nodes[:] = [n for k, n in enumerate(graph.nodes) if k not in dead]
    for name in sources:
        arr = graph.constants.get(name)
        if isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.ndim >= 2:
            graph.constants[name] = SparseTensor.from_dense(arr)
    return sparsify(graph)


def _under(w: SparseTensor, kinds: list[str | None], limit: dict[str, float]) -> bool:
    """Whether every reader takes ``w`` as a sparse-kernel weight (``kinds`` from
    ``_eligible``) and ``w`` is below each reader kind's density ``limit``."""
    return bool(kinds) and all(k is not None and w.density < limit[k] for k in kinds)
