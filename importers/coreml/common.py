"""Graph-building helpers shared by the NeuralNetwork and ML Program importers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelloader.ir import Node
from modelloader.ir.builder import GraphBuilder, onnx_dtype

#: domain of the kernels in kernels/cpu/coreml_ops.py
ML = "modelloader"


@dataclass
class Builder(GraphBuilder):
    """Nodes and constants under construction, with fresh-name generation."""

    prefix: str = ""
    nodes: list[Node] = field(default_factory=list)
    constants: dict[str, Any] = field(default_factory=dict)
    counter: list[int] = field(default_factory=lambda: [0])

    @property
    def fresh_prefix(self) -> str:  # type: ignore[override]
        return f"__coreml_{self.prefix}"

    def cast(self, x: str, dtype: Any) -> str:
        return self.tmp("Cast", [x], to=onnx_dtype(dtype))
