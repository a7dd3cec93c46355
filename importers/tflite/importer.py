"""``TFLModel`` records -> ``modelloader.ir.Graph`` (NHWC kept at the boundary)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from modelloader.errors import UnsupportedOpError
from modelloader.importers.tflite import ops as _ops  # noqa: F401  (registers the table rows)
from modelloader.importers.tflite.reader import Signature, TFLModel, TFLSubgraph
from modelloader.importers.tflite.table import TFLContext, convert_op, densify_tensor
from modelloader.ir import Graph, Value
from modelloader.ir.builder import refusals_reported, run_row
from modelloader.kernels.registry import Registry


class _Importer:
    def __init__(self, model: TFLModel, registry: Registry, name: str) -> None:
        self.model = model
        self.registry = registry
        self.name = name
        self.graphs: dict[int, Graph] = {}
        self.missing: list[tuple[str, str, int]] = []
        self.counter = [0]
        self.building: set[int] = set()
        self.main = 0

    def signature(self) -> Signature | None:
        sigs = self.model.signatures
        if not sigs:
            return None
        for s in sigs:
            if s.key == "serving_default":
                return s
        return sigs[0]

    def names(self, sg: TFLSubgraph, sig: Signature | None) -> list[str]:
        prefix = "" if sg.index == self.main else f"sg{sg.index}/"
        rename: dict[int, str] = {}
        if sig is not None:
            rename.update({t: n for n, t in sig.inputs.items()})
            rename.update({t: n for n, t in sig.outputs.items()})
        seen: set[str] = set(rename.values())
        out = []
        for t in sg.tensors:
            if t.index in rename:
                out.append(rename[t.index])
                continue
            n = prefix + (t.name or f"tensor{t.index}")
            if n in seen:
                n = f"{n}#{t.index}"
            seen.add(n)
            out.append(n)
        return out

    def graph(self, index: int, sig: Signature | None = None) -> Graph:
        if index in self.graphs:
            return self.graphs[index]
        sg = self.model.subgraphs[index]
        names = self.names(sg, sig)
        ctx = TFLContext(self.model, sg, names, self.subgraph, counter=self.counter)
        for t in sg.tensors:
            data = densify_tensor(t)
            if data is not None:
                ctx.constants[names[t.index]] = data
                if t.sparsity is not None:
                    ctx.sparse_sources.add(names[t.index])
        ctx.token = ctx.constant(np.zeros((), np.bool_), "token")
        for op in sg.operators:
            if run_row(self.missing, convert_op, op, ctx) is False:
                kind = "tflite custom op" if op.custom else "tflite builtin"
                self.missing.append((op.name, kind, op.version))
        for n in ctx.nodes:
            if not self.registry.supports(n.op, n.domain):
                self.missing.append((n.op, n.domain, 0))

        def value(i: int) -> Value:
            t = sg.tensors[i]
            shape: tuple[Any, ...]
            if t.shape_signature is not None and len(t.shape_signature) == len(t.shape):
                shape = tuple(None if d < 0 else d for d in t.shape_signature)
            else:
                shape = t.shape
            return Value(names[i], t.dtype, shape)

        in_idx, out_idx = list(sg.inputs), list(sg.outputs)
        if sig is not None:  # signature tensors, in subgraph order like get_input_details
            in_idx = sorted(sig.inputs.values(), key=lambda t: _position(t, sg.inputs))
            out_idx = sorted(sig.outputs.values(), key=lambda t: _position(t, sg.outputs))
        g = Graph(
            name=sg.name,
            inputs=[value(i) for i in in_idx if names[i] not in ctx.constants],
            outputs=[value(i) for i in out_idx],
            nodes=ctx.nodes,
            constants=ctx.constants,
            sparse_sources={n for n in ctx.sparse_sources if n in ctx.constants},
        )
        # every tensor the file declares, so rewrites can prove shapes equal (a residual Add)
        for i, t in enumerate(sg.tensors):
            if names[i] not in ctx.constants and not t.is_variable:
                g.values[names[i]] = value(i)
        for v in g.inputs + g.outputs:
            g.values[v.name] = v
        g.metadata["quantization"] = {
            names[i]: sg.tensors[i].quant
            for i in (*in_idx, *out_idx)
            if sg.tensors[i].quant is not None
        }
        self.graphs[index] = g
        return g

    def subgraph(self, index: int) -> Graph:
        if not 0 <= index < len(self.model.subgraphs):
            from modelloader.errors import ModelFormatError

            raise ModelFormatError(
                f"{self.name}: an operator refers to subgraph {index}, which does not exist"
            )
        if index in self.building:
            from modelloader.errors import ModelFormatError

            raise ModelFormatError(f"{self.name}: subgraph {index} calls itself recursively")
        self.building.add(index)
        try:
            return self.graph(index)
        finally:
            self.building.discard(index)


def import_model(model: TFLModel, registry: Registry, name: str = "<model>") -> Graph:
    """Builds the IR of the model's main subgraph (or its signature's subgraph).

    Raises ``UnsupportedOpError`` listing every builtin (by name) and custom op (by
    custom code) without a table row or kernel, over all subgraphs.
    """
    imp = _Importer(model, registry, name)
    sig = imp.signature()
    main = imp.main = sig.subgraph if sig is not None else 0
    imp.building.add(main)
    with refusals_reported(imp.missing):
        graph = imp.graph(main, sig)
    # every subgraph is checked for unsupported ops, even ones no operator calls
    for i in range(len(model.subgraphs)):
        if i not in imp.graphs:
            try:
                imp.subgraph(i)
            except Exception:  # noqa: BLE001  unreachable subgraphs may be malformed; ignore
                pass
    if imp.missing:
        raise UnsupportedOpError(imp.missing)
    graph.metadata["metadata"] = dict(model.metadata)
    graph.metadata["tflite_version"] = model.version
    graph.metadata["description"] = model.description
    graph.metadata["signature"] = sig.key if sig is not None else None
    graph.metadata["source_ops"] = Counter(
        f"custom:{op.name}" if op.custom else op.name
        for sg in model.subgraphs
        for op in sg.operators
    )
    return graph


def _position(tensor: int, order: list[int]) -> tuple[int, int]:
    """Sort key: place in the subgraph's own input/output list, then tensor index."""
    return (order.index(tensor), 0) if tensor in order else (len(order), tensor)
