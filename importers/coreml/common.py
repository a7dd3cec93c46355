"""Graph-building helpers shared by the NeuralNetwork and ML Program importers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from modelloader.ir import Node

#: domain of the kernels in kernels/cpu/coreml_ops.py
ML = "modelloader"


@dataclass
class Builder:
    """Nodes and constants under construction, with fresh-name generation."""

    prefix: str = ""
    nodes: list[Node] = field(default_factory=list)
    constants: dict[str, Any] = field(default_factory=dict)
    counter: list[int] = field(default_factory=lambda: [0])

    def fresh(self, hint: str = "t") -> str:
        self.counter[0] += 1
        return f"__coreml_{self.prefix}{hint}_{self.counter[0]}"

    def constant(self, value: Any, hint: str = "c") -> str:
        name = self.fresh(hint)
        self.constants[name] = np.asarray(value)
        return name

    def int64(self, values: Any) -> str:
        return self.constant(np.asarray(values, np.int64).reshape(-1), "i")

    def node(
        self, op: str, inputs: list[str], outputs: list[str], domain: str = "", **attrs: Any
    ) -> None:
        self.nodes.append(Node(op, list(inputs), list(outputs), attrs, domain))

    def tmp(
        self, op: str, inputs: list[str], domain: str = "", hint: str = "t", **attrs: Any
    ) -> str:
        out = self.fresh(hint)
        self.node(op, inputs, [out], domain, **attrs)
        return out

    def cast(self, x: str, dtype: Any) -> str:
        return self.tmp("Cast", [x], to=onnx_dtype(dtype))


def onnx_dtype(dt: Any) -> int:
    return int(onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)))
