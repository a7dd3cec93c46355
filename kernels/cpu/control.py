"""Control flow: If, Loop, Scan, SequenceMap.

Subgraph attributes arrive as callables ``body(*inputs) -> list`` bound to the
enclosing scope; ``body.plan`` exposes the subgraph's declared inputs/outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from modelloader.kernels.cpu._registry import kernel

Body = Callable[..., list[Any]]


@kernel("If")
def if_(cond: np.ndarray, *, then_branch: Body, else_branch: Body) -> tuple[Any, ...]:
    """ONNX If-21: runs one branch; its outputs are the node's outputs."""
    return tuple(then_branch() if bool(np.asarray(cond).reshape(-1)[0]) else else_branch())


def _empty_like_output(body: Body, index: int) -> np.ndarray:
    v = body.plan.graph.outputs[index]  # type: ignore[attr-defined]
    shape = tuple(d if isinstance(d, int) else 0 for d in (v.shape or ()))
    return np.zeros((0,) + shape, dtype=v.dtype or np.float32)


@kernel("Loop")
def loop(
    m: np.ndarray | None = None, cond: np.ndarray | None = None, *v_initial: Any, body: Body
) -> tuple[Any, ...]:
    """ONNX Loop-21: ``for i in range(M) while cond`` with loop-carried values.

    Outputs: the final loop-carried values, then each scan output stacked on a new
    leading axis (a scan output that is a sequence is concatenated as a list).
    """
    trip = None if m is None else int(np.asarray(m).reshape(-1)[0])
    keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    carried = list(v_initial)
    n_out = len(body.plan.output_names) - 1  # type: ignore[attr-defined]
    scans: list[list[Any]] = [[] for _ in range(n_out - len(carried))]
    i = 0
    while keep_going and (trip is None or i < trip):
        res = body(np.array(i, dtype=np.int64), np.array(keep_going), *carried)
        keep_going = bool(np.asarray(res[0]).reshape(-1)[0])
        carried = list(res[1 : 1 + len(carried)])
        for acc, v in zip(scans, res[1 + len(carried) :]):
            acc.append(v)
        i += 1
    stacked = []
    for k, acc in enumerate(scans):
        if acc and isinstance(acc[0], list):
            stacked.append([x for part in acc for x in part])
        elif acc:
            stacked.append(np.stack([np.asarray(a) for a in acc]))
        else:
            stacked.append(_empty_like_output(body, 1 + len(carried) + k))
    return tuple(carried + stacked)


@kernel("Scan")
def scan(
    *args: Any,
    body: Body,
    num_scan_inputs: int,
    scan_input_directions: list[int] | None = None,
    scan_output_directions: list[int] | None = None,
    scan_input_axes: list[int] | None = None,
    scan_output_axes: list[int] | None = None,
) -> tuple[Any, ...]:
    """ONNX Scan-21: iterates ``body`` over slices of the scan inputs along their axes."""
    n_state = len(args) - num_scan_inputs
    state, xs = list(args[:n_state]), args[n_state:]
    in_dirs = scan_input_directions or [0] * len(xs)
    in_axes = [a % x.ndim for a, x in zip(scan_input_axes or [0] * len(xs), xs)]
    steps = xs[0].shape[in_axes[0]] if xs else 0
    n_out = len(body.plan.output_names) - n_state  # type: ignore[attr-defined]
    outs: list[list[np.ndarray]] = [[] for _ in range(n_out)]
    for t in range(steps):
        slices = [
            np.take(x, steps - 1 - t if d else t, axis=a) for x, d, a in zip(xs, in_dirs, in_axes)
        ]
        res = body(*state, *slices)
        state = list(res[:n_state])
        for acc, v in zip(outs, res[n_state:]):
            acc.append(np.asarray(v))
    out_dirs = scan_output_directions or [0] * n_out
    out_axes = scan_output_axes or [0] * n_out
    stacked = []
    for k, (acc, d, a) in enumerate(zip(outs, out_dirs, out_axes)):
        if not acc:
            stacked.append(_empty_like_output(body, n_state + k))
            continue
        if d:
            acc = acc[::-1]
        stacked.append(np.stack(acc, axis=a % (acc[0].ndim + 1)))
    return tuple(state + stacked)


@kernel("SequenceMap")
def sequence_map(seq: list[np.ndarray], *extra: Any, body: Body) -> tuple[list[np.ndarray], ...]:
    """ONNX SequenceMap-17: applies ``body`` to each element (sequence extras zip along)."""
    n_out = len(body.plan.output_names)  # type: ignore[attr-defined]
    outs: list[list[np.ndarray]] = [[] for _ in range(n_out)]
    for i, x in enumerate(seq):
        args = [e[i] if isinstance(e, list) else e for e in extra]
        for acc, v in zip(outs, body(x, *args)):
            acc.append(v)
    return tuple(outs)
