"""Plans an IR graph once and runs it.

Planning (at load): topological order, constant folding, fusions (``passes``), kernel
binding, and a liveness table so every intermediate is released right after its
last use. A run only looks values up, calls kernels and drops dead values; a plan
is immutable, so one plan serves many threads at once. Dead intermediates nobody else
references are recycled through a per-plan, per-thread :class:`buffers.Pool` that
kernels draw their outputs from (``buffers.take``).
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelloader import buffers, parallel
from modelloader.errors import ExecutionError, ModelFormatError, UnsupportedOpError
from modelloader.ir import Graph, Node, ValueKind
from modelloader.kernels.registry import KernelFn, Registry

#: Ops never folded at load: their results must differ per run.
NONDETERMINISTIC = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Bernoulli",
        "Multinomial",
    }
)


@dataclass
class RunState:
    """Mutable state that persists across runs of one Model (never part of a Plan).

    ``variables`` holds resource variables by key, ``once`` the init subgraphs
    already run (TFLite CALL_ONCE). ``lock`` serialises runs that use the state.
    Kernels marked ``stateful`` receive it as ``state=``.
    """

    variables: dict[str, Any] = field(default_factory=dict)
    once: set[str] = field(default_factory=set)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def clear(self) -> None:
        with self.lock:
            self.variables.clear()
            self.once.clear()


def is_stateful(fn: KernelFn) -> bool:
    """Whether a kernel takes the run state (``fn.stateful``); such nodes are never folded."""
    return bool(getattr(fn, "stateful", False))


@dataclass(frozen=True)
class Step:
    node: Node
    fn: KernelFn
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]
    subplans: dict[str, Plan | list[Plan]]
    release: tuple[str, ...]  # values dead after this step
    stateful: bool = False  # kernel takes ``state=``
    recycle: tuple[str, ...] = ()  # the released values a step here produced (poolable)
    checks: tuple[tuple[str, tuple[int, ...]], ...] = ()  # outputs' shapes folded at plan time


def topological_order(graph: Graph, known: set[str]) -> list[Node]:
    """Nodes in an order where every input is produced first (Kahn's algorithm, stable)."""
    producers: dict[str, int] = {}
    for i, n in enumerate(graph.nodes):
        for o in n.outputs:
            if o:
                producers[o] = i
    deps: list[set[int]] = []
    for n in graph.nodes:
        needs = set(n.inputs)
        for g in n.subgraphs():
            needs.update(g.outer_refs())
        deps.append({producers[x] for x in needs if x and x not in known and x in producers})
    users: dict[int, list[int]] = {}
    for i, d in enumerate(deps):
        for j in d:
            users.setdefault(j, []).append(i)
    pending = [len(d) for d in deps]
    ready = [i for i, c in enumerate(pending) if c == 0]
    heapq.heapify(ready)  # smallest index first: the file's order wherever it is valid
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users.get(i, ()):
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(graph.nodes):
        stuck = [graph.nodes[i].label() for i, c in enumerate(pending) if c]
        raise ModelFormatError(
            f"graph '{graph.name}' has a cycle or an undefined input near {stuck[:3]}"
        )
    return [graph.nodes[i] for i in order]


class Plan:
    """An executable, immutable schedule for one graph (subgraphs get their own)."""

    def __init__(
        self, graph: Graph, registry: Registry, outer: Sequence[str] = (), fold: bool = True
    ) -> None:
        self.graph = graph
        self.registry = registry
        self.input_names = tuple(v.name for v in graph.inputs)
        self.output_names = tuple(v.name for v in graph.outputs)
        self.outer_refs = tuple(graph.outer_refs())
        if not outer and self.outer_refs:  # a top-level graph has no enclosing scope
            readers = {i: n.label() for n in graph.walk() for i in n.inputs if i in self.outer_refs}
            listed = ", ".join(
                f"'{r}' (read by {readers.get(r, 'an output')})" for r in self.outer_refs[:5]
            )
            raise ModelFormatError(
                f"graph '{graph.name}' reads values that no input, initializer or node defines: "
                f"{listed}{' ...' if len(self.outer_refs) > 5 else ''}; the model is damaged"
            )
        known = set(self.input_names) | set(graph.constants) | set(outer) | set(self.outer_refs)
        nodes = self._needed(topological_order(graph, known))
        self.constants: dict[str, Any] = dict(graph.constants)
        #: tensors whose declared static shape a folded Shape/Size stands on, checked when
        #: they are produced at run time
        self.shape_checks: dict[str, tuple[int, ...]] = {}
        if fold:
            nodes = self._fold_constants(nodes, known)
            if not outer and not self.outer_refs:
                shaped = self._fold_shapes(nodes)
                if len(shaped) < len(nodes):  # only then is there more to fold
                    nodes = self._fold_constants(shaped, known)
        if self.registry.plan_passes():
            keep = set(self.output_names) | set(self.outer_refs) | set(self.shape_checks)
            for n in nodes:
                for g in n.subgraphs():
                    keep.update(g.outer_refs())
            for rewrite in self.registry.plan_passes():
                nodes = rewrite(nodes, self.constants, keep)
        defined = set(self.input_names) | set(self.constants) | set(self.outer_refs)
        for n in nodes:
            defined.update(n.outputs)
        missing = [o for o in self.output_names if o not in defined]
        if missing:
            raise ModelFormatError(f"graph '{graph.name}' outputs {missing} are never produced")
        self.steps = self._schedule(nodes, outer)
        self._input_checks = tuple(
            (n, self.shape_checks[n]) for n in self.input_names if n in self.shape_checks
        )
        self._local = threading.local()  # per-thread buffer pool (see ``buffers``)
        #: whether a kernel here splits work over the intra-op team (``parallel``)
        self.uses_team = self._uses_team()
        self._tuner = _BlasTuner()
        #: whether a run reads or writes RunState (here or in a subgraph)
        self.stateful = any(
            st.stateful
            or any(
                p.stateful
                for sp in st.subplans.values()
                for p in (sp if isinstance(sp, list) else [sp])
            )
            for st in self.steps
        )

    def _bind(self, node: Node) -> KernelFn:
        specs = self.registry.specs(node.op, node.domain)
        if not specs:
            raise UnsupportedOpError([(node.op, node.domain, 0)])
        if len(specs) == 1 and specs[0].dtypes is None:
            return specs[0].fn
        registry, op, domain = self.registry, node.op, node.domain

        def dispatch(*args: Any, **kw: Any) -> Any:
            first = args[0] if args else None
            fn = registry.lookup(op, domain, getattr(first, "dtype", None))
            if fn is None:
                raise ExecutionError(
                    f"{op}: no kernel for input dtype {getattr(first, 'dtype', None)}"
                )
            return fn(*args, **kw)

        return dispatch

    def _uses_team(self) -> bool:
        for st in self.steps:
            if any(
                getattr(sp.fn, "uses_team", False)
                for sp in self.registry.specs(st.node.op, st.node.domain)
            ):
                return True
            for sp in st.subplans.values():
                if any(p.uses_team for p in (sp if isinstance(sp, list) else [sp])):
                    return True
        return False

    def _is_stateful(self, node: Node) -> bool:
        return any(is_stateful(sp.fn) for sp in self.registry.specs(node.op, node.domain))

    def _subplans(self, node: Node, outer: set[str]) -> dict[str, Plan | list[Plan]]:
        subs: dict[str, Plan | list[Plan]] = {}
        for k, v in node.attrs.items():
            if isinstance(v, Graph):
                subs[k] = Plan(v, self.registry, sorted(outer))
            elif isinstance(v, list) and v and all(isinstance(g, Graph) for g in v):
                subs[k] = [Plan(g, self.registry, sorted(outer)) for g in v]
        return subs

    def _needed(self, nodes: list[Node]) -> list[Node]:
        """The nodes the outputs depend on, plus any with effects (stateful kernels, here or
        in a subgraph): others would compute values nobody reads."""
        need = set(self.output_names)
        kept: list[Node] = []
        for n in reversed(nodes):
            effects = self._is_stateful(n) or any(
                self._is_stateful(m) for g in n.subgraphs() for m in g.walk()
            )
            if not effects and not any(o in need for o in n.outputs if o):
                continue
            kept.append(n)
            need.update(i for i in n.inputs if i)
            for g in n.subgraphs():
                need.update(g.outer_refs())
        return kept[::-1]

    def _fold_shapes(self, nodes: list[Node]) -> list[Node]:
        """Shape/Size of a tensor the graph declares with a fully static shape become
        constants, so constant folding then takes the shape arithmetic behind them (as
        exporters emit around every Reshape). The declaration is not trusted blindly: the
        tensor's shape is compared with it whenever a run produces the tensor
        (``Step.checks``, ``_run``), and a mismatch raises instead of computing on."""
        kept: list[Node] = []
        for n in nodes:
            x = n.inputs[0] if n.inputs else ""
            v = self.graph.values.get(x) if x else None
            static = (
                not n.domain
                and n.op in ("Shape", "Size")
                and len(n.outputs) == 1
                and v is not None
                and v.kind is ValueKind.TENSOR
                and v.shape is not None
                and all(type(d) is int and d >= 0 for d in v.shape)
                and x not in self.constants
            )
            if not static:
                kept.append(n)
                continue
            shape = tuple(int(d) for d in v.shape)  # type: ignore[union-attr]
            if n.op == "Size":
                value = np.asarray(math.prod(shape), np.int64)
            else:
                r = len(shape)
                lo, hi = int(n.attrs.get("start", 0)), int(n.attrs.get("end", r))
                lo, hi = (min(max(i + r if i < 0 else i, 0), r) for i in (lo, hi))
                value = np.asarray(shape[lo:hi], np.int64)
            self.constants[n.outputs[0]] = value
            self.shape_checks[x] = shape
        return kept

    def _fold_constants(self, nodes: list[Node], known: set[str]) -> list[Node]:
        """Runs nodes whose inputs are all constants once, at plan time."""
        kept: list[Node] = []
        for n in nodes:
            foldable = (
                n.op not in NONDETERMINISTIC
                and not any(True for _ in n.subgraphs())
                and all(i == "" or i in self.constants for i in n.inputs)
                and n.inputs
                and not self._is_stateful(n)
            )
            if foldable:
                try:
                    results = self._call(
                        n,
                        self._bind(n),
                        [self.constants.get(i) if i else None for i in n.inputs],
                        n.attrs,
                    )
                except Exception:  # noqa: BLE001  left for run time, where it reports properly
                    kept.append(n)
                    continue
                for name, value in zip(n.outputs, results):
                    if name:
                        self.constants[name] = value
            else:
                kept.append(n)
        return kept

    def _schedule(self, nodes: list[Node], outer: Sequence[str]) -> list[Step]:
        visible = set(outer) | set(self.input_names) | set(self.constants)
        for n in nodes:
            visible.update(n.outputs)
        last_use: dict[str, int] = {}
        reads: list[list[str]] = []
        for i, n in enumerate(nodes):
            names = [x for x in n.inputs if x]
            for g in n.subgraphs():
                names.extend(g.outer_refs())
            reads.append(names)
            for x in names:
                last_use[x] = i
        keep = set(self.output_names) | set(self.constants) | set(self.outer_refs)
        produced = {o for n in nodes for o in n.outputs if o}
        dead_at: dict[int, list[str]] = {}
        for name, i in last_use.items():
            if name not in keep:
                dead_at.setdefault(i, []).append(name)
        steps = []
        for i, n in enumerate(nodes):
            # outputs nobody reads are dead at once (e.g. unused optional outputs)
            unused = [o for o in n.outputs if o and o not in last_use and o not in keep]
            release = tuple(dead_at.get(i, [])) + tuple(unused)
            attrs = {k: v for k, v in n.attrs.items() if not _is_graph_attr(v)}
            subplans = self._subplans(n, visible)
            fn = self._bind(n)
            if not subplans:
                prepared = self._prepare(n, attrs)
                if prepared is not None:
                    fn, attrs = prepared, {}
            steps.append(
                Step(
                    node=n,
                    fn=fn,
                    inputs=tuple(n.inputs),
                    outputs=tuple(n.outputs),
                    attrs=attrs,
                    subplans=subplans,
                    release=tuple(x for x in release if x not in produced),
                    stateful=self._is_stateful(n),
                    recycle=tuple(x for x in release if x in produced),
                    checks=tuple(
                        (o, self.shape_checks[o]) for o in n.outputs if o in self.shape_checks
                    ),
                )
            )
        return steps

    def _prepare(self, node: Node, attrs: dict[str, Any]) -> KernelFn | None:
        """The node's prepared kernel (see ``kernels.registry``), or None: no preparer, or it
        declined or failed (the generic kernel then reports the problem when it runs)."""
        prep = self.registry.preparer(node.op, node.domain)
        if prep is None or self._is_stateful(node):
            return None
        consts = tuple(self.constants.get(i) if i else None for i in node.inputs)
        try:
            return prep(consts, **attrs)
        except Exception:  # noqa: BLE001
            return None

    @staticmethod
    def _call(node: Node, fn: KernelFn, args: list[Any], attrs: dict[str, Any]) -> list[Any]:
        while args and args[-1] is None and node.inputs[len(args) - 1] == "":
            args.pop()
        out = fn(*args, **attrs)
        if isinstance(out, tuple) or (isinstance(out, list) and len(node.outputs) > 1):
            return list(out)
        return [out]

    def run(
        self,
        feeds: dict[str, Any],
        outer: dict[str, Any] | None = None,
        state: RunState | None = None,
        timings: list[float] | None = None,
    ) -> list[Any]:
        """Runs the plan; ``feeds`` maps every graph input name to its value.

        ``state`` is the caller's persistent state (resource variables), handed to
        stateful kernels and to subgraphs; the plan itself stays immutable, so the
        caller serialises runs sharing one state. Floating-point exceptions are not
        errors: non-finite inputs compute IEEE results silently (and numpy's error
        state is per thread). ``timings``, if given (one float per step), accumulates each
        step's wall time in seconds.
        """
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = buffers.Pool()
        prev = buffers.activate(pool)
        try:
            serial = self.uses_team and self._tuner.pick()
            blas: AbstractContextManager[None] = parallel.serial_blas() if serial else nullcontext()
            start = time.perf_counter()
            with np.errstate(all="ignore"), blas:
                out = self._run(feeds, outer, state, pool, timings)
            if self.uses_team:
                self._tuner.record(serial, time.perf_counter() - start)
            return out
        finally:
            buffers.activate(prev)
            pool.end_run()

    def _run(
        self,
        feeds: dict[str, Any],
        outer: dict[str, Any] | None,
        state: RunState | None,
        pool: buffers.Pool,
        timings: list[float] | None = None,
    ) -> list[Any]:
        env: dict[str, Any] = dict(self.constants)
        if outer:
            for r in self.outer_refs:
                if r in outer and r not in env:
                    env[r] = outer[r]
        env.update(feeds)
        for name, shape in self._input_checks:
            _check_shape(name, feeds.get(name), shape)
        for at, step in enumerate(self.steps):
            if timings is not None:
                t0 = time.perf_counter()
            args = [env[i] if i else None for i in step.inputs]
            attrs = step.attrs
            if step.subplans:
                attrs = dict(attrs)
                for k, sp in step.subplans.items():
                    attrs[k] = (
                        [_bound(p, env, state) for p in sp]
                        if isinstance(sp, list)
                        else _bound(sp, env, state)
                    )
            if step.stateful:
                attrs = dict(attrs, state=state)
            try:
                results = self._call(step.node, step.fn, args, attrs)
            except ExecutionError:
                raise
            except KeyError as e:
                raise ExecutionError(f"{step.node.label()}: {e!r}") from e
            except Exception as e:
                raise ExecutionError(f"{step.node.label()} failed: {type(e).__name__}: {e}") from e
            for name, value in zip(step.outputs, results):
                if name:
                    env[name] = value
            for name, shape in step.checks:
                _check_shape(name, env.get(name), shape, step.node.label())
            # drop this frame's references first, so a dead value's refcount is exact
            args = attrs = results = value = None
            for name in step.release:
                env.pop(name, None)
            for name in step.recycle:
                pool.release(env, name)
            if timings is not None:
                timings[at] += time.perf_counter() - t0
        return [_compact(env[o]) for o in self.output_names]

    def run_positional(
        self, args: Sequence[Any], outer: dict[str, Any], state: RunState | None = None
    ) -> list[Any]:
        """Runs as a subgraph body: positional inputs, enclosing scope ``outer``."""
        return self.run(dict(zip(self.input_names, args)), outer, state)


class _BlasTuner:
    """Chooses, by measurement, whether a plan with team kernels runs with BLAS held to one
    thread (team kernels get the cores; large products are split by the team at about
    OpenBLAS's speed, smaller ones run slower) or with BLAS's own threads (whose idle
    spinning starves the team). The first runs alternate in pairs, serial then threaded;
    the second run of each pair is timed (the first absorbs the switch), and the faster
    mode is kept from then on. Both modes compute the same values (up to float summation
    order where a product is split differently)."""

    TRIALS = 2  # timed runs per mode

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs = 0
        self._times: dict[bool, list[float]] = {True: [], False: []}
        self.serial: bool | None = None  # the decision, once made

    def pick(self) -> bool:
        with self._lock:
            if self.serial is not None:
                return self.serial
            k = self._runs
            self._runs += 1
            return (k // 2) % 2 == 0

    def record(self, serial: bool, seconds: float) -> None:
        with self._lock:
            if self.serial is not None:
                return
            if self._runs % 2 == 0:  # the second run of a pair
                self._times[serial].append(seconds)
            if all(len(v) >= self.TRIALS for v in self._times.values()):
                self.serial = min(self._times[True]) <= min(self._times[False])


def _compact(value: Any) -> Any:
    """An output that views a much larger buffer (a small result served from a big pooled
    one) as its own copy, so the caller's result does not pin the whole buffer."""
    if type(value) is np.ndarray:
        base = value.base
        if type(base) is np.ndarray and base.nbytes > 2 * value.nbytes + buffers.MIN_BYTES:
            return value.copy()
    return value


def _bound(
    plan: Plan, env: dict[str, Any], state: RunState | None = None
) -> Callable[..., list[Any]]:
    scope = {r: env[r] for r in plan.outer_refs if r in env}

    def body(*args: Any) -> list[Any]:
        return plan.run_positional(args, scope, state)

    body.plan = plan  # type: ignore[attr-defined]  # lets kernels inspect input/output names
    return body


def _is_graph_attr(v: Any) -> bool:
    return isinstance(v, Graph) or (
        isinstance(v, list) and bool(v) and all(isinstance(g, Graph) for g in v)
    )


def _check_shape(name: str, value: Any, shape: tuple[int, ...], producer: str = "") -> None:
    if np.shape(value) != shape:
        by = f" (from {producer})" if producer else ""
        raise ExecutionError(
            f"value '{name}'{by} has shape {list(np.shape(value))} but the model declares "
            f"{list(shape)}, which a Shape/Size was folded from at load: the model's shape "
            "information is wrong; fix or remove its value_info for this tensor"
        )
