"""Graph rewrites run once at plan time, before the planner folds constants.

In order: repeated nodes (same op, inputs and attributes) merge; QDQ patterns become integer
ops; NHWC<->NCHW transposes cancel; per-channel constant Mul/Add after a pre-activation
BatchNormalization (Caffe2's scale layers) fold into it; a Conv's BatchNormalization folds
into the conv, and a per-channel Mul then Add becomes a BatchNormalization of the same
arithmetic; the exact-GELU subgraph becomes Gelu; residual adds and activations fuse.
Fused ops live in the ``modelloader`` domain: ``FusedConv(X, W, B, Z)`` computes
``act(Conv(X, W, B) + Z)``, ``FusedGemm(A, B, C)`` computes ``act(Gemm(A, B, C))``,
``FusedBatchNorm`` is an inference BatchNormalization with an activation. A channel shuffle
(the Reshape/Transpose/Reshape idiom of ShuffleNet) after a conv becomes its ``shuffle``
attribute, so the conv writes the shuffled layout instead of a copy being made.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import numpy as np

from modelloader.ir import Graph, Node
from modelloader.kernels.registry import Registry
from modelloader.layout import fuse_integer_clip, optimize_layout, subgraph_refs
from modelloader.qpasses import integerize

FUSED = "modelloader"

#: activation op -> how its attributes/inputs become ``activation_params``
_ACTIVATIONS = ("Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid")


def optimize(g: Graph, registry: Registry) -> Graph:
    """Folds BatchNorm into Conv and fuses activations, rewriting ``g`` in place.

    In place, so replaced weights are freed as soon as their folded versions exist.
    """
    _merge_duplicates(g, registry)
    integerize(g)  # QDQ patterns -> integer ops (modelloader.qpasses)
    optimize_layout(g)  # cancel/sink NHWC<->NCHW transposes (modelloader.layout)
    fuse_integer_clip(g)
    _fold_constant_reshapes(g, registry)
    _fold_affine_into_batchnorm(g)
    _fold_batchnorm(g)
    _affine_to_batchnorm(g)
    if registry.supports("FusedConv", FUSED):
        _fuse(g, "Conv", "FusedConv", residual=True)
        _fuse_shuffle(g)
    if registry.supports("FusedGemm", FUSED):
        _fuse(g, "Gemm", "FusedGemm", residual=False)
    if registry.supports("Gelu", ""):
        _fuse_gelu(g)
    if registry.supports("FusedBatchNorm", FUSED):
        _fuse(g, "BatchNormalization", "FusedBatchNorm", residual=False, single_output=True)
    return g


def _attr_key(v: object) -> object:
    """A hashable stand-in for an attribute value (None for a subgraph: never merged)."""
    if isinstance(v, (list, tuple)):
        items = [_attr_key(x) for x in v]
        return None if any(x is None for x in items) else tuple(items)
    if isinstance(v, np.ndarray):
        return (v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, Graph):
        return None
    if isinstance(v, float):
        return ("float", repr(v))  # -0.0 and 0.0 stay apart
    if isinstance(v, (int, str, bytes, bool)) or v is None:
        return (type(v).__name__, v)
    return None


def _merge_duplicates(g: Graph, registry: Registry) -> None:
    """Common-subexpression elimination on the top level: a node computing what an earlier
    node with the same op, inputs and attributes computed reads that node's outputs instead
    (quantizers write one DynamicQuantizeLinear per consumer of a tensor; exporters repeat
    shape arithmetic). Random and stateful ops, nodes with subgraphs, graph outputs and
    values a subgraph reads are left alone."""
    from modelloader.executor import NONDETERMINISTIC

    pinned = {o.name for o in g.outputs} | subgraph_refs(g)
    seen: dict[tuple, Node] = {}
    rename: dict[str, str] = {}
    kept: list[Node] = []
    for n in g.nodes:
        if rename and any(i in rename for i in n.inputs):
            n = replace(n, inputs=[rename.get(i, i) for i in n.inputs])
        attrs = tuple(sorted((k, _attr_key(v)) for k, v in n.attrs.items()))
        mergeable = (
            n.op not in NONDETERMINISTIC
            and all(key is not None for _, key in attrs)
            and not any(getattr(sp.fn, "stateful", False) for sp in registry.specs(n.op, n.domain))
            and not pinned.intersection(n.outputs)
            and all(n.outputs)
        )
        key = (n.domain, n.op, tuple(n.inputs), attrs, len(n.outputs))
        first = seen.get(key) if mergeable else None
        if first is None:
            if mergeable:
                seen[key] = n
            kept.append(n)
            continue
        rename.update(zip(n.outputs, first.outputs))
    g.nodes[:] = kept


def _uses(g: Graph) -> Counter[str]:
    uses: Counter[str] = Counter()
    for n in g.nodes:
        uses.update(i for i in n.inputs if i)
        for sub in n.subgraphs():
            uses.update(sub.outer_refs())
    uses.update(o.name for o in g.outputs)  # a graph output is never fused away
    return uses


def _consumers(g: Graph) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, n in enumerate(g.nodes):
        for x in n.inputs:
            if x:
                out.setdefault(x, []).append(i)
    return out


#: ops that only re-view a tensor: folded here when their inputs are constants, so the
#: passes below see the per-channel constants exporters reshape at run time
_REVIEWS = frozenset({"Unsqueeze", "Squeeze", "Reshape", "Flatten", "Identity"})


def _fold_constant_reshapes(g: Graph, registry: Registry) -> None:
    """Evaluates Unsqueeze/Squeeze/Reshape/Flatten/Identity nodes of constants (the planner
    would fold them anyway; done first so ``_fold_affine_into_batchnorm`` sees them)."""
    kept = []
    for n in g.nodes:
        if (
            n.op in _REVIEWS
            and not n.domain
            and n.inputs
            and all(i == "" or i in g.constants for i in n.inputs)
            and not g.sparse_sources.intersection(n.inputs)  # kept sparse by compress.sparse
        ):
            first = g.constants[n.inputs[0]]
            fn = registry.lookup(n.op, "", getattr(first, "dtype", None))
            if fn is not None and len(n.outputs) == 1:
                try:
                    value = fn(*[g.constants.get(i) if i else None for i in n.inputs], **n.attrs)
                except Exception:  # noqa: BLE001  left to run time, which reports it properly
                    value = None
                if isinstance(value, np.ndarray):
                    g.constants[n.outputs[0]] = value  # a view of a weight stays a view
                    continue
        kept.append(n)
    g.nodes[:] = kept


def _per_channel(k: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """``k`` as a (channels,) vector if, broadcast against a rank-``rank`` NC... tensor, it
    varies along axis 1 only (or is a scalar); else None."""
    if k.ndim > rank or k.dtype.kind != "f":
        return None
    if k.size == 1:
        return np.full(channels, k.reshape(()), np.float64)
    shape = (1,) * (rank - k.ndim) + k.shape
    if rank < 2 or shape[1] != channels or math.prod(shape) != channels:
        return None
    return k.reshape(channels).astype(np.float64)


def _fold_affine_into_batchnorm(g: Graph) -> None:
    """BatchNormalization -> Mul/Add by per-channel constants becomes one BatchNormalization
    (y*k: scale and bias times k; y+k: bias plus k), as long as the BN output (and each
    folded result) has no other reader. A BatchNormalization of a Conv is left to
    ``_fold_batchnorm`` alone: folding the Mul/Add into the conv weights as well moves
    DenseNet-121's logits by more than the 1e-5 it must stay within onnxruntime's (which
    keeps them as separate float32 ops)."""
    uses, cons = _uses(g), _consumers(g)
    convs = {n.outputs[0] for n in g.nodes if n.op == "Conv" and not n.domain and n.outputs}
    dead: set[int] = set()
    for i, bn in enumerate(g.nodes):
        if (
            bn.op != "BatchNormalization"
            or bn.domain
            or bn.attrs.get("training_mode", 0)
            or len([o for o in bn.outputs if o]) != 1
            or len(bn.inputs) < 5
            or (bn.inputs[0] in convs and uses[bn.inputs[0]] == 1)  # see the docstring
        ):
            continue
        params = [g.constants.get(x) for x in bn.inputs[1:5]]
        v = g.values.get(bn.inputs[0])
        if any(p is None for p in params) or v is None or v.shape is None:
            continue
        scale, bias = (np.asarray(p, np.float64).copy() for p in params[:2])
        out, rank, folded = bn.outputs[0], len(v.shape), False
        while uses[out] == 1 and len(cons.get(out, [])) == 1:
            j = cons[out][0]
            op = g.nodes[j]
            if op.domain or op.op not in ("Mul", "Add") or j in dead or len(op.inputs) != 2:
                break
            other = op.inputs[1] if op.inputs[0] == out else op.inputs[0]
            k = g.constants.get(other)
            kv = (
                None if k is None or other == out else _per_channel(np.asarray(k), scale.size, rank)
            )
            if kv is None or np.asarray(k).dtype != np.asarray(params[0]).dtype:
                break
            if op.op == "Mul":
                scale *= kv
                bias *= kv
            else:
                bias += kv
            out, folded = op.outputs[0], True
            dead.add(j)
        if folded:
            dt = np.asarray(params[0]).dtype
            sname = _free_name(g, "", uses, f"{out}__bn_scale")
            g.constants[sname] = scale.astype(dt)
            bname = _free_name(g, "", uses, f"{out}__bn_bias")
            g.constants[bname] = bias.astype(dt)
            ins = [bn.inputs[0], sname, bname, *bn.inputs[3:5]]
            g.nodes[i] = replace(bn, inputs=ins, outputs=[out])
    g.nodes[:] = [n for k, n in enumerate(g.nodes) if k not in dead]


def _affine_to_batchnorm(g: Graph) -> None:
    """x * k1 + k2 with per-channel float constants (a Caffe2 scale layer left after a conv
    whose BatchNormalization folded into it, as in DenseNet-121) becomes a
    BatchNormalization with scale k1, bias k2, mean 0, variance 1 and epsilon 0, which
    computes the same two roundings (k1 / sqrt(1) is k1, k2 - 0 * k1 is k2) and then takes
    the activation that follows (FusedBatchNorm). Left alone unless x's rank and channels
    are known, k1 is finite and each intermediate has one reader."""
    uses, cons = _uses(g), _consumers(g)
    dead: set[int] = set()
    for i, mul in enumerate(g.nodes):
        if mul.op != "Mul" or mul.domain or len(mul.inputs) != 2 or uses[mul.outputs[0]] != 1:
            continue
        (j,) = cons.get(mul.outputs[0], [None]) or [None]
        if j is None or j in dead:
            continue
        add = g.nodes[j]
        if add.op != "Add" or add.domain or len(add.inputs) != 2:
            continue
        x, k1 = (mul.inputs[1], mul.inputs[0]) if mul.inputs[0] in g.constants else mul.inputs
        k2 = add.inputs[1] if add.inputs[0] == mul.outputs[0] else add.inputs[0]
        v = g.values.get(x)
        if x in g.constants or k1 not in g.constants or k2 not in g.constants or k2 == x:
            continue
        if v is None or v.shape is None or len(v.shape) < 2 or not isinstance(v.shape[1], int):
            continue
        a, c = np.asarray(g.constants[k1]), np.asarray(g.constants[k2])
        if v.dtype not in (np.float32, np.float64) or a.dtype != v.dtype or c.dtype != v.dtype:
            continue
        channels, rank = v.shape[1], len(v.shape)
        av, cv = _per_channel(a, channels, rank), _per_channel(c, channels, rank)
        if av is None or cv is None or not np.isfinite(av).all():
            continue
        out = add.outputs[0]
        names = []
        for part, value in (("scale", av), ("bias", cv), ("mean", 0.0), ("var", 1.0)):
            name = _free_name(g, "", uses, f"{out}__affine_{part}")
            g.constants[name] = np.broadcast_to(np.asarray(value, v.dtype), (channels,)).copy()
            names.append(name)
        g.nodes[i] = Node("BatchNormalization", [x, *names], [out], {"epsilon": 0.0}, "", mul.name)
        dead.add(j)
    g.nodes[:] = [n for k, n in enumerate(g.nodes) if k not in dead]


def _fold_batchnorm(g: Graph) -> None:
    uses, cons = _uses(g), _consumers(g)
    dead: set[int] = set()
    for i, conv in enumerate(g.nodes):
        if conv.op != "Conv" or conv.domain or len(conv.outputs) != 1 or uses[conv.outputs[0]] != 1:
            continue
        (j,) = cons.get(conv.outputs[0], [None]) or [None]
        if j is None:
            continue
        bn = g.nodes[j]
        if (
            bn.op != "BatchNormalization"
            or bn.attrs.get("training_mode", 0)
            or len([o for o in bn.outputs if o]) != 1
        ):
            continue
        params = [g.constants.get(x) for x in bn.inputs[1:5]]
        w = g.constants.get(conv.inputs[1])
        b = g.constants.get(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else None
        if w is None or any(p is None for p in params) or w.dtype != np.float32:
            continue
        if len(conv.inputs) > 2 and conv.inputs[2] and b is None:
            continue
        scale, bias, mean, var = (np.asarray(p, dtype=np.float64) for p in params)
        s = scale / np.sqrt(var + bn.attrs.get("epsilon", 1e-5))
        new_w = (w.astype(np.float64) * s.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype)
        old_b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
        new_b = ((old_b - mean) * s + bias).astype(w.dtype)
        for old in conv.inputs[1:] + bn.inputs[1:]:
            if old and uses[old] == 1:  # read by this pair alone: free it now
                g.constants.pop(old, None)
        # a weight read by this conv alone keeps its name (reports and --prune-layer use it)
        wname = _free_name(g, conv.inputs[1], uses, f"{conv.outputs[0]}__w_bn")
        old_b = conv.inputs[2] if len(conv.inputs) > 2 else ""
        bname = _free_name(g, old_b, uses, f"{conv.outputs[0]}__b_bn")
        g.constants[wname], g.constants[bname] = new_w, new_b
        g.nodes[i] = replace(conv, inputs=[conv.inputs[0], wname, bname], outputs=[bn.outputs[0]])
        dead.add(j)
    g.nodes[:] = [n for k, n in enumerate(g.nodes) if k not in dead]


def _scalar(g: Graph, name: str) -> float | None:
    """The value of a one-element float constant, else None."""
    v = g.constants.get(name)
    if v is None:
        return None
    v = np.asarray(v)
    return float(v.reshape(())) if v.size == 1 and v.dtype.kind == "f" else None


def _fuse_gelu(g: Graph) -> None:
    """PyTorch's exact GELU, ``x * 0.5 * (1 + erf(x / sqrt(2)))`` as Div (or Mul by
    1/sqrt(2)), Erf, Add 1 and two Muls in either order, becomes one ONNX Gelu node (its
    kernel works through cache-sized blocks instead of five full-size passes)."""
    uses, cons = _uses(g), _consumers(g)
    producer = {o: i for i, n in enumerate(g.nodes) for o in n.outputs if o}
    dead: set[int] = set()

    def single(value: str, op: str) -> tuple[int, Node, str] | None:
        """The sole reader of ``value`` if it is an ``op`` node: (index, node, other input)."""
        readers = cons.get(value, [])
        if uses[value] != 1 or len(readers) != 1 or readers[0] in dead:
            return None
        n = g.nodes[readers[0]]
        if n.op != op or n.domain or len(n.inputs) != 2 or len(n.outputs) != 1:
            return None
        return readers[0], n, n.inputs[1] if n.inputs[0] == value else n.inputs[0]

    def near(v: float | None, want: float) -> bool:
        return v is not None and abs(v - want) <= 1e-6 * abs(want)

    for e, erf in enumerate(g.nodes):
        if erf.op != "Erf" or erf.domain or not erf.inputs or uses[erf.inputs[0]] != 1:
            continue
        d = producer.get(erf.inputs[0])
        if d is None or d in dead:
            continue
        div = g.nodes[d]
        if div.domain or len(div.inputs) != 2:
            continue
        if div.op == "Div" and near(_scalar(g, div.inputs[1]), math.sqrt(2)):
            x = div.inputs[0]
        elif div.op == "Mul" and near(_scalar(g, div.inputs[1]), math.sqrt(0.5)):
            x = div.inputs[0]
        elif div.op == "Mul" and near(_scalar(g, div.inputs[0]), math.sqrt(0.5)):
            x = div.inputs[1]
        else:
            continue
        add = single(erf.outputs[0], "Add")
        if add is None or not near(_scalar(g, add[2]), 1.0):
            continue
        mul = single(add[1].outputs[0], "Mul")
        if mul is None:
            continue
        chain = [d, e, add[0], mul[0]]
        if mul[2] == x:  # (x * (1 + erf)) * 0.5
            half = single(mul[1].outputs[0], "Mul")
            if half is None or not near(_scalar(g, half[2]), 0.5):
                continue
            chain.append(half[0])
            out = half[1].outputs[0]
        else:  # (x * 0.5) * (1 + erf)
            h = producer.get(mul[2])
            if h is None or h in dead or uses[mul[2]] != 1:
                continue
            pre = g.nodes[h]
            if pre.op != "Mul" or pre.domain or len(pre.inputs) != 2 or x not in pre.inputs:
                continue
            if not near(_scalar(g, pre.inputs[1] if pre.inputs[0] == x else pre.inputs[0]), 0.5):
                continue
            chain.append(h)
            out = mul[1].outputs[0]
        last = max(chain)  # the fused node stands where its last piece stood
        g.nodes[last] = Node("Gelu", [x], [out], {}, "", g.nodes[last].name)
        dead.update(i for i in chain if i != last)
    g.nodes[:] = [n for k, n in enumerate(g.nodes) if k not in dead]


def _free_name(g: Graph, old: str, uses: Counter[str], fresh: str) -> str:
    """``old`` if only the node being rewritten read it (its constant already dropped), else
    ``fresh`` made unique."""
    if old and uses[old] == 1 and old not in g.constants:
        return old
    while fresh in g.constants or fresh in g.values:
        fresh += "_"
    return fresh


def _activation(n: Node, g: Graph) -> list[float] | None:
    """``activation_params`` for a fusable activation node, or None if not fusable."""
    if n.domain or n.op not in _ACTIVATIONS:
        return None
    if n.op == "LeakyRelu":
        return [float(n.attrs.get("alpha", 0.01))]
    if n.op == "HardSigmoid":
        return [float(n.attrs.get("alpha", 0.2)), float(n.attrs.get("beta", 0.5))]
    if n.op == "Clip":
        bounds = []
        for k, default in ((1, -np.inf), (2, np.inf)):
            name = n.inputs[k] if len(n.inputs) > k else ""
            if name and name not in g.constants:
                return None
            bounds.append(float(g.constants[name]) if name else default)
        return bounds
    return []


def _is_add(n: Node) -> bool:
    return not n.domain and (n.op == "Add" or (n.op == "Sum" and len(n.inputs) == 2))


def _same_shape(g: Graph, a: str, b: str) -> bool:
    va, vb = g.values.get(a), g.values.get(b)
    if va is None or vb is None or va.shape is None or vb.shape is None:
        return False
    # equal symbolic names denote equal sizes; an unknown (None) dim proves nothing
    return va.shape == vb.shape and None not in va.shape


def _fuse(g: Graph, op: str, fused: str, residual: bool, single_output: bool = False) -> None:
    """Absorbs an optional residual Add and then one activation into ``op`` nodes
    (``single_output``: only nodes whose other outputs are all omitted)."""
    dead: set[int] = set()
    # Fusion only renames which node produces a value, so counts taken once stay valid.
    uses, cons = _uses(g), _consumers(g)
    for i in range(len(g.nodes)):
        n = g.nodes[i]
        if single_output and n.op == op and not n.domain and n.outputs and not any(n.outputs[1:]):
            if n.attrs.get("training_mode", 0):
                continue
            n = replace(n, outputs=n.outputs[:1])
        if n.op != op or n.domain or len(n.outputs) != 1:
            continue
        inputs, out, attrs = list(n.inputs), n.outputs[0], dict(n.attrs)
        if residual:
            while len(inputs) < 3:
                inputs.append("")
            nxt = cons.get(out, [])
            if uses[out] == 1 and len(nxt) == 1 and nxt[0] not in dead and _is_add(g.nodes[nxt[0]]):
                add = g.nodes[nxt[0]]
                other = add.inputs[1] if add.inputs[0] == out else add.inputs[0]
                if (
                    other != out
                    and _same_shape(g, other, out)
                    and _same_shape(g, add.outputs[0], out)
                ):
                    inputs.append(other)
                    out = add.outputs[0]
                    dead.add(nxt[0])
        nxt = cons.get(out, [])
        if uses[out] == 1 and len(nxt) == 1 and nxt[0] not in dead:
            act = g.nodes[nxt[0]]
            params = _activation(act, g)
            if params is not None:
                attrs["activation"] = act.op
                attrs["activation_params"] = params
                out = act.outputs[0]
                dead.add(nxt[0])
        if out != n.outputs[0] or len(inputs) != len(n.inputs):
            g.nodes[i] = Node(fused, inputs, [out], attrs, FUSED, n.name)
    g.nodes[:] = [n for k, n in enumerate(g.nodes) if k not in dead]


def _shape(g: Graph, name: str) -> tuple[int, ...] | None:
    v = g.values.get(name)
    if v is None or v.shape is None or not all(isinstance(d, int) for d in v.shape):
        return None
    return tuple(v.shape)


def _fuse_shuffle(g: Graph) -> None:
    """Conv -> Reshape (N, s, C/s, *sp) -> Transpose (0, 2, 1, ...) -> Reshape (N, C, *sp)
    becomes one FusedConv with ``shuffle = s``."""
    uses, cons = _uses(g), _consumers(g)
    dead: set[int] = set()

    def only_user(value: str, op: str) -> int | None:
        nxt = cons.get(value, [])
        if uses[value] != 1 or len(nxt) != 1 or nxt[0] in dead:
            return None
        n = g.nodes[nxt[0]]
        return nxt[0] if n.op == op and not n.domain and n.inputs[0] == value else None

    for i, n in enumerate(g.nodes):
        if n.op not in ("Conv", "FusedConv") or n.domain not in ("", FUSED):
            continue
        if n.attrs.get("shuffle") or len(n.outputs) != 1 or n.inputs[1] not in g.constants:
            continue
        shape = _shape(g, n.outputs[0])
        j = only_user(n.outputs[0], "Reshape")
        k = only_user(g.nodes[j].outputs[0], "Transpose") if j is not None else None
        m = only_user(g.nodes[k].outputs[0], "Reshape") if k is not None else None
        if shape is None or m is None or len(shape) < 3:
            continue
        split = _shape(g, g.nodes[j].outputs[0])
        rank = len(shape)
        perm = list(g.nodes[k].attrs.get("perm", []))
        if (
            split is None
            or len(split) != rank + 1
            or split[0] != shape[0]
            or split[1] * split[2] != shape[1]
            or split[3:] != shape[2:]
            or perm != [0, 2, 1, *range(3, rank + 1)]
            or _shape(g, g.nodes[m].outputs[0]) != shape
        ):
            continue
        attrs = dict(n.attrs, shuffle=split[1])
        g.nodes[i] = Node(
            "FusedConv", list(n.inputs), list(g.nodes[m].outputs), attrs, FUSED, n.name
        )
        dead.update((j, k, m))
    g.nodes[:] = [n for k, n in enumerate(g.nodes) if k not in dead]
