"""Kernels for TFLite ops without an ONNX equivalent (domain ``modelloader``).

Stateful kernels (resource variables, CALL_ONCE) are marked ``stateful``: the
executor never folds them and passes the Model's ``RunState`` as ``state=``. They
take an ordering token first and return a new one, so the import keeps file order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from modelloader.errors import ExecutionError
from modelloader.kernels.cpu._registry import kernel

D = "modelloader"
_TOKEN = np.zeros((), np.bool_)


def stateful(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn.stateful = True  # type: ignore[attr-defined]
    return fn


@kernel("ReadVariable", domain=D)
@stateful
def read_variable(
    token: np.ndarray, handle: np.ndarray, *, state: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(token, handle) -> (token, the variable's current value)."""
    key = str(handle.item() if isinstance(handle, np.ndarray) else handle)
    if state is None or key not in state.variables:
        raise ExecutionError(f"resource variable '{key}' is read before it is assigned")
    return _TOKEN, state.variables[key]


@kernel("AssignVariable", domain=D)
@stateful
def assign_variable(
    token: np.ndarray, handle: np.ndarray, value: np.ndarray, *, state: Any
) -> np.ndarray:
    """Stores ``value`` (a private copy) under the handle's key; persists across runs."""
    key = str(handle.item() if isinstance(handle, np.ndarray) else handle)
    if state is None:
        raise ExecutionError(
            "ASSIGN_VARIABLE needs a run state (run the model through Model.predict)"
        )
    state.variables[key] = np.array(value, copy=True)
    return _TOKEN


@kernel("TFLCallOnce", domain=D)
@stateful
def call_once(
    token: np.ndarray, *, init: Callable[..., list[Any]], key: str, state: Any
) -> np.ndarray:
    """Runs the init subgraph once per state lifetime (until ``Model.reset_state``)."""
    if state is None:
        init()
    elif key not in state.once:
        init()
        state.once.add(key)
    return _TOKEN


@kernel("TFLWhile", domain=D)
def tfl_while(
    token: np.ndarray, *vars_: Any, cond: Callable[..., list[Any]], body: Callable[..., list[Any]]
) -> tuple[Any, ...]:
    """while cond(*vars): vars = body(*vars)."""
    vals = list(vars_)
    while bool(np.asarray(cond(*vals)[0]).reshape(-1)[0]):
        vals = list(body(*vals))
    return (_TOKEN, *vals)


@kernel("TFLIf", domain=D)
def tfl_if(
    token: np.ndarray,
    cond: np.ndarray,
    *args: Any,
    then_branch: Callable[..., list[Any]],
    else_branch: Callable[..., list[Any]],
) -> tuple[Any, ...]:
    """Calls the chosen branch subgraph with the remaining operands."""
    branch = then_branch if bool(np.asarray(cond).reshape(-1)[0]) else else_branch
    return (_TOKEN, *branch(*args))


@kernel("TFLCall", domain=D)
def tfl_call(token: np.ndarray, *args: Any, body: Callable[..., list[Any]]) -> tuple[Any, ...]:
    return (_TOKEN, *body(*args))


@kernel("MirrorPad", domain=D)
def mirror_pad(x: np.ndarray, paddings: np.ndarray, *, mode: str = "reflect") -> np.ndarray:
    """paddings [rank, 2]; ``reflect`` excludes the edge, ``symmetric`` repeats it."""
    return np.pad(x, np.asarray(paddings, np.int64).reshape(-1, 2), mode=mode)


@kernel("StridedSlice", domain=D)
def strided_slice(
    x: np.ndarray,
    begin: np.ndarray,
    end: np.ndarray,
    strides: np.ndarray | None = None,
    *,
    begin_mask: int = 0,
    end_mask: int = 0,
    ellipsis_mask: int = 0,
    new_axis_mask: int = 0,
    shrink_axis_mask: int = 0,
    offset: int = 0,
) -> np.ndarray:
    """TFLite/TF StridedSlice with all five masks (``offset``: end is relative to begin)."""
    b = [int(v) for v in np.asarray(begin).reshape(-1)]
    e = [int(v) for v in np.asarray(end).reshape(-1)]
    s = [int(v) for v in np.asarray(strides).reshape(-1)] if strides is not None else [1] * len(b)
    index: list[Any] = []
    for i in range(len(b)):
        bit = 1 << i
        if ellipsis_mask & bit:
            index.append(Ellipsis)
        elif new_axis_mask & bit:
            index.append(None)
        elif shrink_axis_mask & bit:
            index.append(b[i])
        else:
            lo = None if begin_mask & bit else b[i]
            hi = None if end_mask & bit else (b[i] + e[i] if offset else e[i])
            index.append(slice(lo, hi, s[i]))
    return np.asarray(x[tuple(index)])


@kernel("TFLSlice", domain=D)
def tfl_slice(x: np.ndarray, begin: np.ndarray, size: np.ndarray) -> np.ndarray:
    """x[begin : begin + size] per axis; size -1 means to the end."""
    idx = tuple(
        slice(int(b), None if int(s) < 0 else int(b) + int(s))
        for b, s in zip(np.asarray(begin).reshape(-1), np.asarray(size).reshape(-1))
    )
    return np.asarray(x[idx])


@kernel("DynTranspose", domain=D)
def dyn_transpose(x: np.ndarray, perm: np.ndarray) -> np.ndarray:
    return np.transpose(x, [int(p) for p in np.asarray(perm).reshape(-1)])


@kernel("Reverse", domain=D)
def reverse(x: np.ndarray, axes: np.ndarray) -> np.ndarray:
    return np.flip(x, tuple(int(a) for a in np.asarray(axes).reshape(-1)))


@kernel("BatchGather", domain=D)
def batch_gather(
    params: np.ndarray, indices: np.ndarray, *, axis: int, batch_dims: int
) -> np.ndarray:
    """tf.gather with batch_dims: the leading ``batch_dims`` axes are shared."""
    axis %= params.ndim
    batch_dims %= max(indices.ndim, 1)
    lead = params.shape[:batch_dims]
    p = params.reshape((-1, *params.shape[batch_dims:]))
    ind = indices.reshape((-1, *indices.shape[batch_dims:]))
    out = [np.take(p[i], ind[i], axis=axis - batch_dims) for i in range(p.shape[0])]
    return np.stack(out).reshape((*lead, *out[0].shape)) if out else np.zeros(0, params.dtype)


@kernel("SpaceToBatchND", domain=D)
def space_to_batch_nd(x: np.ndarray, block: np.ndarray, pads: np.ndarray) -> np.ndarray:
    bs = [int(v) for v in np.asarray(block).reshape(-1)]
    p = np.asarray(pads, np.int64).reshape(-1, 2)
    m = len(bs)
    xp = np.pad(x, [(0, 0), *[tuple(r) for r in p], *[(0, 0)] * (x.ndim - 1 - m)])
    n = xp.shape[0]
    shape = [n]
    for i in range(m):
        shape += [xp.shape[1 + i] // bs[i], bs[i]]
    rest = list(xp.shape[1 + m :])
    y = xp.reshape(shape + rest)
    perm = (
        [2 + 2 * i for i in range(m)]
        + [0]
        + [1 + 2 * i for i in range(m)]
        + list(range(1 + 2 * m, 1 + 2 * m + len(rest)))
    )
    y = y.transpose(perm)
    return y.reshape([n * int(np.prod(bs))] + [xp.shape[1 + i] // bs[i] for i in range(m)] + rest)


@kernel("BatchToSpaceND", domain=D)
def batch_to_space_nd(x: np.ndarray, block: np.ndarray, crops: np.ndarray) -> np.ndarray:
    bs = [int(v) for v in np.asarray(block).reshape(-1)]
    c = np.asarray(crops, np.int64).reshape(-1, 2)
    m = len(bs)
    n = x.shape[0] // int(np.prod(bs))
    rest = list(x.shape[1 + m :])
    y = x.reshape(bs + [n] + list(x.shape[1 : 1 + m]) + rest)
    perm = (
        [m]
        + [v for i in range(m) for v in (m + 1 + i, i)]
        + list(range(2 * m + 1, 2 * m + 1 + len(rest)))
    )
    y = y.transpose(perm).reshape([n] + [x.shape[1 + i] * bs[i] for i in range(m)] + rest)
    idx = tuple(
        [slice(None)] + [slice(int(c[i, 0]), y.shape[1 + i] - int(c[i, 1])) for i in range(m)]
    )
    return np.asarray(y[idx])


@kernel("L2Normalization", domain=D)
def l2_normalization(x: np.ndarray) -> np.ndarray:
    """x / max(||x||_2 over the last axis, 1e-6), as TFLite's reference kernel."""
    norm = np.sqrt(np.sum(np.square(x, dtype=np.float32), axis=-1, keepdims=True))
    return (x / np.maximum(norm, np.float32(1e-6))).astype(x.dtype)


@kernel("LocalResponseNormalization", domain=D)
def local_response_normalization(
    x: np.ndarray, *, radius: int = 5, bias: float = 1.0, alpha: float = 1.0, beta: float = 0.5
) -> np.ndarray:
    """NHWC LRN over the last axis: x / (bias + alpha * sum_{|j-c|<=r} x_j^2) ** beta."""
    sq = np.square(x.astype(np.float32))
    c = x.shape[-1]
    cs = np.concatenate([np.zeros((*x.shape[:-1], 1), np.float32), np.cumsum(sq, axis=-1)], axis=-1)
    lo = np.clip(np.arange(c) - radius, 0, c)
    hi = np.clip(np.arange(c) + radius + 1, 0, c)
    window = cs[..., hi] - cs[..., lo]
    return (x / np.power(np.float32(bias) + np.float32(alpha) * window, np.float32(beta))).astype(
        x.dtype
    )


@kernel("FloorDiv", domain=D)
def floor_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.floor_divide(a, b))


@kernel("FloorMod", domain=D)
def floor_mod(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.asarray(np.mod(a, b))


def _round_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


@kernel("TFLQuantize", domain=D)
def tfl_quantize(x: np.ndarray, *, scale: float, zero_point: int, dtype: str) -> np.ndarray:
    """q = clamp(round_half_away(x / scale) + zero_point), TFLite's AffineQuantize."""
    dt = np.dtype(dtype)
    info = np.iinfo(dt)
    q = _round_away(x.astype(np.float32) / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dt)


@kernel("TFLRequantize", domain=D)
def tfl_requantize(
    x: np.ndarray, *, in_scale: float, in_zero_point: int, scale: float, zero_point: int, dtype: str
) -> np.ndarray:
    """int -> int with new scale/zero point (rounding half away from zero)."""
    dt = np.dtype(dtype)
    info = np.iinfo(dt)
    real = (x.astype(np.float64) - in_zero_point) * (in_scale / scale)
    return np.clip(_round_away(real) + zero_point, info.min, info.max).astype(dt)
