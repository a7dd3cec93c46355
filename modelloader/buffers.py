"""Executor-level buffer reuse: a pool of dead intermediate arrays that kernels draw their
outputs from.

Fresh multi-hundred-KiB arrays come from mmap (or freshly trimmed heap) and page-fault on
first touch, on every run. While a plan runs, the executor makes a :class:`Pool` current for
the thread; when it drops a value nobody else can see any more (no other reference to the
array or to any view of its memory) it hands the memory to the pool, and :func:`take`
serves later outputs that fit in it (any shape or dtype). Outside a run (constant folding,
kernels called directly) :func:`take` is plain ``np.empty``.

Safety rests on the release side: :meth:`Pool.release` recycles an array only if it is a
plain, writeable, C-contiguous ndarray (or a view of one) whose memory owner is referenced by
nothing but the dying value, checked with ``sys.getrefcount`` right after the value is taken
out of the value table. Views, constants, graph inputs and outputs, values captured by a
subgraph's scope or still held anywhere else are never recycled. Arrays from :func:`take` are
the caller's: the pool keeps no reference to them.

A pool belongs to one plan and one thread (kept in a ``threading.local`` on the plan), so it
persists across runs and steady-state runs allocate almost nothing. Its free buffers total
at most the peak live set of the arrays it served in one run.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np

#: arrays smaller than this are left to malloc (cheap, and not page-faulted afresh)
MIN_BYTES = 16 << 10
#: a free buffer serves a request up to this many times smaller than itself
MAX_WASTE = 64
#: how many of the most recently released free buffers are looked at first
HOT = 8

_current = threading.local()


class Pool:
    """Free buffers (memory-owning, C-contiguous ndarrays) for one thread, most recently
    released last.

    A request is served by the most recently released of the last ``HOT`` free buffers that
    is at least its size and at most twice it (recently written memory is still in cache),
    else by the smallest free buffer at least its size and at most ``MAX_WASTE`` times it,
    else by ``np.empty``. ``live`` counts the bytes handed out in this run and not yet given
    back, ``peak`` the most it has reached in any run (the peak live set). Free plus live
    bytes stay within ``peak``: the pool never holds more memory than a run had in use at
    its peak, so at rest it keeps one run's working set, and during a run the memory it
    serves from is memory a run at its peak needs anyway. A dead buffer that does not fit
    displaces the least recently released free ones, or is let go.
    """

    __slots__ = ("bufs", "sizes", "nbytes", "live", "peak")

    def __init__(self) -> None:
        self.bufs: list[np.ndarray] = []  # free buffers, least recently released first
        self.sizes: list[int] = []  # their byte sizes
        self.nbytes = 0  # bytes held in ``bufs``
        self.live = 0  # bytes handed out in this run and not yet seen back
        self.peak = 0  # the most ``live`` has been in any run

    def take(self, shape: tuple[int, ...], dtype: np.dtype, nbytes: int) -> np.ndarray:
        sizes = self.sizes
        n = len(sizes)
        hi = 2 * nbytes
        j = n - 1
        stop = n - HOT if n > HOT else 0
        while j >= stop:
            if nbytes <= sizes[j] <= hi:
                break
            j -= 1
        else:
            j = -1
            best = nbytes * MAX_WASTE + 1
            for k in range(n):
                size = sizes[k]
                if nbytes <= size < best:
                    j, best = k, size
        if j < 0:
            size = nbytes
            buf = None
        else:
            size = sizes.pop(j)
            buf = self.bufs.pop(j)
            self.nbytes -= size
        live = self.live = self.live + size
        if live > self.peak:
            self.peak = live
        if buf is None:
            return np.empty(shape, dtype)
        if buf.dtype == dtype:
            if buf.shape == shape:
                return buf
            if size == nbytes:
                return buf.reshape(shape)
        return np.ndarray(shape, dtype, buffer=buf)

    def release(self, env: dict[str, Any], name: str) -> None:
        """Pops ``name`` from ``env`` and keeps its memory if nothing else can reach it."""
        value = env.pop(name, None)
        if type(value) is not np.ndarray or sys.getrefcount(value) != _VALUE_REFS:
            return
        owner = value.base
        if owner is None:
            owner = value
        elif type(owner) is not np.ndarray or owner.base is not None:
            return
        del value  # a dying view goes now: its owner must be left with only our reference
        if sys.getrefcount(owner) != _OWNER_REFS:
            return
        nbytes = owner.nbytes
        if nbytes < MIN_BYTES:
            return
        flags = owner.flags  # (holds a reference to owner)
        if not (flags.owndata and flags.c_contiguous and flags.writeable):
            return
        if owner.dtype.hasobject:  # its memory holds references: never reused as numbers
            return
        live = self.live - nbytes
        self.live = live = live if live > 0 else 0
        room = self.peak - live
        if nbytes > room:
            return
        while self.nbytes + nbytes > room:  # least recently released go first
            self.nbytes -= self.sizes.pop(0)
            del self.bufs[0]
        self.bufs.append(owner)
        self.sizes.append(nbytes)
        self.nbytes += nbytes

    def end_run(self) -> None:
        """Every intermediate of the run is dead by now."""
        self.live = 0

    def clear(self) -> None:
        self.bufs.clear()
        self.sizes.clear()
        self.nbytes = 0


def take(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array of ``shape``/``dtype`` owned by the caller: recycled memory of a
    dead intermediate while a plan runs on this thread, else ``np.empty``."""
    pool = getattr(_current, "pool", None)
    if pool is None:
        return np.empty(shape, dtype)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < MIN_BYTES or dtype.hasobject:
        return np.empty(shape, dtype)
    return pool.take(tuple(shape), dtype, nbytes)


def empty_like(x: np.ndarray) -> np.ndarray:
    """``take(x.shape, x.dtype)``."""
    return take(x.shape, x.dtype)


def activate(pool: Pool | None) -> Pool | None:
    """Makes ``pool`` this thread's current pool; returns the previous one (to restore)."""
    prev = getattr(_current, "pool", None)
    _current.pool = pool
    return prev


def current() -> Pool | None:
    return getattr(_current, "pool", None)


def _calibrate() -> tuple[int, int]:
    """The reference counts :meth:`Pool.release` sees for an otherwise unreferenced value and
    for the owner of an otherwise unreferenced view (interpreter-version dependent)."""
    seen: list[int] = []

    def probe(env: dict[str, Any], name: str) -> None:
        value = env.pop(name, None)
        seen.append(sys.getrefcount(value))
        owner = value.base
        if owner is None:
            owner = value
        del value
        seen.append(sys.getrefcount(owner))

    probe({"x": np.empty(4)[1:]}, "x")
    probe({"x": np.empty(4)}, "x")
    if seen[0] != seen[2] or seen[1] != seen[3]:  # pragma: no cover - never recycle then
        return -1, -1
    return seen[0], seen[1]


_VALUE_REFS, _OWNER_REFS = _calibrate()
