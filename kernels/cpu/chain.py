"""modelloader ConvChain: a run of small convs (ungrouped or depthwise 3x3) and residual adds
as one step.

MobileNet-style networks are dozens of small convs (a pointwise expansion, a depthwise
3x3, a pointwise projection and its residual add, per block) whose maps hold a few
thousand values: each conv then costs more in per-step overhead (dispatch, buffers, a
BLAS call, an epilogue or requantization pass) than in arithmetic. The plan pass
``chain_convs`` puts each run of such convs into one ``ConvChain`` node; its prepared
kernel runs the whole run in one compiled call (``_llvm_chain``) on channels-last float32
buffers in a per-thread arena, converting only the chain's input and output. Two kinds
of runs are chained:

* float32 ``Conv``/``FusedConv`` (a clamp or no activation, residuals);
* TFLite int8 ``TFLiteConv`` and ``TFLiteAdd``: the buffers hold each value minus its zero
  point, exact in float32 (as the exact float BLAS path of ``qlinear``), the convs sum
  exact integer products and ``REQUANT`` applies TFLite's fixed-point requantization bit
  for bit, the adds look up ``qlinear``'s table of every result.

``ConvChain(X, consts...)`` has one attribute, ``layers``: per node of the run, in order,
``op``, ``domain``, ``attrs`` (the node's) and ``inputs``: one reference per node input,
``("v", i)`` a chain value (0 is X, i + 1 the output of layer i), ``("p", j)`` the
ConvChain's input j (a constant), or None (omitted); and ``free``, the values it reads
last. Its output is the last layer's. The generic kernel runs the nodes' own kernels one
after another; the compiled form gives the same int8 results, and float results up to the
order of float additions.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelloader import buffers
from modelloader.buffers import take
from modelloader.ir import Node
from modelloader.kernels.cpu import _llvm
from modelloader.kernels.cpu import _llvm_chain as lc
from modelloader.kernels.cpu._registry import kernel, plan_pass, prepares, registry
from modelloader.kernels.cpu.conv import _tup, clamp_bounds, conv_geometry
from modelloader.kernels.registry import KernelFn

FUSED = "modelloader"
#: a conv of more multiply-adds runs through its own kernel (the whole chain does)
MAX_LAYER_MACS = 1 << 23
_FLOAT = {("", "Conv"), (FUSED, "FusedConv")}
_Q_CONV, _Q_ADD = (FUSED, "TFLiteConv"), (FUSED, "TFLiteAdd")


def _kind(n: Node, constants: dict[str, Any]) -> str | None:
    """The kind of run a node can join, "f" (a float conv) or "q" (a TFLite int8 conv or
    add), else None: ungrouped or depthwise 3x3 2-D convs with constant weights, undilated,
    float ones with a clamp or no activation. Sizes and strides are checked at run time."""
    key = (n.domain, n.op)
    if len(n.outputs) != 1:
        return None
    if key == _Q_ADD:
        return "q" if len(n.inputs) == 2 and all(n.inputs) else None
    if key not in _FLOAT and key != _Q_CONV or len(n.inputs) < 2:
        return None
    w = constants.get(n.inputs[1])
    b = constants.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
    want = np.float32 if key in _FLOAT else np.int8
    if type(w) is not np.ndarray or w.dtype != want or w.ndim != 4:
        return None
    if len(n.inputs) > 2 and n.inputs[2] and (type(b) is not np.ndarray or b.shape != w.shape[:1]):
        return None
    a = n.attrs
    if key == _Q_CONV and len(n.inputs) > 3:
        return None
    if key in _FLOAT:
        act = clamp_bounds(str(a.get("activation", "")), tuple(a.get("activation_params", ())))
        if act is None or a.get("shuffle", 0):
            return None
    if any(d != 1 for d in a.get("dilations") or ()):
        return None
    group = int(a.get("group", 1))
    depthwise = w.shape[1:] == (1, 3, 3) and group == w.shape[0]
    return ("f" if key in _FLOAT else "q") if group == 1 or depthwise else None


def _data(n: Node) -> list[str]:
    """The node's inputs computed at run time: the conv's input (and residual), or both
    operands of an add."""
    if n.op == "TFLiteAdd":
        return list(n.inputs)
    z = n.inputs[3] if n.op == "FusedConv" and len(n.inputs) > 3 else ""
    return [n.inputs[0], *([z] if z else [])]


@plan_pass
def chain_convs(nodes: list[Node], constants: dict[str, Any], keep: set[str]) -> list[Node]:
    """Puts each run of two or more consecutive chainable nodes of one kind, each reading
    the one before it (and otherwise earlier values of the run), whose values but the
    last are read only inside the run, into one ConvChain node."""
    readers: dict[str, set[int]] = {}
    for i, n in enumerate(nodes):
        for x in n.inputs:
            readers.setdefault(x, set()).add(i)
    out: list[Node] = []
    i = 0
    while i < len(nodes):
        end = _run_end(nodes, constants, i)
        # shrink until every value but the last is read only by later nodes of the run
        while end > i and not all(
            nodes[k].outputs[0] not in keep
            and readers.get(nodes[k].outputs[0], set()) <= set(range(k + 1, end + 1))
            for k in range(i, end)
        ):
            end -= 1
        if end == i:
            out.append(nodes[i])
            i += 1
            continue
        out.append(_chain_node(nodes[i : end + 1]))
        i = end + 1
    return out


def _run_end(nodes: list[Node], constants: dict[str, Any], i: int) -> int:
    """The last index of the run of chainable nodes from i (i itself if there is none)."""
    kind = _kind(nodes[i], constants)
    if kind is None or nodes[i].op == "TFLiteAdd":
        return i
    first = _data(nodes[i])
    if any(x != first[0] for x in first[1:]):
        return i
    values = {first[0], nodes[i].outputs[0]}
    end = i
    while end + 1 < len(nodes):
        n = nodes[end + 1]
        if _kind(n, constants) != kind:
            break
        data = _data(n)
        if nodes[end].outputs[0] not in data[:2]:
            break
        if n.op != "TFLiteAdd" and data[0] != nodes[end].outputs[0]:
            break
        if not all(x in values for x in data):
            break
        values.add(n.outputs[0])
        end += 1
    return end


def _chain_node(run: Sequence[Node]) -> Node:
    inputs = [_data(run[0])[0]]
    index = {inputs[0]: 0}
    layers = []
    for n in run:
        data = set(_data(n))
        refs: list[tuple[str, int] | None] = []
        for x in n.inputs:
            if not x:
                refs.append(None)
            elif x in data:
                refs.append(("v", index[x]))
            else:
                refs.append(("p", len(inputs)))
                inputs.append(x)
        layers.append({"op": n.op, "domain": n.domain, "attrs": dict(n.attrs), "inputs": refs})
        index[n.outputs[0]] = len(index)
    last = {r[1]: i for i, layer in enumerate(layers) for r in layer["inputs"] if r and r[0] == "v"}
    for i, layer in enumerate(layers):
        # the values (not the input, not the output) read last by this layer
        layer["free"] = tuple(v for v, at in last.items() if at == i and 0 < v < len(layers))
    name = f"{run[0].name or run[0].outputs[0]}..{run[-1].name or run[-1].outputs[0]}"
    return Node("ConvChain", inputs, [run[-1].outputs[0]], {"layers": tuple(layers)}, FUSED, name)


def _args(layer: dict, values: dict[int, Any], params: Sequence[Any]) -> list[Any]:
    refs = layer["inputs"]
    args = [None if r is None else (values if r[0] == "v" else params)[r[1]] for r in refs]
    while args and args[-1] is None:
        args.pop()
    return args


@kernel("ConvChain", domain=FUSED)
def conv_chain(
    x: np.ndarray, *params: np.ndarray, layers: Sequence[dict], _prepared: Sequence = ()
) -> np.ndarray:
    """modelloader ConvChain: the layers' own kernels, one after another (``_prepared``:
    their prepared kernels where the caller has them, None elsewhere)."""
    values: dict[int, Any] = {0: x}
    consts = (x, *params)
    pool = buffers.current()
    for i, layer in enumerate(layers):
        args = _args(layer, values, consts)
        fn = _prepared[i] if _prepared else None
        if fn is not None:
            values[i + 1] = fn(*args)
        else:
            fn = registry.lookup(layer["op"], layer["domain"], getattr(args[0], "dtype", None))
            if fn is None:
                raise TypeError(f"ConvChain: no {layer['op']} kernel for {args[0].dtype}")
            values[i + 1] = fn(*args, **layer["attrs"])
        args = None  # type: ignore[assignment]
        # intermediates go back to the run's buffer pool as the executor's would
        for v in layer["free"]:
            if pool is not None:
                pool.release(values, v)
            else:
                values.pop(v)
    return values[len(layers)]


@prepares("ConvChain", domain=FUSED)
def _prepare_chain(consts: tuple, layers: Sequence[dict]) -> KernelFn | None:
    """The compiled chain, per input shape: one ``conv_chain`` call over a per-thread arena
    where every layer fits the loops (batch 1; channels of depthwise convs, of every conv
    output and of every add a multiple of 8; depthwise strides 1 or 2 and pads 0 or 1;
    int8 convs whose products are exact in float32), else the generic kernel."""
    if any(c is None for c in consts[1:]):
        return None
    # the fallback runs each layer as its own prepared node would
    prepared = []
    for layer in layers:
        prep = registry.preparer(layer["op"], layer["domain"])
        refs = layer["inputs"]
        mine = tuple(None if r is None or r[0] == "v" else consts[r[1]] for r in refs)
        try:
            prepared.append(None if prep is None else prep(mine, **layer["attrs"]))
        except Exception:  # noqa: BLE001  the generic kernel reports it
            prepared.append(None)
    if not _llvm.available:
        return lambda x, *params: conv_chain(x, *params, layers=layers, _prepared=prepared)
    recipes: dict[tuple, Any] = {}
    lock = threading.Lock()

    def run(x: np.ndarray, *params: np.ndarray) -> np.ndarray:
        if all(p is c for p, c in zip(params, consts[1:])):
            key = (x.shape, x.dtype)
            recipe = recipes.get(key)
            if recipe is None and key not in recipes:
                with lock:
                    if len(recipes) >= 16:
                        recipes.clear()
                    recipe = recipes[key] = _recipe(key, layers, consts)
            if recipe is not None:
                return recipe(x)
        return conv_chain(x, *params, layers=layers, _prepared=prepared)

    return run


def _recipe(key: tuple, layers: Sequence[dict], consts: tuple) -> Any:
    """fn(x) -> y for inputs of (shape, dtype) ``key``, or None where a layer does not fit
    the loops."""
    shape, dtype = key
    quantized = layers[0]["op"] != "Conv" and layers[0]["op"] != "FusedConv"
    if len(shape) != 4 or shape[0] != 1 or dtype != (np.int8 if quantized else np.float32):
        return None
    try:
        built = _layers(shape[1:], layers, consts, quantized)
    except Exception:  # noqa: BLE001  _Unfit, or a geometry the layers' kernels report on
        return None
    if not _llvm._compiled("chain"):  # built on the first chain that fits
        return None
    specs, shapes, zps, writes, reads = built
    offsets, size = _allocate(shapes, writes, reads)
    programs = []
    for spec in specs:
        programs.append({k: lc.At(offsets[v[1]]) if isinstance(v, tuple) else v for k, v in spec.items()})  # fmt: skip
    widest = max([s["c"] + 8 for s in specs if "wd" in s] + [8])
    local = threading.local()
    c0, h0, w0 = shapes[0]
    m, oh, ow = shapes[-1]
    chain = _llvm._kernel("conv_chain")
    first, last = offsets[0], offsets[len(shapes) - 1]
    size0, size1 = c0 * h0 * w0, m * oh * ow
    zin, zout = np.float32(zps[0]), np.float32(zps[-1])

    def recipe(x: np.ndarray) -> np.ndarray:
        prog = getattr(local, "program", None)
        if prog is None:
            prog = local.program = lc.Program(programs, size, widest)
        buf = prog.arena
        src = buf[first : first + size0].reshape(h0, w0, c0)
        if quantized:
            np.subtract(x[0].transpose(1, 2, 0), zin, out=src)
        else:
            np.copyto(src, x[0].transpose(1, 2, 0))
        prog.run(chain)
        y = take((1, m, oh, ow), dtype)
        res = buf[last : last + size1].reshape(oh, ow, m).transpose(2, 0, 1)
        if quantized:
            np.add(res, zout, out=y[0], casting="unsafe")
        else:
            np.copyto(y[0], res)
        return y

    return recipe


class _Unfit(Exception):
    """A layer the compiled loops do not take (the generic kernel runs the chain)."""


def _layers(shape0: tuple, layers: Sequence[dict], consts: tuple, quantized: bool) -> tuple:
    """The loop descriptors of the chain for an input of (C, H, W) ``shape0``: (specs,
    shapes of the chain values, the zero point each is stored less, and per value the
    index of the spec writing it and of the last spec reading it). Arena positions are
    ("v", value) placeholders."""
    from modelloader.kernels.cpu import qlinear

    shapes = [shape0]
    zps = [int(layers[0]["attrs"].get("x_zp", 0)) if quantized else 0]
    reads = {0: 0}
    writes = {0: -1}
    specs: list[dict] = []

    def read(v: int) -> tuple[str, int]:
        reads[v] = len(specs)
        return ("v", v)

    for layer in layers:
        refs = layer["inputs"]
        a = layer["attrs"]
        out = len(shapes)
        if layer["op"] == "TFLiteAdd":
            va, vb = refs[0][1], refs[1][1]
            if shapes[va] != shapes[vb] or shapes[va][0] % 8:
                raise _Unfit
            table = qlinear._pair_table(
                qlinear._tflite_addsub, np.dtype(np.int8), (*qlinear._pair_params(a), 1)
            )
            n = int(np.prod(shapes[va]))
            specs.append({"kind": lc.ADD_TABLE, "src": read(va), "z": read(vb), "w": table,
                          "np": n, "c": zps[va], "m": zps[vb], "pt": int(a.get("y_zp", 0)),
                          "dst": ("v", out)})  # fmt: skip
            writes[out] = len(specs) - 1
            shapes.append(shapes[va])
            zps.append(int(a.get("y_zp", 0)))
            continue
        src = refs[0][1]
        w = consts[refs[1][1]]
        b = consts[refs[2][1]] if len(refs) > 2 and refs[2] is not None else None
        c, h, wd = shapes[src]
        try:
            geo = conv_geometry(
                (1, c, h, wd), w.shape, a.get("auto_pad", "NOTSET"),
                *(_tup(a.get(k)) for k in ("dilations", "kernel_shape", "pads", "strides")),
            )  # fmt: skip
        except ValueError:
            raise _Unfit from None
        k, s, _, p, (oh, ow) = geo
        m = w.shape[0]
        if m * oh * ow * w[0].size > MAX_LAYER_MACS:
            raise _Unfit  # BLAS's threads do better on large products
        if quantized:
            if int(a.get("x_zp", 0)) != zps[src]:
                raise _Unfit
            cv = qlinear._TflConv(w, b, np.dtype(np.int8), a)
            if cv.ft != np.float32 or cv.req is None:
                raise _Unfit
            wf, bias, lo, hi = cv.wmat, np.zeros(m, np.float32), -np.inf, np.inf
        else:
            bounds = clamp_bounds(
                str(a.get("activation", "")), tuple(a.get("activation_params", ()))
            )
            assert bounds is not None  # the plan pass chains clamps only
            wf, lo, hi = w, *bounds
            bias = np.zeros(m, np.float32) if b is None else np.asarray(b, np.float32)
        spec: dict[str, Any] = {"dst": ("v", out), "src": read(src), "b": np.ascontiguousarray(bias),
                                "lo": float(lo), "hi": float(hi)}  # fmt: skip
        z = refs[3][1] if len(refs) > 3 and refs[3] is not None else None
        if w.shape[2:] == (1, 1) and int(a.get("group", 1)) == 1:
            if any(p) or s != [1, 1] or m % 8 or w.shape[1] != c:
                raise _Unfit
            spec.update(kind=lc.PW, np=h * wd, c=c, m=m, w=np.ascontiguousarray(wf.reshape(m, c).T))
            if z is not None:
                if shapes[z] != (m, oh, ow):
                    raise _Unfit
                spec.update(kind=lc.PW_RESIDUAL, z=read(z))
        elif int(a.get("group", 1)) == 1:
            if z is not None or m % 8 or s[0] != s[1] or min(p) < 0 or w.shape[1] != c:
                raise _Unfit
            spec.update(kind=lc.CONV, c=c, h=h, wd=wd, oh=oh, ow=ow, pt=p[0], pl=p[1], m=m,
                        kh=k[0], kw=k[1], s=s[0], z=lc.ZEROS,
                        w=np.ascontiguousarray(wf.transpose(2, 3, 1, 0)))  # fmt: skip
        else:
            if z is not None or m != c or c % 8 or s[0] != s[1] or s[0] not in (1, 2):
                raise _Unfit
            if k != [3, 3] or not all(v in (0, 1) for v in p):
                raise _Unfit
            spec.update(kind=lc.DW_S1 if s[0] == 1 else lc.DW_S2, c=c, h=h, wd=wd, oh=oh,
                        ow=ow, pt=p[0], pl=p[1], z=lc.ZEROS,
                        w=np.ascontiguousarray(wf.reshape(m, 9).T))  # fmt: skip
        writes[out] = len(specs)
        specs.append(spec)
        if quantized:
            read(out)  # requantized in place
            specs.append(_requant_spec(cv.req, out, m, oh * ow, a))
        shapes.append((m, oh, ow))
        zps.append(int(a.get("y_zp", 0)) if quantized else 0)
    reads[len(shapes) - 1] = len(specs)  # the output outlives the chain
    return specs, shapes, zps, writes, reads


def _requant_spec(req: Any, out: int, m: int, pixels: int, attrs: dict) -> dict:
    """The REQUANT layer applying an int8 conv's ``_TflRequant`` to its output (value
    ``out``, pixels x m, in place)."""
    from modelloader.kernels.cpu import qlinear

    right = np.zeros(m, np.int32) if req.right is None else req.right.reshape(m)
    if req.right is None:
        negm = np.zeros(m, np.int32)
    elif req.neg_mask is None:
        negm = np.full(m, -1, np.int32)
    else:
        negm = req.neg_mask.reshape(m)
    off = np.zeros(m, np.int32) if req.off is None else req.off.reshape(m)
    lo, hi = qlinear._act_range(np.dtype(np.int8), attrs.get("act_min"), attrs.get("act_max"))
    return {"kind": lc.REQUANT, "dst": ("v", out), "np": pixels, "m": m,
            "w": np.ascontiguousarray(req.q.reshape(m), np.int64),
            "b": np.ascontiguousarray(req.c1.reshape(m), np.int64),
            "src": np.ascontiguousarray(right, np.int32), "z": np.ascontiguousarray(negm, np.int32),
            "h": np.ascontiguousarray(off, np.int32), "c": int(req.zp), "oh": int(lo),
            "ow": int(hi), "pt": int(attrs.get("y_zp", 0))}  # fmt: skip


def _allocate(
    shapes: list[tuple[int, ...]], writes: dict[int, int], reads: dict[int, int]
) -> tuple[list[int], int]:
    """Arena offsets (elements) of the chain values and the arena's size: each value is
    placed first-fit, when its spec (``writes``) runs, where no value still to be read
    lies (a value is dead once the last spec reading it, ``reads``, has run)."""
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = [0] * len(shapes)
    live: list[tuple[int, int, int]] = [(0, sizes[0], 0)]  # (offset, size, value)
    top = sizes[0]
    for v in range(1, len(shapes)):
        live = [t for t in live if reads.get(t[2], 1 << 62) >= writes[v]]
        start = 0
        for off, size, _ in sorted(live):
            if start + sizes[v] <= off:
                break
            start = max(start, off + size)
        offsets[v] = start
        top = max(top, start + sizes[v])
        live.append((start, sizes[v], v))
    return offsets, top
