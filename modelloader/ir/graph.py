"""Graph, Node and Value: the IR's data model."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: A dimension is a known size, a symbolic name (``"batch"``) or unknown (``None``).
Dim = int | str | None


class ValueKind(enum.Enum):
    TENSOR = "tensor"
    SEQUENCE = "sequence"  # a Python list of arrays at run time
    OPTIONAL = "optional"  # None or the wrapped value at run time
    MAP = "map"


@dataclass
class Value:
    """A named value with its element type and (possibly symbolic) shape.

    ``dtype`` is a NumPy dtype (``object`` for strings; ``ml_dtypes`` types for
    bfloat16/float8/int4) or ``None`` when unknown; ``shape`` is ``None`` when even
    the rank is unknown. For sequences/optionals, ``dtype``/``shape`` describe the
    element.
    """

    name: str
    dtype: np.dtype | None = None
    shape: tuple[Dim, ...] | None = None
    kind: ValueKind = ValueKind.TENSOR
    elem_kind: ValueKind | None = None  # kind of an optional's/sequence's element

    def describe(self) -> str:
        dims = (
            "?"
            if self.shape is None
            else "x".join("?" if d is None else str(d) for d in self.shape)
        )
        dt = "?" if self.dtype is None else str(self.dtype)
        prefix = "" if self.kind is ValueKind.TENSOR else f"{self.kind.value} of "
        return f"{self.name}: {prefix}{dt}[{dims}]"


@dataclass
class Node:
    """One op application.

    ``inputs``/``outputs`` are value names; ``""`` marks an omitted optional input or
    output. ``attrs`` hold plain Python values: int, float, str, bytes, lists of those,
    ``np.ndarray`` for tensor attributes, ``Graph`` for subgraphs.
    """

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    name: str = ""

    def subgraphs(self) -> Iterator[Graph]:
        for v in self.attrs.values():
            if isinstance(v, Graph):
                yield v
            elif isinstance(v, list) and v and isinstance(v[0], Graph):
                # list attributes are homogeneous (ONNX GRAPHS): no scan of long number lists
                yield from v

    def label(self) -> str:
        return f"{self.op} node '{self.name or (self.outputs[0] if self.outputs else '?')}'"


@dataclass
class Graph:
    """A computation: declared inputs/outputs, nodes, constants and value infos.

    ``constants`` maps names to arrays (initializers); they may be read-only views of
    a memory-mapped file and must never be written. ``values`` holds what is known
    about every named value (inputs, outputs, intermediates). A subgraph may read
    names from enclosing graphs; ``outer_refs()`` lists them.
    """

    name: str = "main"
    inputs: list[Value] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    constants: dict[str, Any] = field(default_factory=dict)
    values: dict[str, Value] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: constants the source file stored sparse (TFLite SparsityParameters): the planner may
    #: keep them sparse for sparse kernels (``compress.sparse.adopt_sparse``)
    sparse_sources: set[str] = field(default_factory=set)

    def outer_refs(self) -> list[str]:
        """Names this graph (or its nested subgraphs) reads but does not define."""
        defined = {v.name for v in self.inputs} | set(self.constants)
        for n in self.nodes:
            defined.update(o for o in n.outputs if o)
        refs: list[str] = []
        seen: set[str] = set()

        def use(name: str) -> None:
            if name and name not in defined and name not in seen:
                seen.add(name)
                refs.append(name)

        for n in self.nodes:
            for i in n.inputs:
                use(i)
            for g in n.subgraphs():
                for r in g.outer_refs():
                    use(r)
        for o in self.outputs:
            use(o.name)
        return refs

    def walk(self) -> Iterator[Node]:
        """Every node of this graph and of its subgraphs, depth first."""
        for n in self.nodes:
            yield n
            for g in n.subgraphs():
                yield from g.walk()
