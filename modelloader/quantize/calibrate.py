"""Calibration data and activation-range estimators.

``load_data`` turns an ``.npz``, a directory of ``.npy``/``.npz`` files or an iterable of input
dicts into a ``Dataset`` of batches. A ``Calibrator`` (``MinMax``, ``Percentile``, ``Entropy``)
observes chosen tensors, fed by ``run_with_intermediates`` (the model's plan with those tensors
as extra outputs), and returns a ``(low, high)`` range per tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from modelloader.executor import Plan
from modelloader.ir import Graph, Value

#: npz keys read as ground-truth labels rather than inputs
LABEL_KEYS = ("y", "label", "labels", "target", "targets")

Feeds = dict[str, np.ndarray]
Progress = Callable[[Iterable[Any], int, str], Iterable[Any]]


def no_progress(it: Iterable[Any], length: int, label: str) -> Iterable[Any]:
    return it


@dataclass
class Dataset:
    """Input batches (dicts by input name) and, when known, the labels of each batch."""

    batches: list[Feeds]
    labels: list[np.ndarray] | None = None
    #: batches are indivisible (the model fixes its batch dimension): ``split`` and ``take``
    #: cut at batch boundaries only
    whole: bool = False

    @property
    def samples(self) -> int:
        return sum(len(next(iter(b.values()))) for b in self.batches) if self.batches else 0

    def split(self, fraction: float) -> tuple[Dataset, Dataset]:
        """(first 1 - fraction, last fraction) of the samples, batch structure kept."""
        n = self.samples
        k = n - int(round(n * fraction))
        if self.whole:  # the batch boundary nearest k, keeping a batch on each side if possible
            ends = np.cumsum([len(next(iter(b.values()))) for b in self.batches])
            inner = ends[:-1] if len(ends) > 1 else ends
            k = int(inner[np.argmin(np.abs(inner - k))])
        return self.take(0, k), self.take(k, n)

    def take(self, lo: int, hi: int) -> Dataset:
        """Samples lo:hi (``whole``: the batches starting in lo:hi, entire)."""
        out, labels, pos = [], [], 0
        for i, b in enumerate(self.batches):
            size = len(next(iter(b.values())))
            a, z = max(lo - pos, 0), min(hi - pos, size)
            if self.whole:
                a, z = (0, size) if lo <= pos < hi else (0, 0)
            if a < z:
                out.append({k: v[a:z] for k, v in b.items()})
                if self.labels is not None:
                    labels.append(self.labels[i][a:z])
            pos += size
        return Dataset(out, labels if self.labels is not None else None, self.whole)


def random_dataset(inputs: list[Value], samples: int, seed: int = 0) -> Dataset:
    """``samples`` seeded inputs shaped like ``inputs`` (standard normal floats, zero
    integers and booleans; unknown dimensions 1, a fixed leading dimension kept as the
    batch): for measuring quantization error when no data is given."""
    rng = np.random.default_rng(seed)
    batch: Feeds = {}
    whole = False
    for v in inputs:
        dims = [d if isinstance(d, int) and d > 0 else 1 for d in (v.shape or ())]
        if dims and isinstance((v.shape or (None,))[0], int):
            whole = True  # the model fixes its batch dimension
        elif dims:
            dims[0] = samples
        dt = np.dtype(v.dtype) if v.dtype is not None else np.dtype(np.float32)
        if dt.kind == "f":
            batch[v.name] = rng.standard_normal(dims).astype(dt)
        else:
            batch[v.name] = np.zeros(dims, dt)
    return Dataset([batch], None, whole)


def _fit(arr: np.ndarray, v: Value) -> np.ndarray:
    """Casts to the input's dtype and reshapes flat samples to its static per-sample shape."""
    if v.dtype is not None and arr.dtype != v.dtype:
        arr = arr.astype(v.dtype)
    if v.shape is not None and len(v.shape) != arr.ndim:
        rest = v.shape[1:]
        if all(isinstance(d, int) and d > 0 for d in rest):
            if math.prod(rest) == math.prod(arr.shape[1:]):  # type: ignore[arg-type]
                arr = arr.reshape((arr.shape[0], *rest))  # type: ignore[arg-type]
    return arr


def _from_arrays(
    arrays: Mapping[str, np.ndarray], inputs: list[Value], batch: int
) -> tuple[list[Feeds], list[np.ndarray] | None]:
    names = [v.name for v in inputs]
    feeds: dict[str, np.ndarray] = {}
    labels = None
    rest = [k for k in arrays if k not in names]
    for k in rest:
        if k in LABEL_KEYS:
            labels = np.asarray(arrays[k])
    unnamed = [k for k in rest if k not in LABEL_KEYS]
    for v in inputs:
        if v.name in arrays:
            feeds[v.name] = np.asarray(arrays[v.name])
        elif len(inputs) == 1 and unnamed:  # single-input model: the one non-label array
            feeds[v.name] = np.asarray(arrays[unnamed[0]])
        else:
            raise ValueError(
                f"calibration data has no array for input '{v.name}' (keys {list(arrays)})"
            )
    for v in inputs:
        feeds[v.name] = _fit(feeds[v.name], v)
    n = len(next(iter(feeds.values())))
    batches = [{k: a[i : i + batch] for k, a in feeds.items()} for i in range(0, n, batch)]
    lab = [labels[i : i + batch] for i in range(0, n, batch)] if labels is not None else None
    return batches, lab


def fixed_batch(inputs: list[Value]) -> int | None:
    """The batch size all ``inputs`` fix as their first dimension (None: not fixed)."""
    dims = {v.shape[0] if v.shape else None for v in inputs}
    d = dims.pop() if len(dims) == 1 else None
    return d if isinstance(d, int) and d > 0 else None


def load_data(src: Any, inputs: list[Value], batch: int = 64) -> Dataset:
    """Reads calibration/evaluation data; a model whose inputs fix the batch dimension gets
    batches of exactly that size, never cut (``Dataset.whole``).

    ``src``: an ``.npz`` path (arrays by input name, first axis = samples; a single-input model
    also takes one unnamed array; ``y``/``label(s)``/``target(s)`` arrays are labels), a
    directory of ``.npy`` (single input; or ``<input>.npy``) and ``.npz`` files, a
    ``Dataset``, or an iterable of input dicts (or of ``(inputs, labels)`` pairs).
    """
    fixed = fixed_batch(inputs)
    data = _load(src, inputs, fixed or batch)
    if fixed is not None:
        data.whole = True
    return data


def _load(src: Any, inputs: list[Value], batch: int) -> Dataset:
    if isinstance(src, Dataset):
        return replace(src)
    if isinstance(src, (str, Path)):
        path = Path(src)
        if path.is_dir():
            batches: list[Feeds] = []
            labels: list[np.ndarray] | None = []
            files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz"))
            npy = {p.stem: np.load(p) for p in files if p.suffix == ".npy"}
            if npy and all(k in {v.name for v in inputs} | set(LABEL_KEYS) for k in npy):
                b, lab = _from_arrays(npy, inputs, batch)  # <input>.npy files: one set
                return Dataset(b, lab)
            for p in files:
                arrays = dict(np.load(p)) if p.suffix == ".npz" else {inputs[0].name: np.load(p)}
                b, lab = _from_arrays(arrays, inputs, batch)
                batches += b
                if lab is None:
                    labels = None
                elif labels is not None:
                    labels += lab
            if not batches:
                raise ValueError(f"{path}: no .npy or .npz files")
            return Dataset(batches, labels)
        with np.load(path) as z:
            b, lab = _from_arrays(dict(z), inputs, batch)
        return Dataset(b, lab)
    if isinstance(src, Mapping):
        b, lab = _from_arrays(src, inputs, batch)
        return Dataset(b, lab)
    batches, labels = [], []
    for item in src:
        lab_item = None
        if isinstance(item, tuple) and len(item) == 2:
            item, lab_item = item
        feeds = {v.name: _fit(np.asarray(item[v.name]), v) for v in inputs}
        batches.append(feeds)
        labels.append(None if lab_item is None else np.asarray(lab_item))
    has = all(x is not None for x in labels) and batches
    return Dataset(batches, labels if has else None)  # type: ignore[arg-type]


def with_outputs(graph: Graph, names: list[str]) -> Graph:
    """A shallow copy of ``graph`` whose outputs are ``names`` (any values it computes)."""
    outs = [graph.values.get(n) or Value(n) for n in names]
    return replace(graph, outputs=outs)


def run_with_intermediates(
    graph: Graph, names: list[str], data: Iterable[Feeds]
) -> Iterator[dict[str, np.ndarray]]:
    """Runs the (unoptimised) ``graph`` on each batch and yields the values ``names``."""
    from modelloader.kernels.cpu import registry

    plan = Plan(with_outputs(graph, names), registry)
    for feeds in data:
        yield dict(zip(plan.output_names, plan.run(dict(feeds))))


# --------------------------------------------------------------------------- calibrators


class Calibrator:
    """Collects statistics of named tensors batch by batch; ``ranges()`` gives (low, high)."""

    def observe(self, values: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def ranges(self) -> dict[str, tuple[float, float]]:
        raise NotImplementedError


@dataclass
class MinMax(Calibrator):
    """The smallest and largest value seen."""

    lo: dict[str, float] = field(default_factory=dict)
    hi: dict[str, float] = field(default_factory=dict)

    def observe(self, values: Mapping[str, np.ndarray]) -> None:
        for k, v in values.items():
            v = np.asarray(v, np.float32)
            if v.size == 0:
                continue
            self.lo[k] = min(self.lo.get(k, math.inf), float(np.nanmin(v)))
            self.hi[k] = max(self.hi.get(k, -math.inf), float(np.nanmax(v)))

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {k: (self.lo[k], self.hi[k]) for k in self.lo}


class _Histogram:
    """A histogram of values over a symmetric range [-r, r] that widens as data arrive."""

    def __init__(self, bins: int) -> None:
        self.bins = bins if bins % 2 == 0 else bins + 1
        self.r = 0.0
        self.counts = np.zeros(self.bins, np.float64)
        self.lo, self.hi = math.inf, -math.inf

    def add(self, v: np.ndarray) -> None:
        v = v[np.isfinite(v)].astype(np.float32).ravel()
        if v.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(v.min())), max(self.hi, float(v.max()))
        need = max(abs(self.lo), abs(self.hi), 1e-12)
        if need > self.r:
            new_r = need if self.r == 0 else max(need, self.r * 2)
            if self.counts.any():  # re-bin old counts at their bin centres
                edges = np.linspace(-self.r, self.r, self.bins + 1)
                centres = (edges[:-1] + edges[1:]) / 2
                self.counts, _ = np.histogram(
                    centres, bins=self.bins, range=(-new_r, new_r), weights=self.counts
                )
                self.counts = self.counts.astype(np.float64)
            self.r = new_r
        c, _ = np.histogram(v, bins=self.bins, range=(-self.r, self.r))
        self.counts += c

    def edges(self) -> np.ndarray:
        return np.linspace(-self.r, self.r, self.bins + 1)


@dataclass
class Percentile(Calibrator):
    """Clips each tail at ``percentile`` percent of the values (histogram estimate)."""

    percentile: float = 99.999
    bins: int = 2048
    hists: dict[str, _Histogram] = field(default_factory=dict)

    def observe(self, values: Mapping[str, np.ndarray]) -> None:
        for k, v in values.items():
            self.hists.setdefault(k, _Histogram(self.bins)).add(np.asarray(v))

    def ranges(self) -> dict[str, tuple[float, float]]:
        out = {}
        tail = (100.0 - self.percentile) / 100.0
        for k, h in self.hists.items():
            cdf = np.cumsum(h.counts)
            total = cdf[-1] if cdf.size and cdf[-1] > 0 else 1.0
            e = h.edges()
            lo = e[int(np.searchsorted(cdf, tail * total, side="right"))]
            hi = e[min(int(np.searchsorted(cdf, (1 - tail) * total, side="left")) + 1, h.bins)]
            out[k] = (max(float(lo), h.lo), min(float(hi), h.hi))
        return out


@dataclass
class Entropy(Calibrator):
    """Threshold minimising the KL divergence between the |value| distribution and its
    128-level quantized version (TensorRT's entropy calibration)."""

    bins: int = 2048
    levels: int = 128
    hists: dict[str, _Histogram] = field(default_factory=dict)

    def observe(self, values: Mapping[str, np.ndarray]) -> None:
        for k, v in values.items():
            self.hists.setdefault(k, _Histogram(self.bins)).add(np.asarray(v))

    def ranges(self) -> dict[str, tuple[float, float]]:
        out = {}
        for k, h in self.hists.items():
            half = h.bins // 2
            mag = h.counts[half:] + h.counts[:half][::-1]  # |x| histogram over [0, r]
            t = _kl_threshold(mag, self.levels) * h.r / half
            out[k] = (max(-t, h.lo), min(t, h.hi))
        return out


def _kl_threshold(hist: np.ndarray, levels: int) -> int:
    """Number of leading bins of ``hist`` to keep (>= levels) with the least KL divergence."""
    n = hist.size
    if n <= levels or hist.sum() == 0:
        return n
    best, best_i = math.inf, n
    step = max(1, (n - levels) // 256)
    for i in range(levels, n + 1, step):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        nz = p > 0
        # quantize the first i bins into `levels` groups, spreading each group's mass evenly
        idx = (np.arange(i) * levels) // i
        sums = np.bincount(idx, weights=hist[:i], minlength=levels)
        cnt = np.bincount(idx, weights=(hist[:i] > 0).astype(np.float64), minlength=levels)
        q = np.where(hist[:i] > 0, sums[idx] / np.maximum(cnt[idx], 1), 0.0)
        ps, qs = p[nz] / p.sum(), q[nz]
        if qs.sum() == 0 or (qs == 0).any():
            qs = qs + 1e-12
        qs = qs / qs.sum()
        kl = float(np.sum(ps * np.log(ps / qs)))
        if kl < best:
            best, best_i = kl, i
    return best_i


def make_calibrator(method: str, percentile: float = 99.999, bins: int = 2048) -> Calibrator:
    if method == "minmax":
        return MinMax()
    if method == "percentile":
        return Percentile(percentile=percentile, bins=bins)
    if method == "entropy":
        return Entropy(bins=bins)
    raise ValueError(f"unknown calibration method {method!r}")


def calibrate(
    graph: Graph,
    tensors: list[str],
    data: Dataset,
    calibrator: Calibrator,
    progress: Progress = no_progress,
) -> dict[str, tuple[float, float]]:
    """Ranges of ``tensors`` over ``data`` (graph inputs included), measured by ``calibrator``."""
    if not tensors:
        return {}
    stream = run_with_intermediates(graph, tensors, data.batches)
    for values in progress(stream, len(data.batches), "calibrating"):
        calibrator.observe(values)
    return calibrator.ranges()
