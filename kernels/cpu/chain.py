"""modelloader ConvChain: a run of float pointwise and depthwise 3x3 convs as one step.

MobileNet-style networks are dozens of small convs (a pointwise expansion, a depthwise
3x3, a pointwise projection and its residual add, per block) whose maps are a few
thousand values: each conv then costs more in per-step overhead (dispatch, buffers, a
BLAS call and an epilogue pass) than in arithmetic. The plan pass ``chain_convs`` puts
each run of such convs into one ``ConvChain`` node; its prepared kernel runs the whole run
in one compiled call (``_llvm_chain``) on channels-last buffers in a per-thread arena,
converting only the chain's input and output.

``ConvChain(X, W0, [B0,] W1, ...)`` with attribute ``layers``: one dict per conv, in
order, with ``attrs`` (the Conv/FusedConv attributes), ``src`` and ``z`` (which chain
value the conv reads and adds as residual: 0 is X, i + 1 the output of layer i; ``z`` -1
for none) and ``w``, ``b`` (input positions; ``b`` -1 for none). Its output is the last
layer's. The generic kernel runs the layers through ``fused_conv`` one by one, which is
what the separate nodes computed; the compiled form differs from it only in the order of
float additions.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelloader.buffers import take
from modelloader.ir import Node
from modelloader.kernels.cpu import _llvm
from modelloader.kernels.cpu import _llvm_chain as lc
from modelloader.kernels.cpu._registry import kernel, plan_pass, prepares
from modelloader.kernels.cpu.conv import clamp_bounds, conv_geometry, fused_conv
from modelloader.kernels.registry import KernelFn

FUSED = "modelloader"
_CONVS = {("", "Conv"), (FUSED, "FusedConv")}


def _kind(n: Node, constants: dict[str, Any]) -> str | None:
    """ "pw" or "dw" for a conv a chain can hold (constant float32 weights, a clamp or no
    activation, unit dilation, no shuffle), else None. Sizes are checked at run time."""
    if (n.domain, n.op) not in _CONVS or len(n.outputs) != 1 or len(n.inputs) < 2:
        return None
    w = constants.get(n.inputs[1])
    b = constants.get(n.inputs[2]) if len(n.inputs) > 2 and n.inputs[2] else None
    if type(w) is not np.ndarray or w.dtype != np.float32 or w.ndim != 4:
        return None
    if len(n.inputs) > 2 and n.inputs[2] and (type(b) is not np.ndarray or b.shape != w.shape[:1]):
        return None
    a = n.attrs
    act = clamp_bounds(str(a.get("activation", "")), tuple(a.get("activation_params", ())))
    if act is None or a.get("shuffle", 0) or any(d != 1 for d in a.get("dilations") or ()):
        return None
    group = int(a.get("group", 1))
    if w.shape[2:] == (1, 1) and group == 1:
        return "pw"
    if w.shape[1:] == (1, 3, 3) and group == w.shape[0]:
        return "dw"
    return None


@plan_pass
def chain_convs(nodes: list[Node], constants: dict[str, Any], keep: set[str]) -> list[Node]:
    """Puts each run of two or more consecutive chainable convs, each reading the one
    before it (residuals: any earlier value of the run), whose values but the last are
    read only inside the run, into one ConvChain node."""
    readers: dict[str, set[int]] = {}
    for i, n in enumerate(nodes):
        for x in n.inputs:
            readers.setdefault(x, set()).add(i)
    out: list[Node] = []
    i = 0
    while i < len(nodes):
        end = _run_end(nodes, constants, i)
        # shrink until every value but the last is read only by later convs of the run
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
    """The last index of the run of chainable convs from i (i itself if it is none)."""
    if _kind(nodes[i], constants) is None:
        return i
    values = {nodes[i].inputs[0], nodes[i].outputs[0]}
    if _residual(nodes[i]) not in ("", *values):
        return i
    end = i
    while end + 1 < len(nodes):
        n = nodes[end + 1]
        if _kind(n, constants) is None or n.inputs[0] != nodes[end].outputs[0]:
            break
        if _residual(n) not in ("", *values):
            break
        values.add(n.outputs[0])
        end += 1
    return end


def _residual(n: Node) -> str:
    return n.inputs[3] if n.op == "FusedConv" and len(n.inputs) > 3 else ""


def _chain_node(run: Sequence[Node]) -> Node:
    inputs = [run[0].inputs[0]]
    index = {run[0].inputs[0]: 0}
    layers = []
    for n in run:
        w = len(inputs)
        inputs.append(n.inputs[1])
        b = -1
        if len(n.inputs) > 2 and n.inputs[2]:
            b = len(inputs)
            inputs.append(n.inputs[2])
        z = _residual(n)
        layers.append(
            {"attrs": dict(n.attrs), "src": index[n.inputs[0]], "z": index[z] if z else -1,
             "w": w, "b": b}
        )  # fmt: skip
        index[n.outputs[0]] = len(index)
    name = f"{run[0].name or run[0].outputs[0]}..{run[-1].name or run[-1].outputs[0]}"
    return Node("ConvChain", inputs, [run[-1].outputs[0]], {"layers": tuple(layers)}, FUSED, name)


@kernel("ConvChain", domain=FUSED)
def conv_chain(x: np.ndarray, *params: np.ndarray, layers: Sequence[dict]) -> np.ndarray:
    """modelloader ConvChain: the layers through ``fused_conv``, one after another."""
    args = (x, *params)
    values = [x]
    for layer in layers:
        b = args[layer["b"]] if layer["b"] >= 0 else None
        z = values[layer["z"]] if layer["z"] >= 0 else None
        values.append(fused_conv(values[layer["src"]], args[layer["w"]], b, z, **layer["attrs"]))
    return values[-1]


@prepares("ConvChain", domain=FUSED)
def _prepare_chain(consts: tuple, layers: Sequence[dict]) -> KernelFn | None:
    """The compiled chain, per input shape: one ``conv_chain`` call over a per-thread arena
    where every layer fits its kernels (batch 1, float32, channels of the depthwise convs
    and of every output a multiple of 8, depthwise strides 1 or 2 and pads 0 or 1), else
    the generic kernel."""
    if not _llvm.available:
        return None
    packed = []
    for layer in layers:
        w = consts[layer["w"]]
        b = consts[layer["b"]] if layer["b"] >= 0 else None
        if w is None or (layer["b"] >= 0 and b is None):
            return None
        m = w.shape[0]
        bias = np.zeros(m, np.float32) if b is None else np.ascontiguousarray(b, np.float32)
        if w.shape[1:] == (1, 3, 3):
            taps = np.ascontiguousarray(w.reshape(m, 9).T)  # (9, C) tap-major
        else:
            taps = np.ascontiguousarray(w.reshape(m, -1).T)  # (C, M)
        packed.append((taps, bias, w.shape))
    recipes: dict[tuple, Any] = {}
    lock = threading.Lock()

    def run(x: np.ndarray, *params: np.ndarray) -> np.ndarray:
        if all(p is c for p, c in zip(params, consts[1:])) and x.dtype == np.float32:
            recipe = recipes.get(x.shape)
            if recipe is None and x.shape not in recipes:
                with lock:
                    if len(recipes) >= 16:
                        recipes.clear()
                    recipe = recipes[x.shape] = _recipe(x.shape, layers, packed)
            if recipe is not None:
                return recipe(x)
        return conv_chain(x, *params, layers=layers)

    return run


def _recipe(shape: tuple[int, ...], layers: Sequence[dict], packed: list) -> Any:
    """fn(x) -> y for inputs of ``shape``, or None where a layer does not fit the kernels."""
    if len(shape) != 4 or shape[0] != 1:
        return None
    shapes = [shape[1:]]  # (C, H, W) of every chain value
    specs = []
    for layer, (taps, bias, wshape) in zip(layers, packed):
        c, h, w = shapes[layer["src"]]
        a = layer["attrs"]
        m = wshape[0]
        try:
            k, s, _, p, (oh, ow) = conv_geometry(
                (1, c, h, w), wshape, a.get("auto_pad", "NOTSET"),
                *(_tup(a.get(key)) for key in ("dilations", "kernel_shape", "pads", "strides")),
            )  # fmt: skip
        except ValueError:
            return None
        bounds = clamp_bounds(str(a.get("activation", "")), tuple(a.get("activation_params", ())))
        assert bounds is not None  # the plan pass chains clamps only
        spec = {"w": taps, "b": bias, "lo": float(bounds[0]), "hi": float(bounds[1]),
                "src": layer["src"], "z": layer["z"]}  # fmt: skip
        if wshape[2:] == (1, 1) and int(a.get("group", 1)) == 1:
            if any(p) or s != [1, 1] or k != [1, 1] or m % 8 or wshape[1] != c:
                return None
            spec.update(kind=lc.PW_RESIDUAL if layer["z"] >= 0 else lc.PW, np=h * w, c=c, m=m)
        else:
            if layer["z"] >= 0 or m != c or c % 8 or k != [3, 3] or s[0] != s[1]:
                return None
            if s[0] not in (1, 2) or not all(v in (0, 1) for v in p):
                return None
            spec.update(kind=lc.DW_S1 if s[0] == 1 else lc.DW_S2, c=c, h=h, wd=w, oh=oh,
                        ow=ow, pt=p[0], pl=p[1])  # fmt: skip
        if layer["z"] >= 0 and shapes[layer["z"]] != (m, oh, ow):
            return None
        shapes.append((m, oh, ow))
        specs.append(spec)
    offsets, arena = _allocate(shapes, specs)
    for i, spec in enumerate(specs):
        spec["src"], spec["dst"] = offsets[spec["src"]], offsets[i + 1]
        spec["z"] = offsets[spec["z"]] if spec["z"] >= 0 else -1
    widest = max([s["wd"] * s["c"] + 3 * s["c"] for s in specs if "wd" in s] + [8])
    local = threading.local()
    c0, h0, w0 = shapes[0]
    m, oh, ow = shapes[-1]
    chain = _llvm._kernel("conv_chain")
    size0, size1 = c0 * h0 * w0, m * oh * ow
    first, last = offsets[0], offsets[-1]

    def recipe(x: np.ndarray) -> np.ndarray:
        prog = getattr(local, "program", None)
        if prog is None:
            prog = local.program = lc.Program(specs, arena, widest)
        buf = prog.arena
        np.copyto(buf[first : first + size0].reshape(h0, w0, c0), x[0].transpose(1, 2, 0))
        prog.run(chain)
        y = take((1, m, oh, ow), np.float32)
        np.copyto(y[0], buf[last : last + size1].reshape(oh, ow, m).transpose(2, 0, 1))
        return y

    return recipe


def _allocate(shapes: list[tuple[int, ...]], specs: list[dict]) -> tuple[list[int], int]:
    """Arena offsets (elements) of the chain values: value 0 the input, value i + 1 layer
    i's output, each placed first-fit in memory no live value holds (a value lives from
    its layer until the last layer reading it); and the arena's size."""
    last_read = {0: 0}
    for i, spec in enumerate(specs):
        for v in (spec["src"], spec["z"]):
            if v >= 0:
                last_read[v] = i
    sizes = [int(np.prod(s)) for s in shapes]
    offsets = [0] * len(shapes)
    live: list[tuple[int, int, int]] = [(0, sizes[0], 0)]  # (offset, size, value)
    top = sizes[0]
    for i in range(len(specs)):
        v = i + 1
        start = 0
        for off, size, _ in sorted(live):
            if start + sizes[v] <= off:
                break
            start = max(start, off + size)
        offsets[v] = start
        top = max(top, start + sizes[v])
        live.append((start, sizes[v], v))
        live = [t for t in live if last_read.get(t[2], len(specs)) > i or t[2] == v]
    return offsets, top


def _tup(v: Any) -> tuple[int, ...] | None:
    return None if v is None else tuple(int(x) for x in v)
