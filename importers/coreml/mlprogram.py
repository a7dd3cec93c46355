"""ML Program (MIL) -> IR: function ``main``, the block specialised for its opset.

Precision: fp16 ML Programs compute in **float32** here. Every FLOAT16 tensor type and
weight is widened to float32 at import (``cast`` to fp16 becomes a no-op); a model
input or output declared float16 keeps that dtype at the boundary. Results are
within coremltools' documented fp16 tolerance (rtol 1e-2 on logits, same top-1) and
usually closer to the source framework than CoreML's own fp16 execution.

Palettized (``constexpr_lut_to_dense``) and sparse (``constexpr_sparse_to_dense``)
weights stay compressed in memory and decompress on each run (see
``kernels/cpu/coreml_ops.py``); quantized weights (``constexpr_affine_dequantize``,
``constexpr_blockwise_shift_scale``) and combinations are decompressed at load.

Nested blocks (``cond``, ``while_loop``) are imported into IR subgraphs through
``MILContext.child``; iOS18 state inputs are kept in ``MILContext.states`` for the state ops
(both in ``mil_ops/control.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from modelloader.errors import ModelFormatError
from modelloader.importers.coreml.common import Builder
from modelloader.importers.coreml.reader import CoreMLFile, protos
from modelloader.ir import Value
from modelloader.ir.builder import run_row

MilFn = Callable[[Any, "MILContext"], None]
MIL_TABLE: dict[str, MilFn] = {}


def mil_op(*names: str) -> Callable[[MilFn], MilFn]:
    """Registers a builder for MIL op types (``"conv"``)."""

    def deco(fn: MilFn) -> MilFn:
        for n in names:
            MIL_TABLE[n] = fn
        return fn

    return deco


_NP = {
    "BOOL": np.bool_,
    "STRING": object,
    "FLOAT16": np.float16,
    "FLOAT32": np.float32,
    "FLOAT64": np.float64,
    "BFLOAT16": ml_dtypes.bfloat16,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "FLOAT8E4M3FN": ml_dtypes.float8_e4m3fn,
    "FLOAT8E5M2": ml_dtypes.float8_e5m2,
}
#: sub-byte types: (bits, signed); decoded to int8/uint8 arrays
_SUBBYTE = {
    "INT4": (4, True),
    "UINT4": (4, False),
    "UINT1": (1, False),
    "UINT2": (2, False),
    "UINT3": (3, False),
    "UINT6": (6, False),
}


def dtype_name(code: int) -> str:
    return protos().MIL_pb2.DataType.Name(code)


def np_dtype(code: int, *, compute: bool = True) -> np.dtype:
    """NumPy dtype of a MIL DataType; float16 widens to float32 when ``compute``."""
    name = dtype_name(code)
    if name in _SUBBYTE:
        return np.dtype(np.int8 if _SUBBYTE[name][1] else np.uint8)
    if name not in _NP:
        raise ModelFormatError(f"unsupported MIL data type {name}")
    dt = np.dtype(_NP[name])
    if compute and dt == np.float16:
        return np.dtype(np.float32)
    return dt


def tensor_shape(vtype: Any) -> tuple[Any, ...] | None:
    """Shape of a ValueType's tensor (None for unknown dims); None when not a tensor."""
    if vtype.WhichOneof("type") != "tensorType":
        return None
    dims: list[Any] = []
    for d in vtype.tensorType.dimensions:
        dims.append(int(d.constant.size) if d.WhichOneof("dimension") == "constant" else None)
    return tuple(dims)


@dataclass
class MILContext(Builder):
    """One MIL block under construction."""

    file: CoreMLFile | None = None
    consts: dict[str, Any] = field(default_factory=dict)  # MIL name -> numpy value
    types: dict[str, tuple[np.dtype, tuple[Any, ...] | None]] = field(default_factory=dict)
    compressed: dict[str, str] = field(default_factory=dict)  # name -> "palettized"/"sparse"
    densify: bool = False
    aliases: dict[str, str] = field(default_factory=dict)  # float16 inputs -> float32 casts
    class_labels: list[Any] | None = None
    classify_outputs: list[str] = field(default_factory=list)
    missing: list[tuple[str, str, int]] = field(default_factory=list)  # ops without a row
    opset: str = ""
    #: iOS18 state inputs: name -> (compute dtype, shape of the wrapped tensor)
    states: dict[str, tuple[np.dtype, tuple[Any, ...]]] = field(default_factory=dict)
    token: str = ""  # ordering token chained through stateful nodes (state reads/writes)
    parent: MILContext | None = None  # the enclosing block's context (nested blocks)

    # -- values ------------------------------------------------------------------
    def decode(self, value: Any) -> Any:
        """A MIL ``Value`` (immediate or blob) as a NumPy array (or list/str)."""
        vt = value.type
        kind = value.WhichOneof("value")
        if vt.WhichOneof("type") == "listType" or vt.WhichOneof("type") == "tupleType":
            if kind == "immediateValue" and value.immediateValue.WhichOneof("value") == "list":
                return [self.decode(v) for v in value.immediateValue.list.values]
            if kind == "immediateValue" and value.immediateValue.WhichOneof("value") == "tuple":
                return [self.decode(v) for v in value.immediateValue.tuple.values]
        if vt.WhichOneof("type") != "tensorType":
            raise ModelFormatError(f"unsupported MIL constant of type {vt.WhichOneof('type')}")
        code = vt.tensorType.dataType
        name = dtype_name(code)
        shape = tensor_shape(vt) or ()
        if any(d is None for d in shape):
            raise ModelFormatError("a MIL constant has an unknown dimension")
        count = int(np.prod(shape, dtype=np.int64))
        raw: Any
        if kind == "blobFileValue":
            if self.file is None:
                raise ModelFormatError("a MIL constant refers to a weight file, but none is open")
            raw = self.file.blob(value.blobFileValue.fileName, int(value.blobFileValue.offset))
        elif kind == "immediateValue":
            tv = value.immediateValue.tensor
            which = tv.WhichOneof("value")
            if which == "bytes":
                raw = tv.bytes.values
            elif which is None:
                raw = b""
            else:
                vals = list(getattr(tv, which).values)
                if name == "STRING":
                    arr = np.array(vals, dtype=object)
                else:
                    arr = np.array(vals, dtype=np_dtype(code, compute=False))
                if arr.size != count:
                    if arr.size == 1:
                        arr = np.full(shape, arr.reshape(()), arr.dtype)
                    else:
                        raise ModelFormatError(
                            f"MIL constant holds {arr.size} values for shape {shape}"
                        )
                return self._widen(arr.reshape(shape))
        else:
            raise ModelFormatError(f"unsupported MIL value kind {kind}")
        if name in _SUBBYTE:
            from modelloader.kernels.cpu.coreml_ops import unpack_bits

            bits, signed = _SUBBYTE[name]
            if len(raw) * 8 < count * bits:
                raise ModelFormatError(
                    f"MIL {name} constant of shape {shape} needs {count * bits} bits, has {len(raw) * 8}"
                )
            return unpack_bits(np.frombuffer(raw, np.uint8), bits, count, signed).reshape(shape)
        dt = np_dtype(code, compute=False)
        if len(raw) != count * dt.itemsize:
            raise ModelFormatError(
                f"MIL {name} constant of shape {shape} needs {count * dt.itemsize} bytes, "
                f"its data has {len(raw)}"
            )
        arr = np.frombuffer(raw, dt).reshape(shape)
        return self._widen(arr)

    @staticmethod
    def _widen(arr: np.ndarray) -> np.ndarray:
        if arr.dtype == np.float16 or arr.dtype == ml_dtypes.bfloat16:
            return arr.astype(np.float32)
        return arr

    def binding(self, op: Any, key: str, index: int = 0) -> Any:
        arg = op.inputs.get(key) if key in op.inputs else None
        if arg is None or len(arg.arguments) <= index:
            return None
        return arg.arguments[index]

    def has(self, op: Any, key: str) -> bool:
        return (key in op.inputs and len(op.inputs[key].arguments) > 0) or (
            key != "name" and key in op.attributes
        )

    def const(self, op: Any, key: str, default: Any = None) -> Any:
        """Input ``key`` as a NumPy value when it is known at load (const/immediate)."""
        b = self.binding(op, key)
        if b is None:
            if key in op.attributes:  # iOS16 constexpr ops carry parameters as attributes
                return self.decode(op.attributes[key])
            return default
        if b.WhichOneof("binding") == "value":
            return self.decode(b.value)
        return self.consts.get(b.name, default)

    def need(self, op: Any, key: str) -> Any:
        v = self.const(op, key)
        if v is None:
            raise ModelFormatError(
                f"MIL {op.type}: input '{key}' must be a constant known at load time"
            )
        return v

    def arg(self, op: Any, key: str, index: int = 0) -> str:
        """IR value name of input ``key`` ("" when absent); immediates become constants."""
        b = self.binding(op, key, index)
        if b is None:
            return ""
        if b.WhichOneof("binding") == "value":
            return self.constant(self.decode(b.value), key)
        name = self.aliases.get(b.name, b.name)
        if name in self.consts and name not in self.constants:
            self.constants[name] = np.asarray(self.consts[name])
        return name

    def args(self, op: Any, key: str) -> list[str]:
        if key not in op.inputs:
            return []
        return [self.arg(op, key, i) for i in range(len(op.inputs[key].arguments))]

    def out(self, op: Any, i: int = 0) -> str:
        return op.outputs[i].name

    def dtype_of(self, name: str) -> np.dtype | None:
        t = self.types.get(name)
        return t[0] if t else None

    def shape_of(self, name: str) -> tuple[Any, ...] | None:
        t = self.types.get(name)
        return t[1] if t else None

    def in_rank(self, op: Any, key: str = "x") -> int:
        b = self.binding(op, key)
        if b is None:
            raise ModelFormatError(f"MIL {op.type}: missing input '{key}'")
        if b.WhichOneof("binding") == "value":
            return len(tensor_shape(b.value.type) or ())
        shape = self.shape_of(b.name)
        if shape is None:
            raise ModelFormatError(f"MIL {op.type}: rank of '{b.name}' is unknown")
        return len(shape)

    def set_const(self, name: str, value: Any) -> None:
        self.consts[name] = value

    # -- blocks ------------------------------------------------------------------
    def import_ops(self, operations: Any) -> None:
        """Adds a block's operations; op types without a row are collected in ``missing``."""
        for op in operations:
            for o in op.outputs:
                if o.type.WhichOneof("type") == "tensorType":
                    self.types[o.name] = (
                        np_dtype(o.type.tensorType.dataType),
                        tensor_shape(o.type),
                    )
            if op.type == "const":
                self.set_const(op.outputs[0].name, self.decode(op.attributes["val"]))
                continue
            row = MIL_TABLE.get(op.type)
            if row is None:
                self.missing.append((op.type, f"coreml mlprogram {self.opset}", 0))
                continue
            run_row(self.missing, row, op, self)

    def child(self) -> MILContext:
        """The context of a nested block (``cond`` branches, ``while_loop`` bodies), built
        into its own nodes and constants: an IR subgraph that reads the enclosing blocks'
        values by name. MIL names are unique program-wide, so consts and types are shared."""
        return MILContext(
            prefix=self.prefix,
            counter=self.counter,
            file=self.file,
            consts=self.consts,
            types=self.types,
            compressed=self.compressed,
            densify=self.densify,
            aliases=dict(self.aliases),
            missing=self.missing,
            opset=self.opset,
            states=self.states,
            parent=self,
        )


def _block(fn: Any, name: str) -> Any:
    specs = fn.block_specializations
    if fn.opset in specs:
        return specs[fn.opset]
    if len(specs) == 1:
        return next(iter(specs.values()))
    raise ModelFormatError(
        f"{name}: function has no block for its opset {fn.opset!r} (has {sorted(specs)})"
    )


def _import_program(
    spec: Any,
    file: CoreMLFile,
    missing: list[tuple[str, str, int]],
    densify: bool,
    counter: list[int],
    prefix: str,
    aliases: dict[str, str],
) -> tuple[list[Value], list[str], MILContext, str]:
    """Builds the IR of ``main``; returns (inputs, output names, context, opset)."""
    from modelloader.importers.coreml import mil_ops  # noqa: F401  (registers the rows)

    prog = spec.mlProgram
    if not prog.functions:
        raise ModelFormatError(f"{file.name}: ML Program has no functions")
    fname = "main" if "main" in prog.functions else sorted(prog.functions)[0]
    fn = prog.functions[fname]
    block = _block(fn, file.name)
    ctx = MILContext(
        prefix=prefix, counter=counter, file=file, densify=densify, missing=missing, opset=fn.opset
    )
    ctx.aliases.update(aliases)
    inputs: list[Value] = []
    for nv in fn.inputs:
        if nv.type.WhichOneof("type") == "stateType":  # iOS18 state: not a feature input
            wrapped = nv.type.stateType.wrappedType
            shape = tensor_shape(wrapped)
            if shape is None or any(d is None for d in shape):
                raise ModelFormatError(f"{file.name}: state '{nv.name}' needs a static shape")
            ctx.states[nv.name] = (np_dtype(wrapped.tensorType.dataType), shape)
            continue
        code = nv.type.tensorType.dataType
        dt = np_dtype(code, compute=False)
        shape = tensor_shape(nv.type)
        ctx.types[nv.name] = (np_dtype(code), shape)
        inputs.append(Value(nv.name, dt, shape))
        if nv.name in ctx.aliases:  # image input, already preprocessed
            if dt == np.float16:
                ctx.aliases[nv.name] = ctx.cast(ctx.aliases[nv.name], np.float32)
        elif dt == np.float16:  # the boundary keeps the declared dtype; compute widens
            ctx.aliases[nv.name] = ctx.tmp("Cast", [nv.name], hint="in32", to=1)
    ctx.import_ops(block.operations)
    return inputs, list(block.outputs), ctx, fn.opset


def import_mlprogram(
    spec: Any,
    file: CoreMLFile,
    missing: list[tuple[str, str, int]],
    counter: list[int],
    prefix: str,
    densify: bool,
) -> Any:
    """An ``mlProgram`` model as a ``Part`` named by its feature descriptions."""
    from modelloader.importers.coreml.importer import Part, feature_value, image_preprocess

    desc = spec.description
    pre = Builder(prefix, counter=counter)
    graph_inputs: list[Value] = []
    aliases: dict[str, str] = {}
    for f in desc.input:
        v = feature_value(f)
        graph_inputs.append(v)
        if f.type.WhichOneof("Type") == "imageType":
            aliases[f.name] = image_preprocess(pre, f, 4)
    fn_inputs, outs, ctx, opset = _import_program(
        spec, file, missing, densify, counter, prefix, aliases
    )
    b = Builder(prefix, counter=counter)
    b.nodes = pre.nodes + ctx.nodes
    b.constants = {**pre.constants, **ctx.constants}
    outputs: list[Value] = []
    labels = ctx.class_labels
    for i, f in enumerate(desc.output):
        v = feature_value(f)
        outputs.append(v)
        src = outs[i] if i < len(outs) else f.name
        if ctx.classify_outputs and f.name in ctx.classify_outputs:
            continue
        if src in ctx.consts and src not in b.constants:
            b.constants[src] = np.asarray(ctx.consts[src])
        want = v.dtype
        have = ctx.dtype_of(src)
        if want is not None and have is not None and want != have and want.kind != "O":
            if src == f.name:  # computed under the feature's own name (a float16 output)
                src = _rename(b, src, b.fresh("out"))
            b.node("Cast", [src], [f.name], to=_onnx(want))
        elif src != f.name:
            b.node("Identity", [src], [f.name])
    del fn_inputs
    return Part(b, graph_inputs, outputs, dict(ctx.compressed), labels, opset)


def _rename(b: Builder, old: str, new: str) -> str:
    """Renames value ``old`` to ``new`` in ``b`` (nodes, constants, nested subgraphs' reads;
    MIL names are unique program-wide); returns ``new``."""
    if old in b.constants:
        b.constants[new] = b.constants.pop(old)
    nodes = list(b.nodes)
    while nodes:
        n = nodes.pop()
        n.inputs = [new if x == old else x for x in n.inputs]
        n.outputs = [new if x == old else x for x in n.outputs]
        for g in n.subgraphs():
            nodes.extend(g.nodes)
    return new


def _onnx(dt: np.dtype) -> int:
    from modelloader.ir.builder import onnx_dtype

    return onnx_dtype(dt)
