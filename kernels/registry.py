"""Kernel registries, one per provider.

The kernel contract (after onnx-reference): a kernel is a plain function called as
``fn(*inputs, **attrs)``.

* ``inputs`` are positional, one per node input, in the op schema's order: NumPy
  arrays for tensors, Python lists of arrays for sequences, ``None`` for an omitted
  optional input (and for an empty optional value).
* ``attrs`` are keyword arguments, only those present on the node; the kernel's
  signature carries the schema defaults. Subgraph attributes arrive as callables
  ``body(*inputs) -> list`` already bound to the enclosing scope.
* It returns one value, or a tuple/list with one entry per schema output (optional
  outputs included; the executor drops those the node does not name).
* It never writes into its inputs (they may be read-only memory-mapped weights) and
  returns arrays of exactly the dtypes the ONNX spec gives.

A kernel may also have a *preparer* (after onnxruntime's kernel construction and weight
prepacking): ``prep(consts, **attrs)``, called once per node when a plan is built, where
``consts`` holds one entry per node input, the constant's value (weights) or None for a
value computed at run time. It returns a kernel for that one node, called as
``fn(*inputs)`` with the attributes already bound, that computes exactly what the generic
kernel computes (same values, same errors) with the per-node work (weight layouts,
requantization constants, geometry) done once; or None to keep the generic kernel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

KernelFn = Callable[..., Any]
Preparer = Callable[..., KernelFn | None]
PlanPass = Callable[[list[Any], dict[str, Any], set[str]], list[Any]]


class Recipes:
    """A prepared kernel's recipes, one per key (input shapes and dtypes), each built on first
    use by ``build(key)``: a callable, or None where the generic kernel is to run (a
    ValueError while building, a geometry the generic kernel reports on, also gives None).
    At most ``limit`` are kept, as dynamic shapes would grow them without bound. Threads may
    share it: a recipe built twice is built alike."""

    def __init__(self, build: Callable[[Any], KernelFn | None], limit: int = 16) -> None:
        self._build = build
        self._limit = limit
        self._made: dict[Any, KernelFn | None] = {}

    def get(self, key: Any) -> KernelFn | None:
        try:
            return self._made[key]
        except KeyError:
            pass
        try:
            fn = self._build(key)
        except ValueError:
            fn = None
        if len(self._made) >= self._limit:
            self._made.clear()
        self._made[key] = fn
        return fn


@dataclass(frozen=True)
class KernelSpec:
    op: str
    domain: str
    fn: KernelFn
    dtypes: frozenset[np.dtype] | None  # dtypes of the first input it handles; None = any


class Registry:
    """Maps (domain, op) to kernels; a kernel may be restricted to input dtypes."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self._specs: dict[tuple[str, str], list[KernelSpec]] = {}
        self._preparers: dict[tuple[str, str], Preparer] = {}
        self._plan_passes: list[PlanPass] = []

    def register(
        self, *ops: str, domain: str = "", dtypes: Iterable[Any] | None = None
    ) -> Callable[[KernelFn], KernelFn]:
        """Decorator: ``@kernel("Relu")`` or ``@kernel("Conv", dtypes=[np.float32])``.

        Several op names may share one function. Dtype-restricted kernels take
        precedence over generic ones for the dtypes they name.
        """
        dts = None if dtypes is None else frozenset(np.dtype(d) for d in dtypes)

        def deco(fn: KernelFn) -> KernelFn:
            for op in ops:
                specs = self._specs.setdefault((domain, op), [])
                specs.insert(0 if dts is not None else len(specs), KernelSpec(op, domain, fn, dts))
            return fn

        return deco

    def register_preparer(self, *ops: str, domain: str = "") -> Callable[[Preparer], Preparer]:
        """Decorator: ``@prepares("Conv")`` registers the preparer of ``ops`` (one per op)."""

        def deco(fn: Preparer) -> Preparer:
            for op in ops:
                if (domain, op) in self._preparers:
                    raise ValueError(f"{domain}::{op} already has a preparer")
                self._preparers[(domain, op)] = fn
            return fn

        return deco

    def register_plan_pass(self, fn: PlanPass) -> PlanPass:
        """Decorator: ``fn(nodes, constants, keep) -> nodes`` rewrites a plan's scheduled
        nodes into ops of this provider (after constant folding, before scheduling); values
        named in ``keep`` (outputs, what subgraphs or shape checks read) must stay."""
        self._plan_passes.append(fn)
        return fn

    def plan_passes(self) -> tuple[PlanPass, ...]:
        return tuple(self._plan_passes)

    def preparer(self, op: str, domain: str = "") -> Preparer | None:
        """The preparer registered for ``op``, if any."""
        return self._preparers.get((domain, op))

    def specs(self, op: str, domain: str = "") -> tuple[KernelSpec, ...]:
        """Every kernel registered for ``op``, dtype-restricted ones first."""
        return tuple(self._specs.get((domain, op), ()))

    def supports(self, op: str, domain: str = "") -> bool:
        return (domain, op) in self._specs

    def lookup(self, op: str, domain: str = "", dtype: np.dtype | None = None) -> KernelFn | None:
        """The kernel for ``op`` whose dtype restriction admits ``dtype`` (or a generic one)."""
        for spec in self._specs.get((domain, op), ()):
            if spec.dtypes is None or (dtype is not None and dtype in spec.dtypes):
                return spec.fn
        return None

    def ops(self) -> list[tuple[str, str]]:
        return sorted(self._specs)
