"""The compressed-model container (``.mldc``), format version 1; spec in docs/container.md.

Layout (little-endian)::

    b"MLDC\\x00\\x01"   magic (6 bytes)
    u16               format version (1)
    u64               header length H (JSON, space-padded so blobs start 64-aligned)
    H bytes           UTF-8 JSON header: the IR graph + one codec chain per constant
    blobs             each 64-byte aligned, tiling the data section exactly
    32 bytes          sha256 of everything before it

Reading follows safetensors: every header field is checked before it is used (caps on
sizes, blobs inside the data section and non-overlapping, codebooks consistent with their
bit widths, Huffman tables complete and prefix-free, decoded lengths exact), and each
violation raises its own ``ContainerError`` subclass (``modelloader.errors``).
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelloader.compress import codecs, huffman
from modelloader.compress.codecs import field as get_field
from modelloader.compress.codecs import only_keys
from modelloader.compress.sparse import SparseTensor
from modelloader.errors import (
    BlobOverlapError,
    BlobRangeError,
    ContainerChecksumError,
    ContainerError,
    ContainerMagicError,
    ContainerTruncatedError,
    ContainerVersionError,
    GraphStructureError,
    HeaderSchemaError,
    HeaderSizeError,
    SizeCapError,
)
from modelloader.ir import Graph, Node, Value, ValueKind

MAGIC = b"MLDC\x00\x01"
VERSION = 1
PREFIX = len(MAGIC) + 2 + 8
CHECKSUM = 32
ALIGN = 64
MAX_HEADER = 64 << 20
MAX_NAME = 4096
MAX_GRAPH_DEPTH = 16

#: value dtypes a header may name besides the tensor dtypes (strings, ml_dtypes types)
_VALUE_DTYPES = {"object", "bfloat16", "float8_e4m3fn", "float8_e5m2", "int4", "uint4"}

#: ``encode(name, array, write) -> codec spec`` chooses a constant's codec chain
Encoder = Callable[[str, np.ndarray, codecs.BlobWriter], dict]


def is_container(data: Any) -> bool:
    return bytes(data[: len(MAGIC)]) == MAGIC


# --------------------------------------------------------------------------- writing


class _Blobs:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def write(self, data: bytes) -> dict:
        pad = -self.size % ALIGN
        if pad:
            self.parts.append(b"\x00" * pad)
            self.size += pad
        ref = {"offset": self.size, "length": len(data)}
        self.parts.append(bytes(data))
        self.size += len(data)
        return ref


def raw_encoder(name: str, x: np.ndarray, write: codecs.BlobWriter) -> dict:
    return codecs.encode_raw(x, write)


def write_container(
    graph: Graph, encode: Encoder = raw_encoder, extra: dict[str, Any] | None = None
) -> bytes:
    """Serialises ``graph``; each constant's codec chain comes from ``encode``.

    ``extra`` is stored under the header's ``"compression"`` key (informational only).
    Raises ``ValueError`` for constants or attributes the format cannot hold.
    """
    blobs = _Blobs()
    header = {
        "format": "modelloader-compressed",
        "version": VERSION,
        "graph": _graph_json(graph, encode, blobs.write),
        "compression": extra or {},
    }
    text = json.dumps(header, separators=(",", ":"), allow_nan=True).encode()
    text += b" " * (-(PREFIX + len(text)) % ALIGN)
    blob_bytes = b"".join(blobs.parts)
    blob_bytes += b"\x00" * (-len(blob_bytes) % ALIGN)
    body = MAGIC + struct.pack("<HQ", VERSION, len(text)) + text + blob_bytes
    return body + hashlib.sha256(body).digest()


def _dtype_name(dt: Any) -> str | None:
    return None if dt is None else np.dtype(dt).name


def _value_json(v: Value) -> dict:
    return {
        "name": v.name,
        "dtype": _dtype_name(v.dtype),
        "shape": None if v.shape is None else list(v.shape),
        "kind": v.kind.value,
        "elem_kind": None if v.elem_kind is None else v.elem_kind.value,
    }


def _tensor_json(name: str, x: Any, encode: Encoder, write: codecs.BlobWriter) -> dict:
    if isinstance(x, SparseTensor):
        x = x.to_dense()
    x = np.asarray(x)
    if x.dtype.name not in codecs.DTYPES:
        raise ValueError(f"constant '{name}' has dtype {x.dtype}, which the container cannot hold")
    return {"dtype": x.dtype.name, "shape": list(x.shape), "codec": encode(name, x, write)}


def _attr_json(name: str, v: Any, encode: Encoder, write: codecs.BlobWriter) -> Any:
    if isinstance(v, Graph):
        return {"graph": _graph_json(v, encode, write)}
    if isinstance(v, np.ndarray):
        return {"tensor": _tensor_json(name, v, raw_encoder, write)}
    if isinstance(v, bytes):
        return {"bytes": v.hex()}
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(g, Graph) for g in v):
            return {"graphs": [_graph_json(g, encode, write) for g in v]}
        if all(isinstance(e, (int, float, str, np.integer, np.floating)) for e in v):
            return [
                e
                if isinstance(e, str)
                else (float(e) if isinstance(e, (float, np.floating)) else int(e))
                for e in v
            ]
    raise ValueError(f"attribute '{name}' of type {type(v).__name__} cannot be stored")


def _graph_json(g: Graph, encode: Encoder, write: codecs.BlobWriter) -> dict:
    return {
        "name": g.name,
        "inputs": [_value_json(v) for v in g.inputs],
        "outputs": [_value_json(v) for v in g.outputs],
        "values": [_value_json(v) for v in g.values.values()],
        "constants": {k: _tensor_json(k, v, encode, write) for k, v in g.constants.items()},
        "nodes": [
            {
                "op": n.op,
                "domain": n.domain,
                "name": n.name,
                "inputs": list(n.inputs),
                "outputs": list(n.outputs),
                "attrs": {k: _attr_json(k, a, encode, write) for k, a in n.attrs.items()},
            }
            for n in g.nodes
        ],
        "metadata": {k: v for k, v in g.metadata.items() if isinstance(v, str)},
    }


# --------------------------------------------------------------------------- reading


@dataclass
class TensorRecord:
    """What the reader learnt about one stored constant (for ``Model.compression``)."""

    dtype: str
    shape: tuple[int, ...]
    codec: str
    stored_bytes: int
    density: float


@dataclass
class Container:
    graph: Graph
    tensors: dict[str, TensorRecord] = field(default_factory=dict)
    compression: dict[str, Any] = field(default_factory=dict)
    size: int = 0


_SCALARS = frozenset((int, float, str, bool, type(None)))


def _blob_refs(obj: Any, out: list[dict], depth: int = 0, names: bool = False) -> None:
    """Every ``{"blob": {...}}`` reference below ``obj``; under ``constants``/``attrs`` the
    keys are names (a constant may be called "blob"), so only their values are walked."""
    if depth > 64:
        raise HeaderSchemaError("header nests deeper than 64 levels")
    if isinstance(obj, dict):
        for k, v in obj.items():
            if names:
                if isinstance(v, (dict, list)):
                    _blob_refs(v, out, depth + 1)
            elif k == "blob":
                only_keys(
                    get_field({"blob": v}, "blob", dict, "blob"), {"offset", "length"}, "blob"
                )
                out.append(v)
            elif isinstance(v, (dict, list)):
                _blob_refs(v, out, depth + 1, names=k in ("constants", "attrs"))
    elif isinstance(obj, list) and not _SCALARS.issuperset(map(type, obj)):
        for v in obj:
            if isinstance(v, (dict, list)):  # scalars hold no references
                _blob_refs(v, out, depth + 1)


def _check_blob_layout(refs: list[dict], section: int) -> None:
    spans = []
    for r in refs:
        off = get_field(r, "offset", int, "blob")
        ln = get_field(r, "length", int, "blob")
        if off < 0 or ln < 0 or off + ln > section:
            raise BlobRangeError(
                f"blob [{off}, {off + ln}) ends past the {section}-byte data section"
            )
        if off % ALIGN:
            raise BlobRangeError(f"blob offset {off} is not {ALIGN}-byte aligned")
        spans.append((off, ln))
    spans.sort()
    end = 0
    for off, ln in spans:
        if off < end:
            raise BlobOverlapError(f"blob at {off} overlaps the blob ending at {end}")
        if off - end >= ALIGN:
            raise BlobRangeError(f"the data section has an unreferenced gap [{end}, {off})")
        end = off + ln
    if section - end >= ALIGN or (spans == [] and section):
        raise BlobRangeError(f"the data section has {section - end} unreferenced trailing bytes")


def read_container(data: Any, name: str = "<container>") -> Container:
    """Parses and validates a container; constants come back as arrays or SparseTensors.

    Raises a ``ContainerError`` subclass for every malformation.
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
    n = len(view)
    if n < len(MAGIC) or bytes(view[: len(MAGIC)]) != MAGIC:
        raise ContainerMagicError(f"{name}: not a modelloader container (magic {MAGIC!r} missing)")
    if n < PREFIX + CHECKSUM:
        raise ContainerTruncatedError(
            f"{name}: {n} bytes cannot hold the container prefix and checksum"
        )
    version, hlen = struct.unpack_from("<HQ", view, len(MAGIC))
    if version != VERSION:
        raise ContainerVersionError(
            f"{name}: container format version {version}; this modelloader reads version {VERSION}"
        )
    if hlen > MAX_HEADER:
        raise HeaderSizeError(f"{name}: header length {hlen} exceeds the {MAX_HEADER}-byte cap")
    if PREFIX + hlen + CHECKSUM > n:
        raise ContainerTruncatedError(
            f"{name}: header of {hlen} bytes runs past the end of the {n}-byte file"
        )
    if (PREFIX + hlen) % ALIGN:
        raise HeaderSizeError(
            f"{name}: header length {hlen} does not pad the blobs to {ALIGN} bytes"
        )
    if hashlib.sha256(view[: n - CHECKSUM]).digest() != bytes(view[n - CHECKSUM :]):
        raise ContainerChecksumError(f"{name}: sha256 mismatch, the file is corrupt or truncated")
    try:
        header = json.loads(bytes(view[PREFIX : PREFIX + hlen]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise HeaderSchemaError(f"{name}: header is not UTF-8 JSON: {e}") from None
    where = "header"
    only_keys(
        get_field(header, "format", str, where) and header,
        {"format", "version", "graph", "compression"},
        where,
    )
    if (
        header["format"] != "modelloader-compressed"
        or get_field(header, "version", int, where) != version
    ):
        raise HeaderSchemaError(f"{name}: header format/version fields disagree with the prefix")
    compression = get_field(header, "compression", dict, where)
    section = view[PREFIX + hlen : n - CHECKSUM]
    refs: list[dict] = []
    _blob_refs(get_field(header, "graph", dict, where), refs)
    _check_blob_layout(refs, len(section))

    read = _Reader(section)
    read.prefetch(header["graph"])
    out = Container(Graph(), size=n, compression=compression)
    out.graph = _read_graph(get_field(header, "graph", dict, where), read, out, "graph", 0)
    return out


class _Reader:
    """``read(ref)``: a blob of the (layout-checked) data section. ``decoded`` maps
    ``id(stream spec)`` to its symbols, Huffman-decoded for all weights in one batch."""

    def __init__(self, section: memoryview) -> None:
        self.section = section
        self.decoded: dict[int, np.ndarray] = {}

    def __call__(self, ref: Any) -> memoryview:
        ref = get_field({"blob": ref}, "blob", dict, "blob")
        off, ln = ref["offset"], ref["length"]
        return self.section[off : off + ln]

    def prefetch(self, graph: Any) -> None:
        """Decodes every well-formed Huffman stream of the top graph's constants in one
        lock-step pass (``huffman.decode_many``). Anything odd is left to the per-tensor
        path, which checks it in order and raises the precise error; so is everything
        if the batch fails."""
        specs: list[dict] = []

        def walk(c: Any, depth: int = 0) -> None:
            if not isinstance(c, dict) or depth > 4:
                return
            if c.get("kind") == "huffman":
                specs.append(c)
                return
            for k in ("indices", "positions", "values"):
                walk(c.get(k), depth + 1)

        consts = graph.get("constants") if isinstance(graph, dict) else None
        for t in consts.values() if isinstance(consts, dict) else ():
            walk(t.get("codec") if isinstance(t, dict) else None)
        jobs, keep = [], []
        for sp in specs:
            try:
                lengths = sp["lengths"]
                job = {k: sp[k] for k in ("count", "alphabet", "chunk", "total_bits")}
                ok = all(type(v) is int for v in job.values()) and isinstance(lengths, list)
                if not ok or not codecs.int_list(lengths):
                    continue
                job["blob"], job["lengths"] = self(sp["blob"]), lengths
            except (KeyError, TypeError, ContainerError):
                continue
            jobs.append(job)
            keep.append(sp)
        if len(jobs) < 2:
            return
        try:
            res = huffman.decode_many(jobs)
        except ContainerError:
            return
        self.decoded = {id(sp): r for sp, r in zip(keep, res)}


def _folded_weights(nodes: Any) -> set[str]:
    """Weights of Convs feeding a BatchNormalization (folded into them at load, densely):
    decoded dense at once rather than as a SparseTensor densified later. A best-effort
    scan of the unchecked node list; ``_densify_before_batchnorm`` stays the rule."""
    if not isinstance(nodes, list):
        return set()
    ok = [n for n in nodes if isinstance(n, dict)]

    def names(n: dict, key: str) -> list:
        v = n.get(key)
        return [x for x in v if isinstance(x, str)] if isinstance(v, list) else []

    bn_in = {
        names(n, "inputs")[0]
        for n in ok
        if n.get("op") == "BatchNormalization" and names(n, "inputs")
    }
    return {
        names(n, "inputs")[1]
        for n in ok
        if n.get("op") == "Conv"
        and len(names(n, "inputs")) > 1
        and names(n, "outputs")
        and names(n, "outputs")[0] in bn_in
    }


def _str(spec: Any, key: str, where: str) -> str:
    s = get_field(spec, key, str, where)
    if len(s) > MAX_NAME:
        raise SizeCapError(f"{where}: '{key}' is longer than {MAX_NAME} characters")
    return s


def _names(spec: Any, key: str, where: str) -> list[str]:
    v = get_field(spec, key, list, where)
    if not all(isinstance(s, str) and len(s) <= MAX_NAME for s in v):
        raise HeaderSchemaError(f"{where}: '{key}' must be a list of names")
    return v


def _read_value(spec: Any, where: str) -> Value:
    only_keys(
        get_field(spec, "name", str, where) and spec,
        {"name", "dtype", "shape", "kind", "elem_kind"},
        where,
    )
    dt = spec.get("dtype")
    if dt is not None and not (
        isinstance(dt, str) and (dt in codecs.DTYPES or dt in _VALUE_DTYPES)
    ):
        raise HeaderSchemaError(f"{where}: unknown dtype {dt!r}")
    shape = spec.get("shape")
    if shape is not None and (
        not isinstance(shape, list)
        or len(shape) > codecs.MAX_RANK
        or not all(
            d is None
            or (isinstance(d, str) and len(d) <= MAX_NAME)
            or (isinstance(d, int) and not isinstance(d, bool) and 0 <= d < codecs.MAX_ELEMENTS)
            for d in shape
        )
    ):
        raise HeaderSchemaError(f"{where}: bad shape {shape!r}")
    kinds = {k.value: k for k in ValueKind}
    kind, elem = spec.get("kind", "tensor"), spec.get("elem_kind")
    if (
        not isinstance(kind, str)
        or kind not in kinds
        or not (elem is None or (isinstance(elem, str) and elem in kinds))
    ):
        raise HeaderSchemaError(f"{where}: unknown value kind {kind!r}/{elem!r}")
    dtype = None
    if dt is not None:
        dtype = np.dtype(object) if dt == "object" else codecs.DTYPES.get(dt)
        if dtype is None:
            import ml_dtypes

            dtype = np.dtype(getattr(ml_dtypes, dt))
    return Value(
        spec["name"],
        dtype,
        None if shape is None else tuple(shape),
        kinds[kind],
        None if elem is None else kinds[elem],
    )


def _read_tensor(
    spec: Any, read: codecs.BlobReader, where: str, weights: bool
) -> tuple[Any, TensorRecord]:
    dtype, shape = codecs.check_dtype_shape(spec, where)
    only_keys(spec, {"dtype", "shape", "codec"}, where)
    codec = get_field(spec, "codec", dict, where)
    refs: list[dict] = []
    _blob_refs(codec, refs)
    stored = sum(r["length"] for r in refs)
    if weights and codec.get("kind") == "sparse" and len(shape) >= 2 and dtype.kind == "f":
        pos, vals = codecs.decode_sparse_parts(codec, shape, dtype, read, where + ".codec")
        arr: Any = SparseTensor.from_positions(pos, vals, shape)
        density = arr.density
    else:
        arr = codecs.decode_codec(codec, shape, dtype, read, where + ".codec")
        density = (
            float(np.count_nonzero(arr)) / max(arr.size, 1) if codec.get("kind") != "raw" else 1.0
        )
    return arr, TensorRecord(dtype.name, shape, codecs.describe(codec), stored, density)


def _read_attr(v: Any, read: codecs.BlobReader, out: Container, where: str, depth: int) -> Any:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float, str)):
        return v
    if isinstance(v, list):
        if not all(isinstance(e, (int, float, str)) and not isinstance(e, bool) for e in v):
            raise HeaderSchemaError(f"{where}: list attributes hold numbers or strings only")
        return v
    if isinstance(v, dict) and len(v) == 1:
        ((tag, body),) = v.items()
        if tag == "tensor":
            return _read_tensor(body, read, where, weights=False)[0]
        if tag == "bytes" and isinstance(body, str):
            try:
                return bytes.fromhex(body)
            except ValueError:
                raise HeaderSchemaError(f"{where}: bad hex bytes") from None
        if tag == "graph":
            return _read_graph(body, read, out, where, depth + 1)
        if tag == "graphs" and isinstance(body, list):
            return [
                _read_graph(g, read, out, f"{where}[{i}]", depth + 1) for i, g in enumerate(body)
            ]
    raise HeaderSchemaError(f"{where}: unrecognised attribute encoding")


def _read_graph(
    spec: Any, read: codecs.BlobReader, out: Container, where: str, depth: int
) -> Graph:
    if depth > MAX_GRAPH_DEPTH:
        raise SizeCapError(f"{where}: subgraphs nest deeper than {MAX_GRAPH_DEPTH}")
    only_keys(
        get_field(spec, "name", str, where) and spec,
        {"name", "inputs", "outputs", "values", "constants", "nodes", "metadata"},
        where,
    )
    g = Graph(name=_str(spec, "name", where))
    g.inputs = [
        _read_value(v, f"{where}.inputs[{i}]")
        for i, v in enumerate(get_field(spec, "inputs", list, where))
    ]
    g.outputs = [
        _read_value(v, f"{where}.outputs[{i}]")
        for i, v in enumerate(get_field(spec, "outputs", list, where))
    ]
    for i, v in enumerate(get_field(spec, "values", list, where)):
        val = _read_value(v, f"{where}.values[{i}]")
        g.values[val.name] = val
    dense = _folded_weights(spec.get("nodes"))
    for k, t in get_field(spec, "constants", dict, where).items():
        if len(k) > MAX_NAME:
            raise SizeCapError(f"{where}: constant name longer than {MAX_NAME}")
        arr, rec = _read_tensor(t, read, f"{where}.constants[{k!r}]", weights=k not in dense)
        g.constants[k] = arr
        if depth == 0:
            out.tensors[k] = rec
    for i, n in enumerate(get_field(spec, "nodes", list, where)):
        w = f"{where}.nodes[{i}]"
        only_keys(
            get_field(n, "op", str, w) and n,
            {"op", "domain", "name", "inputs", "outputs", "attrs"},
            w,
        )
        attrs = get_field(n, "attrs", dict, w)
        g.nodes.append(
            Node(
                _str(n, "op", w),
                _names(n, "inputs", w),
                _names(n, "outputs", w),
                {k: _read_attr(a, read, out, f"{w}.attrs[{k!r}]", depth) for k, a in attrs.items()},
                _str(n, "domain", w),
                _str(n, "name", w),
            )
        )
    meta = get_field(spec, "metadata", dict, where)
    if not all(isinstance(v, str) for v in meta.values()):
        raise HeaderSchemaError(f"{where}: metadata values must be strings")
    g.metadata = dict(meta)
    return g


def summary(c: Container) -> dict[str, Any]:
    """``Model.compression``: per stored constant its codec chain, bytes, ratio and density,
    computed from what was read (never trusted from the header), plus totals."""
    layers = {}
    orig_total = stored_total = 0
    for k, r in c.tensors.items():
        orig = math.prod(r.shape) * np.dtype(r.dtype).itemsize
        orig_total += orig
        stored_total += r.stored_bytes
        layers[k] = {
            "codec": r.codec,
            "shape": list(r.shape),
            "original_bytes": orig,
            "stored_bytes": r.stored_bytes,
            "ratio": orig / max(r.stored_bytes, 1),
            "density": r.density,
        }
    return {
        "layers": layers,
        "original_bytes": orig_total,
        "stored_bytes": stored_total,
        "file_bytes": c.size,
        "ratio": orig_total / max(c.size, 1),
    }


def load_model(data: Any, name: str = "<container>") -> Any:
    """A ``Model`` from container bytes: sparse weights go to sparse kernels where their
    density is below the calibrated threshold (``sparse.sparsify``), all else is dense.

    Palettized weights are densified here, once: a per-run codebook look-up costs more than
    the product it feeds (docs/container.md, "Execution").
    """
    from modelloader.api import Model, op_histogram
    from modelloader.compress.sparse import sparsify
    from modelloader.errors import ModelLoaderError
    from modelloader.kernels.cpu import registry
    from modelloader.passes import optimize

    c = read_container(data, name)
    g = c.graph
    _check_names(g, set(), "graph")
    imported_ops = op_histogram(g)
    try:
        _densify_before_batchnorm(g)
        optimize(g, registry)
        decisions = sparsify(g)
        model = Model(g, format="mldc", size_bytes=c.size, source=name, optimize_graph=False)
        model.op_histogram = imported_ops  # the model as stored, not as planned
    except ModelLoaderError:
        raise
    except Exception as e:  # a checked header can still describe a graph that does not plan
        raise GraphStructureError(
            f"{name}: the container's graph is malformed: {type(e).__name__}: {e}"
        ) from e
    info = summary(c)
    for k, d in decisions.items():
        if k in info["layers"]:
            info["layers"][k]["execution"] = d
    model.compression = info
    return model


def _densify_before_batchnorm(g: Graph) -> None:
    """BatchNorm folding rewrites dense weights only: densify sparse ones it will touch."""
    bn_inputs = {n.inputs[0] for n in g.nodes if n.op == "BatchNormalization" and n.inputs}
    for n in g.nodes:
        if n.op == "Conv" and n.outputs and n.outputs[0] in bn_inputs and len(n.inputs) > 1:
            w = g.constants.get(n.inputs[1])
            if isinstance(w, SparseTensor):
                g.constants[n.inputs[1]] = w.to_dense()


def _check_names(g: Graph, outer: set[str], where: str) -> None:
    """Every name a node reads is a graph input, a constant, an earlier output or (in a
    subgraph) visible from the enclosing graph; every graph output is produced."""
    defined = outer | {v.name for v in g.inputs} | set(g.constants)
    produced = {o for n in g.nodes for o in n.outputs if o}
    for n in g.nodes:
        for x in n.inputs:
            if x and x not in defined and x not in produced:
                raise GraphStructureError(
                    f"{where}: {n.label()} reads '{x}', which nothing defines"
                )
        for sub in n.subgraphs():
            _check_names(sub, defined | produced, f"{where}/{n.label()}")
    missing = [o.name for o in g.outputs if o.name not in defined | produced]
    if missing:
        raise GraphStructureError(f"{where}: outputs {missing} are never produced")
    dup = len(produced) != sum(1 for n in g.nodes for o in n.outputs if o)
    if dup or produced & ({v.name for v in g.inputs} | set(g.constants)):
        raise GraphStructureError(f"{where}: a value is produced twice")
