"""Layout pass: removes the Transpose nodes that NHWC importers (TFLite) wrap around every
NCHW op, so chains of convolutions run in NCHW end to end.

Three local rewrites on the top-level graph, repeated to a fixed point:

* a Transpose of a constant becomes a constant (the weight re-layouts);
* ``Transpose(Transpose(x, P), Q)`` becomes ``Transpose(x, P∘Q)``, and consumers of an identity
  composition read ``x`` directly;
* a Transpose is sunk below a layout-agnostic op whose other operands are scalars, constants
  (permuted to match) or the same permutation of other values: unary elementwise ops and
  activations, broadcasting binary/variadic ops, Concat, Softmax-family, Reduce* and Pad, with
  their axes remapped. The op then runs on the untransposed value and one Transpose follows it,
  so transposes travel downstream until they meet their inverse and cancel.

Values keep their names (the sunk Transpose produces the op's old output), so graph inputs and
outputs never change. Sinking only happens when every Transpose it moves past has no other
reader, so the number of Transpose nodes never grows. Elementwise results are bit-identical;
reductions may sum in a different memory order.

``fuse_integer_clip`` folds a Clip after a TFLite integer kernel into its act_min/act_max.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np

from modelloader.ir import Graph, Node

_UNARY = frozenset(
    "Abs Acos Acosh Asin Asinh Atan Atanh Cast Ceil Celu Clip Cos Cosh Elu Erf Exp Floor Gelu "
    "HardSigmoid HardSwish Identity IsInf IsNaN LeakyRelu Log Mish Neg Not Reciprocal Relu Round "
    "Selu Shrink Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Swish Tan Tanh ThresholdedRelu".split()
)
#: broadcasting elementwise ops: every input carries layout
_BROADCAST = frozenset(
    "Add And BitShift BitwiseAnd BitwiseOr BitwiseXor Div Equal Greater GreaterOrEqual Less "
    "LessOrEqual Max Mean Min Mod Mul Or Pow PRelu Sub Sum Where Xor".split()
)
#: modelloader-domain integer elementwise kernels (numpy broadcasting, scalar attrs)
_BROADCAST_ML = frozenset({"TFLiteAdd", "TFLiteSub", "TFLiteMul"})
_AXIS = frozenset({"Softmax", "LogSoftmax", "Hardmax"})
_REDUCE = frozenset(
    "ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd "
    "ReduceSum ReduceSumSquare".split()
)
#: integer kernels whose output clamp is the act_min/act_max attributes
_CLAMPED = frozenset({"TFLiteConv", "TFLiteFullyConnected", "TFLiteAdd", "TFLiteSub", "TFLiteMul"})


def optimize_layout(g: Graph) -> Graph:
    """Cancels and sinks Transpose nodes of ``g`` (top level) in place; returns ``g``."""
    if not any(n.op == "Transpose" and not n.domain for n in g.nodes):
        return g
    _fold_constant_transposes(g)
    for n in g.nodes:
        x = n.inputs[0] if n.op == "Transpose" and not n.domain and n.inputs else ""
        if x and _shape(g, x) is None and _shape(g, n.outputs[0]) is not None:
            _record(g, x, n.outputs[0], _perm(n))  # an importer's untyped layout adaptor
    # rewrites touch top-level nodes only: what subgraphs read stays pinned throughout
    sub_refs = subgraph_refs(g)
    while _step(g, sub_refs):
        pass
    return g


def _fold_constant_transposes(g: Graph) -> None:
    """Turns every Transpose of a constant (weight re-layouts) into a constant, in one sweep."""
    pinned = {o.name for o in g.outputs}
    kept = []
    for n in g.nodes:
        c = g.constants.get(n.inputs[0]) if n.op == "Transpose" and n.inputs else None
        if c is None or n.domain or n.outputs[0] in pinned:
            kept.append(n)
            continue
        c = np.asarray(c)
        g.constants[n.outputs[0]] = np.ascontiguousarray(np.transpose(c, _perm(n, c.ndim)))
    g.nodes[:] = kept


# --------------------------------------------------------------------------- helpers


def _perm(n: Node, rank: int | None = None) -> list[int] | None:
    p = n.attrs.get("perm")
    if p is None:
        return None if rank is None else list(range(rank - 1, -1, -1))
    return [int(v) for v in p]


def _inverse(p: list[int]) -> list[int]:
    inv = [0] * len(p)
    for i, v in enumerate(p):
        inv[v] = i
    return inv


def _is_identity(p: list[int]) -> bool:
    return all(i == v for i, v in enumerate(p))


class _Ctx:
    """Producer/consumer tables of one graph state (rebuilt after every rewrite)."""

    def __init__(self, g: Graph, sub_refs: set[str] | None = None) -> None:
        self.g = g
        self.producer: dict[str, int] = {
            o: i for i, n in enumerate(g.nodes) for o in n.outputs if o
        }
        self.readers: Counter[str] = Counter(x for n in g.nodes for x in n.inputs if x)
        # graph outputs and subgraph references are readers that cannot be rewired
        self.pinned = {o.name for o in g.outputs} | (
            subgraph_refs(g) if sub_refs is None else sub_refs
        )
        self.names = set(self.producer) | set(g.constants) | {v.name for v in g.inputs}
        self.names |= set(g.values)

    def fresh(self, base: str) -> str:
        name, k = f"{base}__nchw", 0
        while name in self.names:
            k += 1
            name = f"{base}__nchw{k}"
        self.names.add(name)
        return name

    def transpose_of(self, name: str) -> Node | None:
        i = self.producer.get(name)
        if i is None:
            return None
        n = self.g.nodes[i]
        return n if n.op == "Transpose" and not n.domain and n.inputs and n.inputs[0] else None

    def sole_reader(self, name: str, count: int = 1) -> bool:
        return self.readers[name] == count and name not in self.pinned

    def const(self, name: str) -> np.ndarray | None:
        v = self.g.constants.get(name)
        return None if v is None else np.asarray(v)


def subgraph_refs(g: Graph) -> set[str]:
    """The enclosing-scope names the subgraphs of ``g``'s nodes read."""
    return {r for n in g.nodes for sub in n.subgraphs() for r in sub.outer_refs()}


def _shape(g: Graph, name: str) -> tuple | None:
    v = g.values.get(name)
    return None if v is None else v.shape


def _record(g: Graph, new: str, like: str, perm: list[int] | None) -> None:
    """Value info for ``new``, the untransposed twin of ``like`` (= Transpose(new, perm))."""
    v = g.values.get(like)
    if v is None:
        return
    shape = v.shape
    if shape is not None and perm is not None and len(shape) == len(perm):
        inv = _inverse(perm)
        shape = tuple(shape[inv[i]] for i in range(len(perm)))
    elif perm is not None:
        shape = None
    g.values[new] = replace(v, name=new, shape=shape)


def _rename_input(g: Graph, old: str, new: str) -> None:
    for k, n in enumerate(g.nodes):
        if old in n.inputs:
            g.nodes[k] = replace(n, inputs=[new if x == old else x for x in n.inputs])


# --------------------------------------------------------------------------- rewrites


def _step(g: Graph, sub_refs: set[str]) -> bool:
    """Applies the first applicable rewrite; False at the fixed point."""
    ctx = _Ctx(g, sub_refs)
    for i, n in enumerate(g.nodes):
        if n.domain:
            if _data_inputs(n) and _sink(ctx, i, n):
                return True
            continue
        if n.op == "Transpose" and _transpose(ctx, i, n):
            return True
        if n.op != "Transpose" and _sink(ctx, i, n):
            return True
    return _drop_dead(ctx)


def _transpose(ctx: _Ctx, i: int, n: Node) -> bool:
    g = ctx.g
    src, out = n.inputs[0], n.outputs[0]
    c = ctx.const(src)
    if c is not None and out not in ctx.pinned:
        g.constants[out] = np.ascontiguousarray(np.transpose(c, _perm(n, c.ndim)))
        del g.nodes[i]
        return True
    inner = ctx.transpose_of(src)
    p = _perm(n)
    if inner is None or p is None or _perm(inner) is None or len(_perm(inner)) != len(p):
        return False
    q = _perm(inner)
    composed = [q[v] for v in p]
    x = inner.inputs[0]
    if not _is_identity(composed):
        g.nodes[i] = replace(n, inputs=[x], attrs=dict(n.attrs, perm=composed))
        return True
    if out in ctx.pinned:
        j = ctx.producer.get(x)
        if j is not None and ctx.sole_reader(x) and len(g.nodes[j].outputs) == 1:
            # the producer writes the pinned name itself
            g.nodes[j] = replace(g.nodes[j], outputs=[out])
            del g.nodes[i]
        else:
            g.nodes[i] = Node("Identity", [x], [out], {}, "", n.name)
    else:
        _rename_input(g, out, x)
        del g.nodes[i]
    return True


def _drop_dead(ctx: _Ctx) -> bool:
    g = ctx.g
    dead = [
        i
        for i, n in enumerate(g.nodes)
        if n.op == "Transpose"
        and not n.domain
        and n.outputs[0] not in ctx.pinned
        and ctx.readers[n.outputs[0]] == 0
    ]
    for i in reversed(dead):
        del g.nodes[i]
    return bool(dead)


def _data_inputs(n: Node) -> list[int] | None:
    """Indices of the inputs that carry the layout, or None if ``n`` is not layout-agnostic."""
    if n.domain == "modelloader":
        return [0, 1] if n.op in _BROADCAST_ML else None
    if n.domain == "com.microsoft" and n.op == "QLinearReduceMean":
        return [0]
    if n.domain:
        return None
    if n.op in _UNARY or n.op in _AXIS or n.op in _REDUCE or n.op == "Pad":
        return [0]
    if n.op in _BROADCAST or n.op == "Concat":
        return [k for k, x in enumerate(n.inputs) if x]
    return None


def _sink(ctx: _Ctx, i: int, n: Node) -> bool:
    """Rewrites U(Transpose(x, P), ...) -> Transpose(U'(x, ...), P') when profitable."""
    data = _data_inputs(n)
    if not data or len(n.outputs) != 1 or not n.outputs[0]:
        return False
    perm: list[int] | None = None
    sources: dict[str, Node] = {}
    for k in data:
        t = ctx.transpose_of(n.inputs[k])
        if t is None:
            continue
        p = _perm(t)
        if p is None or (perm is not None and p != perm):
            return False
        perm = p
        sources[n.inputs[k]] = t
    if perm is None:
        return False
    # each transpose moved must be read by this node alone, so it disappears
    uses = Counter(n.inputs[k] for k in data)
    if not all(ctx.sole_reader(name, uses[name]) for name in sources):
        # ...or the new transpose only meets other transposes, which absorb it
        out = n.outputs[0]
        if out in ctx.pinned or not all(
            x.op == "Transpose" and not x.domain for x in ctx.g.nodes if out in x.inputs
        ):
            return False
    r = len(perm)
    inv = _inverse(perm)
    g = ctx.g
    inputs = list(n.inputs)
    for k in data:
        name = n.inputs[k]
        if name in sources:
            inputs[k] = sources[name].inputs[0]
            continue
        c = ctx.const(name)
        if c is None or c.ndim > r or (n.op == "Concat" and c.ndim != r):
            return False
        if c.ndim and c.size > 1:
            full = c.reshape((1,) * (r - c.ndim) + c.shape)
            new = ctx.fresh(name)
            g.constants[new] = np.ascontiguousarray(np.transpose(full, inv))
            inputs[k] = new
    attrs = dict(n.attrs)
    out_perm: list[int] | None = perm
    if n.op in _AXIS or n.op == "Concat":
        default = -1 if n.op in _AXIS else None
        axis = attrs.get("axis", default)
        if axis is None:
            return False
        attrs["axis"] = perm[int(axis) % r]
    elif n.op in _REDUCE or n.op == "QLinearReduceMean":
        remapped = _reduce(ctx, n, inputs, attrs, perm)
        if remapped is None:
            return False
        out_perm = remapped or None
    elif n.op == "Pad":
        if len(n.inputs) > 3 and n.inputs[3]:
            return False
        pads = ctx.const(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None
        if pads is None or pads.size != 2 * r:
            return False
        pads = pads.reshape(-1)
        new_pads = np.empty_like(pads)
        for j in range(r):
            new_pads[perm[j]] = pads[j]
            new_pads[r + perm[j]] = pads[r + j]
        inputs[1] = ctx.fresh(n.inputs[1])
        g.constants[inputs[1]] = new_pads
    else:
        # non-data inputs (Clip bounds) must not carry layout
        for k, x in enumerate(n.inputs):
            if k not in data and x and ctx.transpose_of(x) is not None:
                return False
    out = n.outputs[0]
    mid = ctx.fresh(out)
    g.nodes[i] = replace(n, inputs=inputs, outputs=[mid], attrs=attrs)
    if out_perm is None:
        _rename_output(g, i, mid, out)
    else:
        _record(g, mid, out, out_perm)
        g.nodes.insert(
            i + 1, Node("Transpose", [mid], [out], {"perm": out_perm}, "", f"{out}/layout")
        )
    return True


def _rename_output(g: Graph, i: int, mid: str, out: str) -> None:
    n = g.nodes[i]
    g.nodes[i] = replace(n, outputs=[out])
    g.values.pop(mid, None)


def _reduce(
    ctx: _Ctx, n: Node, inputs: list[str], attrs: dict, perm: list[int]
) -> list[int] | None:
    """Remaps a Reduce* node's axes; returns the output's permutation ([] -> none needed)."""
    r = len(perm)
    if n.op == "QLinearReduceMean":  # com.microsoft: axes attribute
        axes_c = np.asarray(attrs.get("axes", []), np.int64)
    elif "axes" in attrs:
        return None
    else:
        axes_c = ctx.const(n.inputs[1]) if len(n.inputs) > 1 and n.inputs[1] else None
    if axes_c is None or axes_c.size == 0:
        return None
    axes = sorted({int(a) % r for a in axes_c.reshape(-1)})
    new_axes = [perm[a] for a in axes]
    if n.op == "QLinearReduceMean":
        attrs["axes"] = new_axes
    else:
        inputs[1] = ctx.fresh(n.inputs[1])
        ctx.g.constants[inputs[1]] = np.asarray(new_axes, np.int64)
    if attrs.get("keepdims", 1):
        return perm
    # kept axes, in the transposed order, as original axis indices
    kept = [perm[j] for j in range(r) if j not in axes]
    order = sorted(kept)
    q = [order.index(a) for a in kept]
    return [] if _is_identity(q) else q


# --------------------------------------------------------------------------- integer clamps


def fuse_integer_clip(g: Graph) -> Graph:
    """Folds ``Clip(K(...), lo, hi)`` into ``K``'s act_min/act_max for the TFLite integer
    kernels K (their output is clamped to [act_min, act_max] already; two clamps with
    overlapping ranges are one clamp to the intersection)."""
    ctx = _Ctx(g)
    dead: set[int] = set()
    for i, n in enumerate(g.nodes):
        if n.domain or n.op != "Clip" or not n.inputs or not n.inputs[0]:
            continue
        src = n.inputs[0]
        j = ctx.producer.get(src)
        if j is None or j in dead or not ctx.sole_reader(src):
            continue
        k = g.nodes[j]
        if k.domain != "modelloader" or k.op not in _CLAMPED or len(k.outputs) != 1:
            continue
        bounds = []
        for b in (1, 2):
            name = n.inputs[b] if len(n.inputs) > b else ""
            c = ctx.const(name) if name else None
            if name and (c is None or c.size != 1):
                break
            bounds.append(None if c is None else c.reshape(()).item())
        else:
            lo_c, hi_c = bounds
            if any(v is not None and float(v) != int(v) for v in (lo_c, hi_c)):
                continue
            lo = _tighter(max, k.attrs.get("act_min"), lo_c)
            hi = _tighter(min, k.attrs.get("act_max"), hi_c)
            if lo is not None and hi is not None and lo > hi:
                continue
            attrs = dict(k.attrs)
            if lo is not None:
                attrs["act_min"] = lo
            if hi is not None:
                attrs["act_max"] = hi
            g.nodes[j] = replace(k, outputs=[n.outputs[0]], attrs=attrs)
            dead.add(i)
    g.nodes[:] = [n for k, n in enumerate(g.nodes) if k not in dead]
    return g


def _tighter(pick, a: float | None, b: float | None) -> int | None:
    vals = [int(v) for v in (a, b) if v is not None]
    return pick(vals) if vals else None
