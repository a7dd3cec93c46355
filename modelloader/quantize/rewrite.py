"""Graph rewrites that quantize a float IR graph, one handler per op family.

* ``static``: calibrated int8 activations and weights written as ONNX QDQ
  (``QuantizeLinear -> DequantizeLinear`` on activations, ``DequantizeLinear`` of int8 weights
  and int32 biases); ``modelloader.qpasses`` turns the pattern back into integer ops at load.
* ``dynamic``: ``DynamicQuantizeLinear`` + ``MatMulInteger``/``ConvInteger`` with int8 weights.
* ``float16``: float16 weights (cast back to float32 at load), or float16 compute with float32
  inputs and outputs.

Every rewrite returns a new graph (the input is not modified) and the list of ``Layer``s it
quantized, each naming the value to compare against the float graph.
"""

from __future__ import annotations

import fnmatch
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from modelloader.executor import topological_order
from modelloader.export import channel_shuffle
from modelloader.ir import Graph, Node, Value
from modelloader.quantize.config import QuantConfig

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)


@dataclass(frozen=True)
class Layer:
    """One quantized op: its name, op type, and the value holding its result in the float
    graph (``float_value``) and in the quantized graph (``quant_value``)."""

    name: str
    op: str
    float_value: str
    quant_value: str


def clone(g: Graph) -> Graph:
    """A copy whose node list, nodes, constants table and value table can be edited freely."""
    nodes = [
        replace(n, inputs=list(n.inputs), outputs=list(n.outputs), attrs=dict(n.attrs))
        for n in g.nodes
    ]
    return replace(
        g,
        inputs=list(g.inputs),
        outputs=list(g.outputs),
        nodes=nodes,
        constants=dict(g.constants),
        values=dict(g.values),
        metadata=dict(g.metadata),
    )


def unfuse(g: Graph) -> Graph:
    """Expands ``modelloader`` FusedConv/FusedGemm/FusedBatchNorm (an optimised graph) back
    to standard ops."""
    out: list[Node] = []
    k = 0
    for n in g.nodes:
        if n.domain != "modelloader" or n.op not in ("FusedConv", "FusedGemm", "FusedBatchNorm"):
            out.append(n)
            continue
        attrs = dict(n.attrs)
        act = attrs.pop("activation", "")
        params = attrs.pop("activation_params", [])
        groups = attrs.pop("shuffle", 0)
        op = "BatchNormalization" if n.op == "FusedBatchNorm" else n.op[len("Fused") :]
        ins = list(n.inputs)
        z = ins[3] if op == "Conv" and len(ins) > 3 else ""
        ins = ins[:5] if op == "BatchNormalization" else ins[:3]
        y = shuffled = n.outputs[0]
        if groups:
            y = f"{shuffled}__unshuffled"
        cur = f"{y}__unfused{k}"
        k += 1
        out.append(Node(op, ins, [cur], attrs, name=n.name))
        if z:
            nxt = f"{y}__unfused{k}"
            k += 1
            out.append(Node("Add", [cur, z], [nxt]))
            cur = nxt
        if act:
            a: dict = {}
            extra: list[str] = []
            if act == "LeakyRelu":
                a = {"alpha": params[0]}
            elif act == "HardSigmoid":
                a = {"alpha": params[0], "beta": params[1]}
            elif act == "Clip":
                for j, v in enumerate(params[:2]):
                    name = f"{y}__clip{j}"
                    g.constants[name] = np.asarray(v, np.float32)
                    extra.append(name)
            out.append(Node(act, [cur, *extra], [y], a))
        else:
            out[-1].outputs[0] = y
        if groups:
            out += channel_shuffle(
                y, shuffled, groups, g.constants[n.inputs[1]].shape[0], _i64(g), _fresh(shuffled)
            )
    g.nodes[:] = out
    return g


def _i64(g: Graph) -> Any:
    def const(values: Any) -> str:
        name = f"__shuffle_shape{len(g.constants)}"
        while name in g.constants:
            name += "_"
        g.constants[name] = np.asarray(values, np.int64).reshape(-1)
        return name

    return const


def _fresh(base: str) -> Any:
    count = itertools.count()
    return lambda hint: f"{base}__{hint}{next(count)}"


def _layer_id(n: Node) -> str:
    return n.name or (n.outputs[0] if n.outputs else n.op)


def _excluded(n: Node, patterns: tuple[str, ...]) -> bool:
    keys = [_layer_id(n), n.outputs[0] if n.outputs else "", n.op]
    return any(fnmatch.fnmatchcase(k, p) for p in patterns for k in keys if k)


def _consumers(g: Graph) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = {}
    for n in g.nodes:
        for i in n.inputs:
            if i:
                out.setdefault(i, []).append(n)
        for sub in n.subgraphs():
            for r in sub.outer_refs():
                out.setdefault(r, []).append(n)
    return out


def _is_f32_const(g: Graph, name: str) -> bool:
    v = g.constants.get(name) if name else None
    return v is not None and np.asarray(v).dtype == F32


def _sorted(g: Graph) -> None:
    known = {v.name for v in g.inputs} | set(g.constants)
    g.nodes[:] = topological_order(g, known)


class _Names:
    def __init__(self, g: Graph) -> None:
        self.g, self.k = g, 0

    def fresh(self, hint: str) -> str:
        self.k += 1
        return f"{hint}__q{self.k}"

    def const(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.g.constants[name] = value
        self.g.values[name] = Value(name, value.dtype, tuple(value.shape))
        return name


# --------------------------------------------------------------------------- weights


def quantize_weight(
    w: np.ndarray, axis: int | None, dtype: type = np.int8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric weight quantization: (q, scale float32, zero point) per tensor (axis None) or
    per slice along ``axis``. int8: [-127, 127], zero point 0; uint8: zero point 128."""
    w = np.asarray(w, np.float32)
    if axis is None:
        amax = np.asarray(np.abs(w).max(initial=0.0), np.float32)
    else:
        red = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        amax = np.abs(w).max(axis=red, initial=0.0).astype(np.float32)
    scale = np.where(amax > 0, amax / np.float32(127.0), np.float32(1.0)).astype(np.float32)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis % w.ndim] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127)
    zp0 = 128 if dtype == np.uint8 else 0
    qv = (q + zp0).astype(dtype)
    return qv, scale, np.full(scale.shape, zp0, dtype)


def activation_params(lo: float, hi: float, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale float32, zero point) covering [lo, hi] (and 0): uint8 asymmetric or int8 symmetric."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        s = max(abs(lo), abs(hi)) / 127.0
        return np.asarray(s if s > 0 else 1.0, np.float32), np.asarray(0, np.int8)
    s = (hi - lo) / 255.0
    if s <= 0:
        return np.asarray(1.0, np.float32), np.asarray(0, np.uint8)
    zp = int(np.clip(np.rint(-lo / np.float32(s)), 0, 255))
    return np.asarray(s, np.float32), np.asarray(zp, np.uint8)


# --------------------------------------------------------------------------- static (QDQ)

#: op -> indices of the float activation inputs it quantizes
_STATIC: dict[str, Callable[[Node], list[int]]] = {
    "Conv": lambda n: [0],
    "Gemm": lambda n: [0],
    "MatMul": lambda n: [0],
    "Add": lambda n: [0, 1],
    "Mul": lambda n: [0, 1],
    "AveragePool": lambda n: [0],
    "GlobalAveragePool": lambda n: [0],
    "Concat": lambda n: list(range(len(n.inputs))),
}
#: ops whose output takes the input's scale and zero point (values only move)
_PASS = frozenset(
    {"MaxPool", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Relu", "Identity"}
)
_FUSE_ACT = frozenset({"Conv", "Gemm", "MatMul", "Add"})


def _static_ok(g: Graph, n: Node) -> bool:
    if n.domain:
        return False
    if n.op == "Conv":
        return (
            len(n.inputs) > 1
            and _is_f32_const(g, n.inputs[1])
            and np.ndim(g.constants[n.inputs[1]]) >= 3
        )
    if n.op == "Gemm":
        if float(n.attrs.get("beta", 1.0)) != 1.0 or not _is_f32_const(g, n.inputs[1]):
            return False
        if np.ndim(g.constants[n.inputs[1]]) != 2:
            return False
        c = n.inputs[2] if len(n.inputs) > 2 else ""
        return not c or (
            _is_f32_const(g, c)
            and np.ndim(g.constants[c]) <= 1
            or (_is_f32_const(g, c) and np.shape(g.constants[c])[0] == 1)
        )
    if n.op == "MatMul":
        return _is_f32_const(g, n.inputs[1]) and np.ndim(g.constants[n.inputs[1]]) == 2
    if n.op in ("Add", "Mul", "Concat"):
        return all(i and i not in g.constants for i in n.inputs)
    if n.op == "MaxPool":
        return len([o for o in n.outputs if o]) == 1
    return True


@dataclass
class StaticPlan:
    """Which nodes become quantized layers, their fused activations, and the activation
    tensors to calibrate (``shared`` maps pass-through outputs to the tensor whose params they use)."""

    layers: list[tuple[Node, Node | None]]
    tensors: list[str]
    shared: dict[str, str]


def _not_activations(g: Graph) -> set[str]:
    """Tensors that are no float activations: those of a known non-float32 dtype, and shape
    arithmetic (outputs of Shape/Size and of nodes computing only from those), which may be
    float on the way (a Cast, a Div) but must stay exact. ``g`` is topologically sorted."""
    out = {k for k, v in g.values.items() if v.dtype is not None and v.dtype != np.float32}
    derived: set[str] = set()
    for n in g.nodes:
        live = [i for i in n.inputs if i and i not in g.constants]
        if n.op in ("Shape", "Size") or (live and all(i in derived for i in live)):
            derived.update(o for o in n.outputs if o)
    return out | derived


def plan_static(g: Graph, config: QuantConfig) -> StaticPlan:
    _sorted(g)
    skip = _not_activations(g)
    cons = _consumers(g)
    outputs = {v.name for v in g.outputs}
    layers: list[tuple[Node, Node | None]] = []
    tensors: list[str] = []
    shared: dict[str, str] = {}
    quantized: set[str] = set()

    def add(t: str) -> None:
        if t not in quantized:
            quantized.add(t)
            tensors.append(t)

    for n in g.nodes:
        if any(t in skip for t in (*n.inputs, *n.outputs)):
            continue
        if n.op in _STATIC and _static_ok(g, n) and not _excluded(n, config.exclude):
            act = None
            users = cons.get(n.outputs[0], [])
            if n.op in _FUSE_ACT and len(users) == 1 and n.outputs[0] not in outputs:
                u = users[0]
                if (
                    not u.domain
                    and (
                        u.op == "Relu"
                        or u.op == "Clip"
                        and all(i in g.constants for i in u.inputs[1:] if i)
                    )
                    and not _excluded(u, config.exclude)
                ):
                    act = u
            for i in _STATIC[n.op](n):
                add(n.inputs[i])
            add((act or n).outputs[0])
            layers.append((n, act))
        elif (
            n.op in _PASS
            and not n.domain
            and n.inputs[0] in quantized
            and _static_ok(g, n)
            and not _excluded(n, config.exclude)
            and n.outputs[0] not in quantized
        ):
            src = shared.get(n.inputs[0], n.inputs[0])
            shared[n.outputs[0]] = src
            quantized.add(n.outputs[0])
            layers.append((n, None))
    calib = [t for t in tensors if t not in shared]
    return StaticPlan(layers, calib, shared)


def unbounded_layers(plan: StaticPlan, ranges: dict[str, tuple[float, float]]) -> list[str]:
    """Layers of ``plan`` that would quantize a tensor whose calibration range is not finite
    (an attention mask's -inf, say): no int8 scale covers it, so they stay in float."""

    def bad(t: str) -> bool:
        lo, hi = ranges.get(plan.shared.get(t, t), (0.0, 0.0))
        return not (math.isfinite(lo) and math.isfinite(hi))

    out = []
    for n, act in plan.layers:
        ins = [n.inputs[i] for i in _STATIC[n.op](n)] if n.op in _STATIC else []
        if any(bad(t) for t in [*ins, (act or n).outputs[0]]):
            out.append(_layer_id(n))
    return out


def static(
    g: Graph,
    plan: StaticPlan,
    ranges: dict[str, tuple[float, float]],
    config: QuantConfig,
) -> tuple[Graph, list[Layer]]:
    """The QDQ graph for ``plan`` with activation ``ranges``."""
    orig, g = g, clone(g)
    same = {id(a): b for a, b in zip(orig.nodes, g.nodes)}
    plan_layers = [(same[id(n)], same[id(a)] if a else None) for n, a in plan.layers]
    names = [_layer_id(n) for n, _ in plan.layers]
    nm = _Names(g)
    params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for t in plan.tensors:
        lo, hi = ranges.get(t, (0.0, 0.0))
        params[t] = activation_params(lo, hi, config.symmetric)
    for t, src in plan.shared.items():
        params[t] = params[src]
    inputs = {v.name for v in g.inputs}
    producer = {o: n for n in g.nodes for o in n.outputs if o}
    x_scale = {id(n): params[n.inputs[0]][0] for n, _ in plan_layers if n.inputs[0] in params}
    new_nodes: list[Node] = []
    renamed: dict[str, str] = {}  # graph-input tensors: consumers read the DQ output instead
    for t in list(params):
        s, zp = params[t]
        sn, zn = nm.const(s, f"{t}_scale"), nm.const(zp, f"{t}_zero_point")
        tq = nm.fresh(f"{t}_quantized")
        if t in inputs:
            src, dq = t, nm.fresh(f"{t}_dequantized")
            renamed[t] = dq
        else:  # the producer now writes <t>_float; the DequantizeLinear takes over the name t
            src, dq = nm.fresh(f"{t}_float"), t
            p = producer[t]
            p.outputs[p.outputs.index(t)] = src
            g.values[src] = replace(g.values.get(t) or Value(t, F32), name=src)
        g.values[tq] = Value(tq, zp.dtype, (g.values.get(t) or Value(t)).shape)
        new_nodes.append(Node("QuantizeLinear", [src, sn, zn], [tq]))
        new_nodes.append(Node("DequantizeLinear", [tq, sn, zn], [dq]))
    for n in g.nodes:
        n.inputs[:] = [renamed.get(i, i) for i in n.inputs]
    layers: list[Layer] = []
    for (n, act), name in zip(plan_layers, names):
        if n.op in ("Conv", "Gemm", "MatMul"):
            new_nodes += _static_weights(g, nm, n, x_scale[id(n)], config)
        out = (act or n).outputs[0]
        out = next((t for t, v in producer.items() if v is (act or n) and t in params), out)
        layers.append(Layer(name, n.op + ("+" + act.op if act else ""), out, renamed.get(out, out)))
    g.nodes[:] = new_nodes + g.nodes
    _sorted(g)
    _drop_unused_constants(g)
    return g, layers


def _static_weights(
    g: Graph,
    nm: _Names,
    n: Node,
    xs: np.ndarray,
    config: QuantConfig,
) -> list[Node]:
    """Replaces the weight (and bias) of a Conv/Gemm/MatMul by DequantizeLinear of int8/int32."""
    w = np.asarray(g.constants[n.inputs[1]], np.float32)
    if n.op == "Conv":
        axis = 0
    elif n.op == "Gemm":
        axis = 0 if n.attrs.get("transB", 0) else 1
    else:
        axis = 1
    q, ws, wz = quantize_weight(
        w,
        axis if config.per_channel else None,
        np.uint8 if config.weight_type == "uint8" else np.int8,
    )
    nodes = []
    qn, sn, zn = (
        nm.const(q, f"{n.inputs[1]}_quantized"),
        nm.const(ws, "w_scale"),
        nm.const(wz, "w_zero_point"),
    )
    wd = nm.fresh(f"{n.inputs[1]}_dequantized")
    attrs = {"axis": axis} if ws.ndim else {}
    nodes.append(Node("DequantizeLinear", [qn, sn, zn], [wd], attrs))
    n.inputs[1] = wd
    bias = n.inputs[2] if len(n.inputs) > 2 else ""
    if bias and n.op in ("Conv", "Gemm"):
        b = np.asarray(g.constants[bias], np.float32).reshape(-1)
        bs = (np.float32(xs) * ws).astype(np.float32).reshape(-1)
        if bs.size == 1 and b.size > 1:
            bs = np.full(b.size, bs[0], np.float32)
        bq = np.clip(np.rint(b.astype(np.float64) / bs), -(2**31), 2**31 - 1).astype(np.int32)
        bn, bsn = nm.const(bq, f"{bias}_quantized"), nm.const(bs, "b_scale")
        bzn = nm.const(np.zeros(bs.shape, np.int32), "b_zero_point")
        bd = nm.fresh(f"{bias}_dequantized")
        nodes.append(Node("DequantizeLinear", [bn, bsn, bzn], [bd], {"axis": 0}))
        n.inputs[2] = bd
    return nodes


def _drop_unused_constants(g: Graph) -> None:
    used = {i for n in g.walk() for i in n.inputs if i}
    for n in g.nodes:
        for sub in n.subgraphs():
            used.update(sub.outer_refs())
    used.update(v.name for v in g.outputs)
    for k in [k for k in g.constants if k not in used]:
        del g.constants[k]
        g.values.pop(k, None)


# --------------------------------------------------------------------------- dynamic


def dynamic(g: Graph, config: QuantConfig) -> tuple[Graph, list[Layer]]:
    """MatMul/Gemm/Conv with constant weights -> DynamicQuantizeLinear + *Integer + rescale."""
    g = clone(g)
    _sorted(g)
    nm = _Names(g)
    out: list[Node] = []
    layers: list[Layer] = []
    for n in g.nodes:
        new = None
        if not n.domain and not _excluded(n, config.exclude):
            if n.op in ("MatMul", "Gemm") and _is_f32_const(g, n.inputs[1]):
                new = _dynamic_matmul(g, nm, n, config)
            elif n.op == "Conv" and len(n.inputs) > 1 and _is_f32_const(g, n.inputs[1]):
                new = _dynamic_conv(g, nm, n, config)
        if new is None:
            out.append(n)
        else:
            out += new
            layers.append(Layer(_layer_id(n), n.op, n.outputs[0], n.outputs[0]))
    g.nodes[:] = out
    _drop_unused_constants(g)
    return g, layers


def _wtype(config: QuantConfig) -> type:
    return np.uint8 if config.weight_type == "uint8" else np.int8


def _dq_input(nm: _Names, x: str) -> tuple[Node, str, str, str]:
    xq, xs, xz = nm.fresh(f"{x}_quantized"), nm.fresh(f"{x}_scale"), nm.fresh(f"{x}_zero_point")
    return Node("DynamicQuantizeLinear", [x], [xq, xs, xz]), xq, xs, xz


def _rescale(
    nm: _Names, acc: str, xs: str, ws: np.ndarray, bias: np.ndarray | None, y: str
) -> list[Node]:
    sc, accf, y0 = nm.fresh("scale"), nm.fresh("acc_float"), nm.fresh("y")
    nodes = [
        Node("Mul", [xs, nm.const(ws, "w_scale")], [sc]),
        Node("Cast", [acc], [accf], {"to": 1}),
        Node("Mul", [accf, sc], [y0 if bias is not None else y]),
    ]
    if bias is not None:
        nodes.append(Node("Add", [y0, nm.const(bias, "bias")], [y]))
    return nodes


def _dynamic_matmul(g: Graph, nm: _Names, n: Node, config: QuantConfig) -> list[Node] | None:
    w = np.asarray(g.constants[n.inputs[1]], np.float32)
    if w.ndim != 2:
        return None
    bias = None
    if n.op == "Gemm":
        if n.attrs.get("transA", 0):
            return None
        if n.attrs.get("transB", 0):
            w = w.T
        alpha, beta = float(n.attrs.get("alpha", 1.0)), float(n.attrs.get("beta", 1.0))
        w = w * np.float32(alpha)
        if len(n.inputs) > 2 and n.inputs[2]:
            if not _is_f32_const(g, n.inputs[2]):
                return None
            bias = np.asarray(g.constants[n.inputs[2]], np.float32) * np.float32(beta)
    q, ws, wz = quantize_weight(w, 1 if config.per_channel else None, _wtype(config))
    dq, xq, xs, xz = _dq_input(nm, n.inputs[0])
    acc = nm.fresh("acc")
    zero = nm.const(np.asarray(wz.reshape(-1)[0]), "w_zero_point")
    mm = Node(
        "MatMulInteger", [xq, nm.const(q, f"{n.inputs[1]}_quantized"), xz, zero], [acc], name=n.name
    )
    return [dq, mm, *_rescale(nm, acc, xs, ws, bias, n.outputs[0])]


def _dynamic_conv(g: Graph, nm: _Names, n: Node, config: QuantConfig) -> list[Node] | None:
    w = np.asarray(g.constants[n.inputs[1]], np.float32)
    bias = None
    if len(n.inputs) > 2 and n.inputs[2]:
        if not _is_f32_const(g, n.inputs[2]):
            return None
        bias = np.asarray(g.constants[n.inputs[2]], np.float32).reshape(
            (1, -1) + (1,) * (w.ndim - 2)
        )
    q, ws, wz = quantize_weight(w, 0 if config.per_channel else None, _wtype(config))
    if ws.ndim:
        ws = ws.reshape((1, -1) + (1,) * (w.ndim - 2))
    dq, xq, xs, xz = _dq_input(nm, n.inputs[0])
    acc = nm.fresh("acc")
    zero = nm.const(np.asarray(wz.reshape(-1)[0]), "w_zero_point")
    conv = Node(
        "ConvInteger",
        [xq, nm.const(q, f"{n.inputs[1]}_quantized"), xz, zero],
        [acc],
        dict(n.attrs),
        name=n.name,
    )
    return [dq, conv, *_rescale(nm, acc, xs, ws, bias, n.outputs[0])]


# --------------------------------------------------------------------------- float16


def float16(g: Graph, config: QuantConfig) -> tuple[Graph, list[Layer]]:
    """float16 weights (cast to float32 at load), or float16 compute (``float16_compute``)."""
    g = clone(g)
    _sorted(g)
    if config.float16_compute:
        return _float16_compute(g, config)
    nm = _Names(g)
    casts: list[Node] = []
    done: dict[str, str] = {}
    layers: list[Layer] = []
    for n in g.nodes:
        if _excluded(n, config.exclude):
            continue
        hit = False
        for k, i in enumerate(n.inputs):
            if not _is_f32_const(g, i) or np.size(g.constants[i]) < 16:
                continue
            if i not in done:
                half = nm.const(np.asarray(g.constants[i]).astype(np.float16), f"{i}_fp16")
                back = nm.fresh(f"{i}_fp32")
                casts.append(Node("Cast", [half], [back], {"to": 1}))
                done[i] = back
            n.inputs[k] = done[i]
            hit = True
        if hit and n.outputs:
            layers.append(Layer(_layer_id(n), n.op, n.outputs[0], n.outputs[0]))
    g.nodes[:] = casts + g.nodes
    _drop_unused_constants(g)
    return g, layers


def _float16_compute(g: Graph, config: QuantConfig) -> tuple[Graph, list[Layer]]:
    nm = _Names(g)
    for k, v in list(g.constants.items()):
        if isinstance(v, np.ndarray) and v.dtype == F32:
            g.constants[k] = v.astype(np.float16)
            g.values[k] = Value(k, F16, tuple(v.shape))
    head: list[Node] = []
    ren: dict[str, str] = {}
    for v in g.inputs:
        if v.dtype == F32 and config.keep_io_types:
            h = nm.fresh(f"{v.name}_fp16")
            head.append(Node("Cast", [v.name], [h], {"to": 10}))
            ren[v.name] = h
    for n in g.nodes:
        n.inputs[:] = [ren.get(i, i) for i in n.inputs]
        if n.op == "Cast" and n.attrs.get("to") == 1:
            n.attrs["to"] = 10
    tail: list[Node] = []
    for v in g.outputs:
        if v.dtype == F32 and config.keep_io_types:
            h = nm.fresh(f"{v.name}_fp16")
            for n in g.nodes:
                n.outputs[:] = [h if o == v.name else o for o in n.outputs]
                n.inputs[:] = [h if i == v.name else i for i in n.inputs]
            tail.append(Node("Cast", [h], [v.name], {"to": 1}))
    keep = {v.name for v in g.inputs} | {v.name for v in g.outputs}
    g.values = {k: v for k, v in g.values.items() if k in keep or k in g.constants}
    layers = [
        Layer(_layer_id(n), n.op, n.outputs[0], n.outputs[0])
        for n in g.nodes
        if n.outputs and n.outputs[0] not in {x.name for x in g.outputs}
    ]
    g.nodes[:] = head + g.nodes + tail
    return g, layers
