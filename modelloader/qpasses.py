"""Plan-time rewrite of QDQ-quantized graphs into integer ops.

A QDQ model (onnxruntime ``quantize_static(quant_format=QDQ)``, ``modelloader.quantize``,
TensorRT/other exporters) spells every quantized op as ``DequantizeLinear -> float op ->
QuantizeLinear``. Run literally that dequantizes everything to float. ``integerize`` matches
those patterns and replaces them with the integer ops ONNX (or onnxruntime's contrib domain)
defines for them, so the run does int32 accumulation and the spec's requantization
(round half to even, saturate), as onnxruntime's QDQ fusions do:

* ``Conv`` -> ``QLinearConv``; ``MatMul`` -> ``QLinearMatMul``; ``Gemm`` -> ``com.microsoft.QGemm``
  (also without a trailing ``QuantizeLinear``: QGemm's float output);
* ``Add``/``Mul`` -> ``com.microsoft.QLinearAdd``/``QLinearMul``; ``AveragePool`` /
  ``GlobalAveragePool`` -> ``com.microsoft.QLinearAveragePool`` / ``QLinearGlobalAveragePool``;
  ``Concat`` -> ``com.microsoft.QLinearConcat``;
* a ``Relu`` or constant ``Clip`` between the op and its ``QuantizeLinear`` becomes an integer
  clamp (exact: quantization is monotonic);
* a ``QLinearConv`` whose output only feeds a ``QLinearAdd`` (a residual connection) becomes
  ``modelloader.QLinearConvAdd``, with the integer clamp after the add folded in too (and
  one that only feeds an integer clamp ``modelloader.QLinearConvClip``):
  same integers, the kernels requantize the conv exactly as ``QLinearConv`` does, then
  add/clamp;
* data-movement ops whose input and output share scale and zero point (``MaxPool``,
  ``Reshape``, ``Flatten``, ``Transpose``, ``Squeeze``, ``Unsqueeze``, ``Identity``) run on
  the integers directly; ``Relu`` with equal parameters becomes ``Max(q, zero_point)``.

QDQ pairs that match nothing stay as they are (computed in float, as the graph says).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from modelloader.ir import Graph, Node

MS = "com.microsoft"

#: ops that only move or select values: the integers can flow through when scales match
_SAME_SCALE = frozenset(
    {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
)
_INT8 = (np.dtype(np.int8), np.dtype(np.uint8))


class _Ctx:
    """Producer/consumer tables of one graph and fresh-name generation."""

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.producer: dict[str, Node] = {}
        self.consumers: dict[str, list[Node]] = {}
        for n in g.nodes:
            for o in n.outputs:
                if o:
                    self.producer[o] = n
            for i in n.inputs:
                if i:
                    self.consumers.setdefault(i, []).append(n)
            for sub in n.subgraphs():
                for r in sub.outer_refs():
                    self.consumers.setdefault(r, []).append(n)
        self.graph_outputs = {v.name for v in g.outputs}
        self.count = 0
        #: nodes a rewrite absorbed (the QuantizeLinear and activation after a replaced op)
        self.absorbed: list[Node] = []

    def fresh(self, hint: str) -> str:
        self.count += 1
        return f"{hint}__qp{self.count}"

    def const(self, name: str) -> np.ndarray | None:
        v = self.g.constants.get(name) if name else None
        return None if v is None else np.asarray(v)

    def add_const(self, value: np.ndarray, hint: str) -> str:
        name = self.fresh(hint)
        self.g.constants[name] = value
        return name


class _QParams:
    """A DequantizeLinear's (or QuantizeLinear's) integer tensor and its constant parameters."""

    def __init__(self, node: Node, q: str, scale: np.ndarray, zp: np.ndarray, axis: int) -> None:
        self.node, self.q, self.scale, self.zp, self.axis = node, q, scale, zp, axis

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    @property
    def dtype(self) -> np.dtype:
        return self.zp.dtype

    def same(self, other: _QParams) -> bool:
        return (
            self.per_tensor
            and other.per_tensor
            and self.dtype == other.dtype
            and np.float32(self.scale.reshape(-1)[0]) == np.float32(other.scale.reshape(-1)[0])
            and int(self.zp.reshape(-1)[0]) == int(other.zp.reshape(-1)[0])
        )

    @property
    def scale_name(self) -> str:
        return self.node.inputs[1]

    @property
    def zp_name(self) -> str:
        return self.node.inputs[2]


def _params(c: _Ctx, node: Node | None, op: str) -> _QParams | None:
    """Constant (scale, zero point) of a plain 8-bit (De)QuantizeLinear node, else None."""
    if node is None or node.op != op or node.domain or len(node.inputs) < 3:
        return None
    if node.attrs.get("block_size", 0) or node.attrs.get("output_dtype", 0):
        return None
    scale, zp = c.const(node.inputs[1]), c.const(node.inputs[2])
    if scale is None or zp is None or zp.dtype not in _INT8 or scale.dtype != np.float32:
        return None
    if scale.ndim > 1 or zp.shape != scale.shape:
        return None
    return _QParams(node, node.inputs[0], scale, zp, int(node.attrs.get("axis", 1)))


def _dq(c: _Ctx, name: str) -> _QParams | None:
    return _params(c, c.producer.get(name), "DequantizeLinear") if name else None


def _single_consumer(c: _Ctx, name: str) -> Node | None:
    users = c.consumers.get(name, [])
    if len(users) != 1 or name in c.graph_outputs:
        return None
    return users[0]


def _output_q(c: _Ctx, name: str) -> tuple[_QParams, Node | None] | None:
    """The QuantizeLinear that alone reads ``name`` (optionally through one Relu/Clip)."""
    nxt = _single_consumer(c, name)
    act = None
    if nxt is not None and not nxt.domain and nxt.op in ("Relu", "Clip"):
        act = nxt
        nxt = _single_consumer(c, act.outputs[0])
    q = _params(c, nxt, "QuantizeLinear")
    if q is None or not q.per_tensor:
        return None
    return q, act


def _clamp(c: _Ctx, act: Node | None, y: str, out: str, q: _QParams) -> list[Node] | None:
    """Integer form of a Relu/Clip applied before quantizing with ``q``."""
    if act is None:
        return []
    s, zp = float(q.scale.reshape(-1)[0]), int(q.zp.reshape(-1)[0])
    info = np.iinfo(q.dtype)
    bounds = [0.0, None] if act.op == "Relu" else [None, None]
    if act.op == "Clip":
        for k in (1, 2):
            name = act.inputs[k] if len(act.inputs) > k else ""
            if name:
                v = c.const(name)
                if v is None:
                    return None
                bounds[k - 1] = float(v)
    ints = []
    for b, dflt in zip(bounds, (info.min, info.max)):
        if b is None:
            ints.append(dflt)
        else:
            qv = np.clip(np.rint(np.float32(b) / np.float32(s)) + zp, info.min, info.max)
            ints.append(int(qv))
    lo = c.add_const(np.asarray(ints[0], q.dtype), "clip_lo")
    hi = c.add_const(np.asarray(ints[1], q.dtype), "clip_hi")
    return [Node("Clip", [y, lo, hi], [out], name=act.name)]


def _int_bias(c: _Ctx, name: str, x: _QParams, w: _QParams) -> str | None:
    """An int32 bias at scale x_scale * w_scale: from an int32 DequantizeLinear or a float constant."""
    if not name:
        return ""
    prod = c.producer.get(name)
    want = (np.float32(x.scale.reshape(-1)[0]) * w.scale.astype(np.float32)).reshape(-1)
    if prod is not None and prod.op == "DequantizeLinear" and not prod.domain:
        bq, bs = c.const(prod.inputs[0]), c.const(prod.inputs[1]) if len(prod.inputs) > 1 else None
        bz = c.const(prod.inputs[2]) if len(prod.inputs) > 2 and prod.inputs[2] else None
        if bq is None or bs is None or bq.dtype != np.int32 or (bz is not None and bz.any()):
            return None
        if not np.allclose(bs.reshape(-1), want, rtol=1e-5, atol=0):
            return None
        return prod.inputs[0]
    b = c.const(name)
    if b is None or b.dtype != np.float32:
        return None
    bi = np.clip(np.rint(b.astype(np.float64).reshape(-1) / want), -(2**31), 2**31 - 1)
    return c.add_const(bi.astype(np.int32), "bias_i32")


def _conv(c: _Ctx, n: Node) -> list[Node] | None:
    if len(n.inputs) < 2:
        return None
    x, w = _dq(c, n.inputs[0]), _dq(c, n.inputs[1])
    if x is None or w is None or not x.per_tensor or c.const(w.q) is None:
        return None
    if not w.per_tensor and w.axis not in (0, -len(c.const(w.q).shape)):
        return None
    tail = _output_q(c, n.outputs[0])
    if tail is None:
        return None
    q, act = tail
    bias = _int_bias(c, n.inputs[2] if len(n.inputs) > 2 else "", x, w)
    if bias is None:
        return None
    out = q.node.outputs[0]
    y = c.fresh(out) if act is not None else out
    ins = [x.q, x.scale_name, x.zp_name, w.q, w.scale_name, w.zp_name, q.scale_name, q.zp_name]
    if bias:
        ins.append(bias)
    tail_nodes = _clamp(c, act, y, out, q)
    if tail_nodes is None:
        return None
    c.absorbed += [q.node] + ([act] if act is not None else [])
    return [Node("QLinearConv", ins, [y], dict(n.attrs), name=n.name), *tail_nodes]


def _matmul(c: _Ctx, n: Node) -> list[Node] | None:
    a, b = _dq(c, n.inputs[0]), _dq(c, n.inputs[1])
    if a is None or b is None or not a.per_tensor:
        return None
    bw = c.const(b.q)
    if not b.per_tensor and (bw is None or bw.ndim != 2 or b.axis not in (1, -1)):
        return None
    tail = _output_q(c, n.outputs[0])
    if tail is None:
        return None
    q, act = tail
    out = q.node.outputs[0]
    y = c.fresh(out) if act is not None else out
    tail_nodes = _clamp(c, act, y, out, q)
    if tail_nodes is None:
        return None
    c.absorbed += [q.node] + ([act] if act is not None else [])
    ins = [a.q, a.scale_name, a.zp_name, b.q, b.scale_name, b.zp_name, q.scale_name, q.zp_name]
    return [Node("QLinearMatMul", ins, [y], name=n.name), *tail_nodes]


def _gemm(c: _Ctx, n: Node) -> list[Node] | None:
    if float(n.attrs.get("beta", 1.0)) != 1.0:
        return None
    a, b = _dq(c, n.inputs[0]), _dq(c, n.inputs[1])
    if a is None or b is None or not a.per_tensor:
        return None
    bw = c.const(b.q)
    if bw is None or bw.ndim != 2:
        return None
    trans_b = int(n.attrs.get("transB", 0))
    if not b.per_tensor and b.axis % 2 != (0 if trans_b else 1):
        return None  # QGemm takes per-column (N) weight scales only
    bias = ""
    if len(n.inputs) > 2 and n.inputs[2]:
        if float(n.attrs.get("alpha", 1.0)) != 1.0:
            return None  # QGemm scales its int32 bias by alpha too
        shape = _bias_shape(c, n.inputs[2])
        if shape is None or len(shape) > 1 and shape[0] != 1:
            return None
        bias = _int_bias(c, n.inputs[2], a, b)
        if bias is None:
            return None
    attrs = {k: v for k, v in n.attrs.items() if k in ("alpha", "transA", "transB")}
    ins = [a.q, a.scale_name, a.zp_name, b.q, b.scale_name, b.zp_name, bias]
    tail = _output_q(c, n.outputs[0])
    if tail is None:  # float output: QGemm without y_scale
        return [Node("QGemm", ins, [n.outputs[0]], attrs, domain=MS, name=n.name)]
    q, act = tail
    out = q.node.outputs[0]
    y = c.fresh(out) if act is not None else out
    tail_nodes = _clamp(c, act, y, out, q)
    if tail_nodes is None:
        return None
    c.absorbed += [q.node] + ([act] if act is not None else [])
    ins += [q.scale_name, q.zp_name]
    return [Node("QGemm", ins, [y], attrs, domain=MS, name=n.name), *tail_nodes]


def _bias_shape(c: _Ctx, name: str) -> tuple[int, ...] | None:
    prod = c.producer.get(name)
    if prod is not None and prod.op == "DequantizeLinear":
        v = c.const(prod.inputs[0])
    else:
        v = c.const(name)
    return None if v is None else v.shape


def _binary(c: _Ctx, n: Node) -> list[Node] | None:
    a, b = _dq(c, n.inputs[0]), _dq(c, n.inputs[1])
    if a is None or b is None or not (a.per_tensor and b.per_tensor) or a.dtype != b.dtype:
        return None
    tail = _output_q(c, n.outputs[0])
    if tail is None or tail[0].dtype != a.dtype:
        return None
    q, act = tail
    out = q.node.outputs[0]
    y = c.fresh(out) if act is not None else out
    tail_nodes = _clamp(c, act, y, out, q)
    if tail_nodes is None:
        return None
    ins = [a.q, a.scale_name, a.zp_name, b.q, b.scale_name, b.zp_name, q.scale_name, q.zp_name]
    c.absorbed += [q.node] + ([act] if act is not None else [])
    op = "QLinearAdd" if n.op == "Add" else "QLinearMul"
    return [Node(op, ins, [y], domain=MS, name=n.name), *tail_nodes]


def _pool(c: _Ctx, n: Node) -> list[Node] | None:
    x = _dq(c, n.inputs[0])
    if x is None or not x.per_tensor or len([o for o in n.outputs if o]) != 1:
        return None
    if any(d != 1 for d in n.attrs.get("dilations", []) or []):
        return None
    tail = _output_q(c, n.outputs[0])
    if tail is None or tail[1] is not None or tail[0].dtype != x.dtype:
        return None
    q = tail[0]
    attrs = {k: v for k, v in n.attrs.items() if k != "dilations"}
    c.absorbed.append(q.node)
    op = "QLinearAveragePool" if n.op == "AveragePool" else "QLinearGlobalAveragePool"
    ins = [x.q, x.scale_name, x.zp_name, q.scale_name, q.zp_name]
    return [Node(op, ins, [q.node.outputs[0]], attrs, domain=MS, name=n.name)]


def _concat(c: _Ctx, n: Node) -> list[Node] | None:
    parts = [_dq(c, i) for i in n.inputs]
    if not parts or any(p is None or not p.per_tensor for p in parts):
        return None
    tail = _output_q(c, n.outputs[0])
    if tail is None or tail[1] is not None:
        return None
    q = tail[0]
    if any(p.dtype != q.dtype for p in parts):  # type: ignore[union-attr]
        return None
    c.absorbed.append(q.node)
    ins = [q.scale_name, q.zp_name]
    for p in parts:
        ins += [p.q, p.scale_name, p.zp_name]  # type: ignore[union-attr]
    return [Node("QLinearConcat", ins, [q.node.outputs[0]], dict(n.attrs), domain=MS, name=n.name)]


def _same_scale(c: _Ctx, n: Node) -> list[Node] | None:
    x = _dq(c, n.inputs[0]) if n.inputs else None
    if x is None or not x.per_tensor or len([o for o in n.outputs if o]) != 1:
        return None
    nxt = _single_consumer(c, n.outputs[0])
    q = _params(c, nxt, "QuantizeLinear")
    if q is None or not x.same(q):
        return None
    out = q.node.outputs[0]
    c.absorbed.append(q.node)
    if n.op == "Relu":
        return [Node("Max", [x.q, x.zp_name], [out], name=n.name)]
    return [Node(n.op, [x.q, *n.inputs[1:]], [out], dict(n.attrs), name=n.name)]


_HANDLERS: dict[str, Any] = {
    "Conv": _conv,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Add": _binary,
    "Mul": _binary,
    "AveragePool": _pool,
    "GlobalAveragePool": _pool,
    "Concat": _concat,
    "Relu": _same_scale,
    **{op: _same_scale for op in _SAME_SCALE},
}


def integerize(g: Graph) -> int:
    """Rewrites QDQ patterns of ``g`` (in place, subgraphs too) into integer ops.

    Returns the number of float ops replaced. Dequantize/Quantize nodes left without readers
    are removed.
    """
    replaced = 0
    for n in g.nodes:
        for sub in n.subgraphs():
            replaced += integerize(sub)
    if not any(n.op == "DequantizeLinear" and not n.domain for n in g.nodes):
        return replaced
    c = _Ctx(g)
    gone: set[int] = set()
    for n in list(g.nodes):
        fn = _HANDLERS.get(n.op)
        if fn is None or n.domain or not n.outputs or id(n) in gone:
            continue
        new = fn(c, n)
        if new is None:
            continue
        idx = next(i for i, m in enumerate(g.nodes) if m is n)
        g.nodes[idx : idx + 1] = new
        for m in new:  # keep tables current for later matches
            for o in m.outputs:
                c.producer[o] = m
            for i in m.inputs:
                if i:
                    c.consumers.setdefault(i, []).append(m)
        replaced += 1
        if c.absorbed:
            gone.update(id(m) for m in c.absorbed)
            g.nodes[:] = [m for m in g.nodes if id(m) not in gone]
            c.absorbed.clear()
    _drop_dead(g)
    if _fuse_conv_tails(g):
        _drop_dead(g)
    return replaced


ML = "modelloader"


def _int_clip(c: _Ctx, n: Node | None, dt: np.dtype) -> tuple[int | None, int | None] | None:
    """(lo, hi) of a Clip with constant scalar integer bounds of dtype ``dt`` (None: open)."""
    if n is None or n.op != "Clip" or n.domain or len(n.outputs) != 1 or not n.outputs[0]:
        return None
    bounds: list[int | None] = []
    for k in (1, 2):
        name = n.inputs[k] if len(n.inputs) > k else ""
        v = c.const(name) if name else None
        if name and (v is None or v.size != 1 or v.dtype != dt):
            return None
        bounds.append(None if v is None else int(v.reshape(-1)[0]))
    lo, hi = bounds
    if lo is not None and hi is not None and lo > hi:
        return None
    return lo, hi


def _fuse_conv_tails(g: Graph) -> bool:
    """QLinearConv -> Clip: QLinearConvClip; QLinearConv -> QLinearAdd [-> Clip]:
    QLinearConvAdd (modelloader domain, see kernels/cpu/qconv_fast.py). Whether any fused."""
    if not any(n.op == "QLinearConv" and not n.domain for n in g.nodes):
        return False
    c = _Ctx(g)
    gone: set[int] = set()
    #: the fused node takes the place of the last node it absorbs (its inputs exist there)
    put: dict[int, Node] = {}
    for n in list(g.nodes):
        if n.op != "QLinearConv" or n.domain or len(n.inputs) < 8 or id(n) in gone:
            continue
        y = n.outputs[0] if len(n.outputs) == 1 else ""
        zp = c.const(n.inputs[7]) if n.inputs[7] else None
        if not y or zp is None or zp.dtype not in _INT8 or zp.size != 1:
            continue
        nxt = _single_consumer(c, y)
        if nxt is None or id(nxt) in gone:
            continue
        ins = list(n.inputs[:9]) + [""] * (9 - len(n.inputs[:9]))
        if nxt.op == "QLinearAdd" and nxt.domain == MS and len(nxt.inputs) >= 7:
            add = list(nxt.inputs) + [""] * (8 - len(nxt.inputs))
            if add[0] == y and add[3] != y:
                mine, other = add[1:3], add[3:6]
            elif add[3] == y and add[0] != y:  # (the add's float arithmetic commutes)
                mine, other = add[4:6], add[0:3]
            else:
                continue
            out = nxt.outputs[0]
            attrs = dict(n.attrs)
            czp = c.const(add[7]) if add[7] else None
            cdt = czp.dtype if czp is not None else zp.dtype
            last = nxt
            clip_node = _single_consumer(c, out)
            bounds = _int_clip(c, clip_node, cdt)
            if clip_node is not None and bounds is not None and id(clip_node) not in gone:
                last = clip_node
                out = clip_node.outputs[0]
                _set_bounds(attrs, bounds)
            gone.update((id(n), id(nxt), id(last)))
            put[id(last)] = Node("QLinearConvAdd", ins + mine + other + add[6:8], [out], attrs,
                                 domain=ML, name=n.name)  # fmt: skip
        else:
            bounds = _int_clip(c, nxt, zp.dtype)
            if bounds is None:
                continue
            attrs = dict(n.attrs)
            _set_bounds(attrs, bounds)
            gone.update((id(n), id(nxt)))
            while ins and not ins[-1]:
                ins.pop()
            put[id(nxt)] = Node(
                "QLinearConvClip", ins, [nxt.outputs[0]], attrs, domain=ML, name=n.name
            )
    if gone:
        g.nodes[:] = [put.get(id(m), m) for m in g.nodes if id(m) not in gone or id(m) in put]
    return bool(gone)


def _set_bounds(attrs: dict[str, Any], bounds: tuple[int | None, int | None]) -> None:
    if bounds[0] is not None:
        attrs["act_min"] = bounds[0]
    if bounds[1] is not None:
        attrs["act_max"] = bounds[1]


def _drop_dead(g: Graph) -> None:
    """Removes nodes (pure ops only) whose outputs nobody reads; then unused constants."""
    while True:
        uses: Counter[str] = Counter()
        for n in g.nodes:
            uses.update(i for i in n.inputs if i)
            for sub in n.subgraphs():
                uses.update(sub.outer_refs())
        uses.update(v.name for v in g.outputs)
        keep = [
            n
            for n in g.nodes
            if any(uses[o] for o in n.outputs if o)
            or n.op not in ("DequantizeLinear", "QuantizeLinear", "Relu", "Clip", *_SAME_SCALE)
            or n.domain
        ]
        if len(keep) == len(g.nodes):
            break
        g.nodes[:] = keep
    for name in [k for k in g.constants if not uses[k]]:
        del g.constants[name]
