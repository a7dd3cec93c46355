"""ONNX protobuf -> ``modelloader.ir``.

Parses the ModelProto, decodes types, attributes and initializers, inlines
model-local functions and schema function bodies for ops without a kernel, and runs
each node through the op table (``table.TABLE``) so the IR is in newest-opset form.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import numpy_helper

from modelloader.errors import ModelFormatError, UnsupportedOpError
from modelloader.importers.onnx import ops as _ops  # noqa: F401  (registers the table rows)
from modelloader.importers.onnx.table import TABLE, ImportContext
from modelloader.importers.onnx.wire import Span, strip_weights
from modelloader.ir import Graph, Node, Value, ValueKind
from modelloader.kernels.registry import Registry

DEFAULT_DOMAINS = ("", "ai.onnx")


def release_pages(buffer: Any, offset: int = 0, length: int | None = None) -> None:
    """Drops a read-only file mapping's resident pages (they fault back in on use).

    Keeps peak memory near one copy of the weights: bytes already copied out, or
    no longer referenced after graph rewrites, stop counting against the process.
    """
    if not isinstance(buffer, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    start = -(-offset // page) * page
    end = len(buffer) if length is None else offset + length
    end = end // page * page if length is not None else end
    if end > start:
        buffer.madvise(mmap.MADV_DONTNEED, start, end - start)


@dataclass
class ParsedModel:
    """A decoded ModelProto whose large initializers carry no data, plus where that
    data lies in ``buffer`` (the model file's bytes, usually a read-only mmap)."""

    proto: onnx.ModelProto
    buffer: Any
    spans: dict[str, Span]


def parse_model(data: bytes | memoryview | mmap.mmap, name: str = "<bytes>") -> ParsedModel:
    """Decodes the protobuf; raises ModelFormatError for anything that is not a model.

    Initializer bytes are not copied into the protobuf arena: ``strip_weights``
    removes them first, and the importer views them in ``data`` directly.
    """
    if len(data) == 0:
        raise ModelFormatError(f"{name}: file is empty; expected an ONNX model")
    proto = onnx.ModelProto()
    try:
        light, spans = strip_weights(memoryview(data))
        proto.ParseFromString(light)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise ModelFormatError(
            f"{name}: not a valid ONNX model (protobuf decode failed: {e}); "
            "the file may be truncated or of another format"
        ) from None
    if proto.ir_version <= 0 or not proto.HasField("graph"):
        raise ModelFormatError(
            f"{name}: parsed as protobuf but holds no ONNX graph (ir_version "
            f"{proto.ir_version}); is this really an .onnx file?"
        )
    return ParsedModel(proto, data, spans)


def np_dtype(elem_type: int) -> np.dtype:
    if elem_type == onnx.TensorProto.STRING:
        return np.dtype(object)
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def value_from_proto(vi: onnx.ValueInfoProto) -> Value:
    v = Value(vi.name)
    _fill_type(v, vi.type)
    return v


def _fill_type(v: Value, tp: onnx.TypeProto) -> None:
    which = tp.WhichOneof("value")
    if which == "tensor_type" or which == "sparse_tensor_type":
        tt = getattr(tp, which)
        if tt.elem_type:
            v.dtype = np_dtype(tt.elem_type)
        if tt.HasField("shape"):
            v.shape = tuple(
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in tt.shape.dim
            )
    elif which == "sequence_type":
        inner = Value(v.name)
        _fill_type(inner, tp.sequence_type.elem_type)
        v.kind, v.dtype, v.shape, v.elem_kind = (
            ValueKind.SEQUENCE,
            inner.dtype,
            inner.shape,
            inner.kind,
        )
    elif which == "optional_type":
        inner = Value(v.name)
        _fill_type(inner, tp.optional_type.elem_type)
        v.kind, v.dtype, v.shape, v.elem_kind = (
            ValueKind.OPTIONAL,
            inner.dtype,
            inner.shape,
            inner.kind,
        )
    elif which == "map_type":
        v.kind = ValueKind.MAP


class _Importer:
    def __init__(self, proto: onnx.ModelProto, base_dir: Path | None, registry: Registry) -> None:
        self.proto = proto
        self.base_dir = base_dir
        self.registry = registry
        self.opsets = {(o.domain or "ai.onnx"): o.version for o in proto.opset_import}
        self.functions = {(f.domain, f.name): f for f in proto.functions}
        self.ctx = ImportContext(self.opsets)
        self.missing: list[tuple[str, str, int]] = []
        self._inline_counter = 0
        self.spans: dict[str, Span] = {}
        self.buffer: Any = b""
        self.external_files: set[str] = set()

    # -- tensors ---------------------------------------------------------------------
    def tensor(self, t: onnx.TensorProto) -> np.ndarray:
        span = self.spans.get(t.name)
        if span is not None and not t.raw_data and t.data_location != onnx.TensorProto.EXTERNAL:
            return self._file_tensor(t, span)
        if t.data_location == onnx.TensorProto.EXTERNAL:
            return self._external_tensor(t)
        if t.raw_data and t.data_type not in (onnx.TensorProto.STRING,):
            dtype = np_dtype(t.data_type)
            if t.data_type in _PACKED_4BIT:
                return numpy_helper.to_array(t)
            arr = np.frombuffer(t.raw_data, dtype=dtype)
            return arr.reshape(tuple(t.dims))
        arr = numpy_helper.to_array(t)
        if arr.dtype.kind in "SU":
            arr = arr.astype(object)
        if arr.dtype == object:
            arr = (
                np.vectorize(lambda s: s.decode() if isinstance(s, bytes) else s, otypes=[object])(
                    arr
                )
                if arr.size
                else arr
            )
        return arr

    def _file_tensor(self, t: onnx.TensorProto, span: Span) -> np.ndarray:
        """A view of an initializer's raw_data in the model file (copied if misaligned)."""
        dtype = np_dtype(t.data_type)
        if t.data_type in _PACKED_4BIT or dtype.kind == "O":
            full = onnx.TensorProto()
            full.CopyFrom(t)
            full.raw_data = bytes(self.buffer[span.offset : span.offset + span.length])
            return numpy_helper.to_array(full)
        shape = tuple(t.dims)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize != span.length:
            raise ModelFormatError(
                f"initializer '{t.name}' declares shape {shape} ({count * dtype.itemsize} bytes) "
                f"but holds {span.length} bytes; the model is corrupt"
            )
        arr = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=span.offset).reshape(
            shape
        )
        if arr.flags.aligned:
            return arr
        arr = arr.copy()
        release_pages(self.buffer, span.offset, span.length)
        return arr

    def _external_tensor(self, t: onnx.TensorProto) -> np.ndarray:
        info = {e.key: e.value for e in t.external_data}
        if self.base_dir is None:
            raise ModelFormatError(
                f"tensor '{t.name}' stores its data in external file '{info.get('location')}', "
                "but the model was given as bytes; load it from a path so the file can be found"
            )
        loc = info.get("location", "")
        path = (self.base_dir / loc).resolve()
        if self.base_dir.resolve() not in path.parents and path != self.base_dir.resolve():
            raise ModelFormatError(
                f"tensor '{t.name}': external data path '{loc}' escapes the model directory"
            )
        if not path.is_file():
            raise ModelFormatError(
                f"tensor '{t.name}': external data file '{path}' not found; keep it beside the model"
            )
        dtype = np_dtype(t.data_type)
        offset = int(info.get("offset", 0))
        count = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
        nbytes = count * dtype.itemsize
        size = path.stat().st_size
        if "length" in info and int(info["length"]) < nbytes or offset + nbytes > size:
            raise ModelFormatError(
                f"tensor '{t.name}': external data ({nbytes} bytes at offset {offset}) runs past "
                f"the end of '{path.name}' ({size} bytes); the file is truncated or mismatched"
            )
        self.external_files.add(str(path))
        mm = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))
        return np.asarray(mm).reshape(tuple(t.dims)) if count else np.zeros(tuple(t.dims), dtype)

    # -- attributes ------------------------------------------------------------------
    def attr(self, a: onnx.AttributeProto, outer: set[str]) -> Any:
        T = onnx.AttributeProto
        if a.type == T.FLOAT:
            return float(a.f)
        if a.type == T.INT:
            return int(a.i)
        if a.type == T.STRING:
            return a.s.decode("utf-8", errors="surrogateescape")
        if a.type == T.TENSOR:
            return self.tensor(a.t)
        if a.type == T.GRAPH:
            return self.graph(a.g, outer)
        if a.type == T.SPARSE_TENSOR:
            return _sparse_to_dense(a.sparse_tensor, self)
        if a.type == T.TYPE_PROTO:
            return a.tp
        if a.type == T.FLOATS:
            return [float(x) for x in a.floats]
        if a.type == T.INTS:
            return [int(x) for x in a.ints]
        if a.type == T.STRINGS:
            return [s.decode("utf-8", errors="surrogateescape") for s in a.strings]
        if a.type == T.TENSORS:
            return [self.tensor(t) for t in a.tensors]
        if a.type == T.GRAPHS:
            return [self.graph(g, outer) for g in a.graphs]
        if a.type == T.TYPE_PROTOS:
            return list(a.type_protos)
        raise ModelFormatError(f"attribute '{a.name}' has unknown type {a.type}")

    # -- graphs ----------------------------------------------------------------------
    def graph(self, g: onnx.GraphProto, outer: set[str] | None = None) -> Graph:
        outer = outer or set()
        ir = Graph(name=g.name or "graph")
        for t in g.initializer:
            ir.constants[t.name] = self.tensor(t)
        for st in g.sparse_initializer:
            ir.constants[st.values.name] = _sparse_to_dense(st, self)
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            v = value_from_proto(vi)
            known = ir.values.get(v.name)
            if known is None or (known.shape is None and v.shape is not None):
                ir.values[v.name] = v
        ir.inputs = [ir.values[vi.name] for vi in g.input if vi.name not in ir.constants]
        ir.outputs = [ir.values[vi.name] for vi in g.output]
        scope = outer | {v.name for v in ir.inputs} | set(ir.constants)
        for n in g.node:
            for node in self.node(n, scope):
                if node.op == "Constant" and node.domain in DEFAULT_DOMAINS and node.outputs:
                    ir.constants[node.outputs[0]] = _constant_value(node)
                else:
                    ir.nodes.append(node)
                scope.update(o for o in node.outputs if o)
        ir.constants.update(self.ctx.constants)
        self.ctx.constants.clear()
        return ir

    def node(self, n: onnx.NodeProto, scope: set[str]) -> list[Node]:
        domain = "" if n.domain in DEFAULT_DOMAINS else n.domain
        attrs = {a.name: self.attr(a, scope) for a in n.attribute}
        node = Node(n.op_type, list(n.input), list(n.output), attrs, domain, n.name)
        if (n.domain, n.op_type) in self.functions:
            return self._inline(node, self.functions[(n.domain, n.op_type)], scope)
        builder = TABLE.get((domain, node.op))
        if builder is None:
            body = self._schema_function(node)
            if body is not None:
                return self._inline(node, body, scope)
            self.missing.append((node.op, domain, self.ctx.opset(domain)))
            return [node]
        rejected = len(self.ctx.missing)
        out = builder(node, self.ctx)
        if len(self.ctx.missing) > rejected:
            return out
        for o in out:
            if not self.registry.supports(o.op, o.domain) and (o.domain, o.op) != ("", "Constant"):
                self.missing.append((o.op, o.domain, self.ctx.opset(o.domain)))
        return out

    def _schema_function(self, node: Node) -> onnx.FunctionProto | None:
        """The op schema's function body (for ops defined as functions of others)."""
        version = self.ctx.opset(node.domain)
        try:
            schema = onnx.defs.get_schema(node.op, version, node.domain)
        except onnx.defs.SchemaError:
            return None
        return schema.function_body if schema.has_function else None

    def _inline(self, call: Node, fn: onnx.FunctionProto, scope: set[str]) -> list[Node]:
        """Expands a function call into its body with fresh internal names."""
        self._inline_counter += 1
        prefix = f"__fn{self._inline_counter}_"
        rename = dict(zip(fn.input, call.inputs))
        rename.update(zip(fn.output, call.outputs))
        for name in fn.input[len(call.inputs) :]:
            rename[name] = ""
        attr_defaults = {a.name: a for a in fn.attribute_proto}
        saved = dict(self.opsets)
        for o in fn.opset_import:
            self.opsets.setdefault(o.domain or "ai.onnx", o.version)
        out: list[Node] = []
        local_scope = set(scope)
        for n in fn.node:
            m = onnx.NodeProto()
            m.CopyFrom(n)
            del m.attribute[:]
            for a in n.attribute:
                if a.ref_attr_name:
                    if a.ref_attr_name in call.attrs:
                        m.attribute.append(_attr_proto(a.name, call.attrs[a.ref_attr_name], a.type))
                    elif a.ref_attr_name in attr_defaults:
                        d = onnx.AttributeProto()
                        d.CopyFrom(attr_defaults[a.ref_attr_name])
                        d.name = a.name
                        m.attribute.append(d)
                else:
                    m.attribute.append(a)
            m.input[:] = [rename.get(i, prefix + i) if i else "" for i in n.input]
            m.output[:] = [rename.get(o, prefix + o) if o else "" for o in n.output]
            for node in self.node(m, local_scope):
                out.append(node)
                local_scope.update(node.outputs)
        self.opsets.clear()
        self.opsets.update(saved)
        return out


_PACKED_4BIT = {
    getattr(onnx.TensorProto, n)
    for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
    if hasattr(onnx.TensorProto, n)
}


def _attr_proto(name: str, value: Any, type_: int) -> onnx.AttributeProto:
    if isinstance(value, np.ndarray) and type_ == onnx.AttributeProto.TENSOR:
        return onnx.helper.make_attribute(name, numpy_helper.from_array(value))
    if isinstance(value, Graph):
        raise ModelFormatError("graph attributes passed into functions are not supported")
    return onnx.helper.make_attribute(name, value, attr_type=type_ or None)


def _sparse_to_dense(st: onnx.SparseTensorProto, imp: _Importer) -> np.ndarray:
    values = imp.tensor(st.values)
    idx = imp.tensor(st.indices).astype(np.int64)
    dims = tuple(st.dims)
    dense = np.zeros(dims, dtype=values.dtype)
    if idx.ndim == 1:
        dense.reshape(-1)[idx] = values
    else:
        dense[tuple(idx.T)] = values
    return dense


def _constant_value(node: Node) -> Any:
    ((key, v),) = node.attrs.items()
    if key == "value" or key == "sparse_value":
        return np.asarray(v)
    if key == "value_float":
        return np.array(v, dtype=np.float32)
    if key == "value_floats":
        return np.array(v, dtype=np.float32)
    if key == "value_int":
        return np.array(v, dtype=np.int64)
    if key == "value_ints":
        return np.array(v, dtype=np.int64)
    if key == "value_string":
        return np.array(v, dtype=object)
    if key == "value_strings":
        return np.array(v, dtype=object)
    raise ModelFormatError(f"Constant node '{node.name}' has unknown attribute '{key}'")


def import_model(
    parsed: ParsedModel, base_dir: Path | None, registry: Registry
) -> tuple[Graph, dict[str, int]]:
    """Builds the IR graph; raises UnsupportedOpError listing every missing op."""
    proto = _infer_shapes(parsed.proto)
    imp = _Importer(proto, base_dir, registry)
    imp.spans, imp.buffer = parsed.spans, parsed.buffer
    graph = imp.graph(proto.graph)
    if imp.missing or imp.ctx.missing:
        raise UnsupportedOpError(imp.missing + imp.ctx.missing)
    graph.metadata = {p.key: p.value for p in proto.metadata_props}
    graph.metadata.update(
        producer=proto.producer_name,
        producer_version=proto.producer_version,
        ir_version=proto.ir_version,
        external_files=sorted(imp.external_files),
    )
    return graph, dict(imp.opsets)


def _infer_shapes(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Adds value_info from onnx's shape inference (cheap: large weights were stripped).

    A model inference cannot handle is kept as is; nothing depends on the result
    except fusion decisions, which then stay conservative.
    """
    try:
        return onnx.shape_inference.infer_shapes(proto, check_type=False, strict_mode=False)
    except Exception:  # noqa: BLE001  best-effort, see above
        return proto


def used_ops(graph: Graph) -> Iterable[tuple[str, str]]:
    return ((n.domain, n.op) for n in graph.walk())
