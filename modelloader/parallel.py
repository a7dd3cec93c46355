"""Intra-op parallelism: kernels split independent work (matrix rows or columns, image
channels) over a small persistent team of threads.

NumPy and scipy release the GIL inside their loops, so the slices of one op (a sparse
matrix product, a large dense one) run on several cores at once. Kernels that do so are
marked with :func:`uses_team`. OpenBLAS busy-waits for a while after each multi-threaded
call, which starves any other thread, so a plan with such kernels may run with BLAS held to
one thread (:func:`serial_blas`) and its large products split over the team by
:func:`matmul` instead: at parity with OpenBLAS's own two threads above ~10M
multiply-adds, about 2x slower below, where a thread hand-off costs more than it saves.
Which is faster depends on the model, so the executor times both (``executor._BlasTuner``);
plans without team kernels always keep BLAS's threads.

The team has ``MODELLOADER_NUM_THREADS`` threads in all (default: the CPUs this process may
use, at most 8), the caller included, and serves one parallel region at a time: a region
opened while the team is busy (another thread's, or a nested one) runs serially in its
caller, so concurrent ``predict`` calls never wait on each other here. Worker threads keep
their own per-thread scratch buffers, so callers hand them output slices to fill rather than
expecting results from the buffer pool (``modelloader.buffers``).
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "matmul",
    "num_threads",
    "parallel_for",
    "serial_blas",
    "set_blas_threads",
    "set_num_threads",
    "uses_team",
]

F = TypeVar("F", bound=Callable[..., Any])

#: products below this many multiply-adds are not worth a thread hand-off (~20 us)
MATMUL_MIN_MACS = 1 << 22
#: a stack times a matrix of at least this many elements runs as one product (see matmul)
_FOLD_MIN = 1 << 12

_MAX_DEFAULT = 8


def _default_threads() -> int:
    env = os.environ.get("MODELLOADER_NUM_THREADS", "").strip()
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(
                f"MODELLOADER_NUM_THREADS={env!r} is not an integer; set it to a thread count"
            ) from None
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _MAX_DEFAULT))


def uses_team(fn: F) -> F:
    """Marks a kernel that splits its work with :func:`parallel_for` (see the module doc)."""
    fn.uses_team = True  # type: ignore[attr-defined]
    return fn


class _Worker:
    """One daemon thread that runs a job each time ``start`` is called."""

    def __init__(self) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._job: Callable[[], None] | None = None
        self.error: BaseException | None = None
        threading.Thread(target=self._loop, name="modelloader-worker", daemon=True).start()

    def _loop(self) -> None:
        _local.worker = True
        while True:
            self._go.acquire()
            try:
                assert self._job is not None
                self._job()
            except BaseException as e:  # noqa: BLE001  re-raised in the caller by ``wait``
                self.error = e
            self._job = None
            self._done.release()

    def start(self, job: Callable[[], None]) -> None:
        self.error = None
        self._job = job
        self._go.release()

    def wait(self) -> BaseException | None:
        self._done.acquire()
        return self.error


_local = threading.local()
_team_lock = threading.Lock()
_workers: list[_Worker] = []
_threads = _default_threads()


def num_threads() -> int:
    """Threads a parallel region may use, the caller included."""
    return _threads


def set_num_threads(n: int) -> None:
    """Sets the team size (1 disables intra-op threading); takes effect for later regions."""
    global _threads
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    with _team_lock:
        _threads = int(n)


def parallel_for(total: int, fn: Callable[[int, int], None], grain: int = 1) -> None:
    """Calls ``fn(lo, hi)`` over contiguous ranges that cover ``range(total)`` exactly once,
    in parallel when the team is free and there are at least two ranges of ``grain`` items.

    ``fn`` must only write state no other range touches. The first exception raised by any
    range is re-raised here, after every range has finished.
    """
    parts = min(_threads, total // max(grain, 1))
    if parts < 2 or getattr(_local, "worker", False) or not _team_lock.acquire(blocking=False):
        if total > 0:
            fn(0, total)
        return
    try:
        while len(_workers) < parts - 1:
            _workers.append(_Worker())
        bounds = [total * i // parts for i in range(parts + 1)]
        started = []
        try:
            for i in range(1, parts):
                lo, hi = bounds[i], bounds[i + 1]
                _workers[i - 1].start(lambda lo=lo, hi=hi: fn(lo, hi))
                started.append(_workers[i - 1])
            fn(bounds[0], bounds[1])
        finally:
            errors = [w.wait() for w in started]
        for e in errors:
            if e is not None:
                raise e
    finally:
        _team_lock.release()


_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved: list[tuple[Any, int]] = []
_blas_controllers: list[Any] | None = None


def _controllers() -> list[Any]:
    global _blas_controllers
    if _blas_controllers is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas_controllers = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # noqa: BLE001  no threadpoolctl or an unknown BLAS: leave BLAS be
            _blas_controllers = []
    return _blas_controllers


def blas_is_serial() -> bool:
    """Whether BLAS is held to one thread by an open ``serial_blas`` (so :func:`matmul`
    splits large products over the team)."""
    return _blas_depth > 0 and bool(_blas_saved)


@contextmanager
def serial_blas() -> Iterator[None]:
    """Holds BLAS to one thread while open (nested and concurrent uses count; the last to
    close restores each BLAS library's thread count). A no-op with one team thread or when
    the BLAS cannot be controlled."""
    global _blas_depth
    if _threads < 2:
        yield
        return
    with _blas_lock:
        _blas_depth += 1
        if _blas_depth == 1:
            _blas_saved[:] = [(c, c.num_threads) for c in _controllers()]
            for c, n in _blas_saved:
                if n > 1:
                    c.set_num_threads(1)
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for c, n in _blas_saved:
                    if n > 1:
                        c.set_num_threads(n)
                _blas_saved.clear()


def blas_threads() -> int | None:
    """The thread count of NumPy's BLAS (the first BLAS library threadpoolctl finds, as a
    ``serial_blas`` in progress will restore it), or None if it cannot be controlled."""
    with _blas_lock:
        if _blas_saved:
            return _blas_saved[0][1]
        ctl = _controllers()
        return ctl[0].num_threads if ctl else None


def set_blas_threads(n: int) -> bool:
    """Sets NumPy's BLAS thread count (every BLAS library threadpoolctl finds); an open
    ``serial_blas`` restores ``n`` when it closes. False when BLAS cannot be controlled."""
    if n < 1:
        raise ValueError(f"thread count must be at least 1, got {n}")
    with _blas_lock:
        ctl = _controllers()
        if _blas_saved:
            _blas_saved[:] = [(c, int(n)) for c, _ in _blas_saved]
        else:
            for c in ctl:
                c.set_num_threads(int(n))
        return bool(ctl)


def matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``np.matmul(a, b, out=out)``, split over the team when BLAS is serial and the product
    is large: over the leading batch axis of a stacked product, else over b's columns (or
    a's rows when b is narrow). Every split writes a disjoint slice of ``out``.

    A stack of matrices times one matrix (``b``'s batch axes all 1) is one product of the
    stack's rows, not one small product per matrix (which re-reads ``b`` each time:
    ``(128, 1, 768) @ (768, 2304)`` is 128 matrix-vector products otherwise)."""
    if (
        a.ndim > 2
        and b.ndim >= 2
        and b.size >= _FOLD_MIN
        and b.size == b.shape[-2] * b.shape[-1]
        and a.ndim >= b.ndim
        and a.flags.c_contiguous
        and (out is None or out.flags.c_contiguous)
        and a.shape[-1] == b.shape[-2]
    ):
        n = b.shape[-1]
        rows = matmul(
            a.reshape(-1, a.shape[-1]),
            b.reshape(b.shape[-2:]),
            None if out is None else out.reshape(-1, n),
        )
        return out if out is not None else rows.reshape(a.shape[:-1] + (n,))
    if (
        not blas_is_serial()
        or _threads < 2
        or a.ndim < 2
        or b.ndim < 2
        or getattr(_local, "worker", False)
    ):
        return np.matmul(a, b, out=out)
    m, k = a.shape[-2:]
    n = b.shape[-1]
    lead = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    batch = math.prod(lead)
    if batch * m * k * n < MATMUL_MIN_MACS:
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty(lead + (m, n), np.result_type(a, b))
    if batch > 1:
        axes = [j for j in range(len(lead) - 1, -1, -1) if lead[j] >= _threads]
        if not axes:
            return np.matmul(a, b, out=out)
        j = axes[0]
        size = lead[j]

        def part(x: np.ndarray, lo: int, hi: int) -> np.ndarray:
            ax = j - (len(lead) - (x.ndim - 2))
            if ax < 0 or x.shape[ax] != size:
                return x  # broadcast along the split axis
            return x[(slice(None),) * ax + (slice(lo, hi),)]

        def batches(lo: int, hi: int) -> None:
            np.matmul(part(a, lo, hi), part(b, lo, hi), out=part(out, lo, hi))

        parallel_for(size, batches)
        return out
    a2, b2 = a[(0,) * (a.ndim - 2)], b[(0,) * (b.ndim - 2)]
    o2 = out[(0,) * (out.ndim - 2)]
    if n >= 128:

        def columns(lo: int, hi: int) -> None:
            np.matmul(a2, b2[:, lo:hi], out=o2[:, lo:hi])

        parallel_for(n, columns, grain=64)
    else:

        def rows(lo: int, hi: int) -> None:
            np.matmul(a2[lo:hi], b2, out=o2[lo:hi])

        parallel_for(m, rows, grain=16)
    return out
