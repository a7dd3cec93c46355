"""Deep Compression (Han et al., ICLR 2016): prune, share weights by k-means palettes,
Huffman-code, into the checked container (``container.py``), without retraining."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelloader.compress import codecs
from modelloader.compress.container import load_model, write_container
from modelloader.compress.prune import layer_rate, prune, weight_layers
from modelloader.compress.report import AccuracyReport, EvalSpec, load_eval
from modelloader.errors import CompressionAccuracyError


@dataclass(frozen=True)
class CompressConfig:
    """``prune``: fraction of each weight layer zeroed (``prune_layers`` overrides it by
    weight or node name); ``palettize_bits``/``conv_bits``: palette widths of fully-connected
    and convolution weights (None: keep float32); ``huffman``: Huffman-code index streams."""

    prune: float = 0.9
    prune_layers: Mapping[str, float] = field(default_factory=dict)
    palettize_bits: int | None = 5
    conv_bits: int | None = 8
    huffman: bool = True


@dataclass
class LayerReport:
    name: str
    kind: str
    shape: tuple[int, ...]
    original: int
    pruned: int
    palettized: int
    huffman: int
    density: float
    codec: str

    @property
    def ratio(self) -> float:
        return self.original / max(self.huffman, 1)


@dataclass
class SizeReport:
    layers: list[LayerReport]
    other_bytes: int  # biases and other constants, stored raw
    file_bytes: int

    def totals(self) -> tuple[int, int, int, int]:
        ls = self.layers
        return (
            sum(x.original for x in ls) + self.other_bytes,
            sum(x.pruned for x in ls) + self.other_bytes,
            sum(x.palettized for x in ls) + self.other_bytes,
            sum(x.huffman for x in ls) + self.other_bytes,
        )

    @property
    def ratio(self) -> float:
        return self.totals()[0] / max(self.file_bytes, 1)

    @property
    def huffman_gain(self) -> float:
        """Palettized bytes / Huffman-coded bytes: Huffman's own contribution."""
        t = self.totals()
        return t[2] / max(t[3], 1)

    def __str__(self) -> str:
        rows = [
            f"{'layer':32} {'shape':>18} {'original':>12} {'pruned':>11} {'palette':>11} "
            f"{'huffman':>11} {'ratio':>7} {'density':>8}  codec"
        ]
        for x in self.layers:
            rows.append(
                f"{x.name[:32]:32} {'x'.join(map(str, x.shape)):>18} {x.original:>12,} {x.pruned:>11,} "
                f"{x.palettized:>11,} {x.huffman:>11,} {x.ratio:>6.1f}x {x.density:>8.3f}  {x.codec}"
            )
        o, p, q, h = self.totals()
        rows.append(f"{'other constants':32} {'':>18} {self.other_bytes:>12,}")
        rows.append(
            f"{'total':32} {'':>18} {o:>12,} {p:>11,} {q:>11,} {h:>11,} {o / max(h, 1):>6.1f}x"
        )
        size = (
            f"{self.ratio:.1f}x smaller than float32"
            if self.ratio >= 1
            else f"{1 / self.ratio:.1f}x LARGER than float32 (the stored graph outweighs "
            f"{h:,} bytes of weights: compression pays off for models with more weights)"
        )
        rows.append(
            f"file {self.file_bytes:,} bytes: {size}; "
            f"Huffman alone {self.huffman_gain:.2f}x over the palettized size"
        )
        return "\n".join(rows)


@dataclass
class CompressResult:
    """``model, report = compress(...)`` also works (the model as decoded from ``data``)."""

    model: Any
    report: SizeReport
    data: bytes
    accuracy: AccuracyReport | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.report))

    def save(self, path: str | os.PathLike[str]) -> None:
        Path(path).write_bytes(self.data)


def _encode_weight(
    w: np.ndarray, kind: str, rate: float, cfg: CompressConfig, write: codecs.BlobWriter
) -> tuple[dict, LayerReport]:
    bits = cfg.conv_bits if kind == "conv" else cfg.palettize_bits
    p = prune(w, rate) if rate > 0 else w
    nz = np.flatnonzero(p.reshape(-1))
    orig = w.nbytes
    density = nz.size / max(w.size, 1)
    vbits = bits or 32
    if rate > 0:
        ibits = codecs.best_index_bits(nz, vbits, entropy_coded=cfg.huffman)
        sym, pos = codecs.relative_positions(nz, ibits)
        entries = p.reshape(-1)[pos]
        pruned_bytes = math.ceil(pos.size * (32 + ibits) / 8)
        if bits:
            real = entries[entries != 0]
            cb = codecs.kmeans_codebook(real, (1 << bits) - (pos.size > nz.size))
            if pos.size > nz.size:  # filler entries need an exact zero in the palette
                cb = np.unique(np.append(cb, np.float32(0)))

            def values(e: np.ndarray, cb: np.ndarray = cb) -> dict:
                return codecs.encode_palette(e, bits, cfg.huffman, write, codebook=cb)
        else:

            def values(e: np.ndarray) -> dict:
                return codecs.encode_raw(e, write)

        pal_bytes = math.ceil(pos.size * (vbits + ibits) / 8) + (4 << bits if bits else 0)
        spec = codecs.encode_sparse(
            p, index_bits=ibits, values=values, use_huffman=cfg.huffman, write=write
        )
    else:
        pruned_bytes = orig
        pal_bytes = math.ceil(w.size * vbits / 8) + (4 << bits if bits else 0)
        spec = (
            codecs.encode_palette(w, bits, cfg.huffman, write)
            if bits
            else codecs.encode_raw(w, write)
        )
    stored = _stored_bytes(spec)
    return spec, LayerReport(
        "", kind, w.shape, orig, pruned_bytes, pal_bytes, stored, density, codecs.describe(spec)
    )


def _stored_bytes(spec: Any) -> int:
    if isinstance(spec, dict):
        return sum(v["length"] if k == "blob" else _stored_bytes(v) for k, v in spec.items())
    if isinstance(spec, list):
        return sum(_stored_bytes(v) for v in spec)
    return 0


def compress(
    model_or_path: Any,
    prune: float = 0.9,
    prune_layers: Mapping[str, float] | None = None,
    palettize_bits: int | None = 5,
    conv_bits: int | None = 8,
    huffman: bool = True,
    eval: EvalSpec | None = None,  # noqa: A002  (the issue's name for it)
    max_drop: float | None = None,
    output: str | os.PathLike[str] | None = None,
) -> CompressResult:
    """Compresses a model (a ``Model`` or anything ``modelloader.load`` takes).

    Returns the model decoded from the container (what will ship), the per-layer size
    report and the container bytes; ``output`` also writes them. With ``eval`` (an .npz of
    ``X``/``y``, an ``(X, y)`` pair or ``model -> accuracy``) the accuracy before and after
    is measured; losing more than ``max_drop`` points raises ``CompressionAccuracyError``
    (carrying the result as ``.result``) and writes nothing.
    """
    import modelloader

    for b in (palettize_bits, conv_bits):
        if b is not None and not 1 <= b <= codecs.MAX_PALETTE_BITS:
            raise ValueError(
                f"palette widths must lie in [1, {codecs.MAX_PALETTE_BITS}] bits, got {b}"
            )
    cfg = CompressConfig(prune, dict(prune_layers or {}), palettize_bits, conv_bits, huffman)
    model = (
        model_or_path
        if isinstance(model_or_path, modelloader.Model)
        else modelloader.load(model_or_path)
    )
    # the planned graph (BatchNorm folded, activations fused): what is stored is what runs,
    # and loading the container does not fold every weight again
    graph = model.graph
    kinds = weight_layers(graph)
    node_of = {
        n.inputs[1]: n.name for n in graph.nodes if len(n.inputs) > 1 and n.inputs[1] in kinds
    }
    unknown = set(cfg.prune_layers) - set(kinds) - set(node_of.values())
    if unknown:
        raise ValueError(
            f"--prune-layer names no weight layer: {sorted(unknown)}; layers are {sorted(kinds)}"
        )
    layers: list[LayerReport] = []
    other = 0

    def encode(name: str, x: np.ndarray, write: codecs.BlobWriter) -> dict:
        nonlocal other
        if name in kinds:
            rate = layer_rate(name, node_of, cfg.prune, cfg.prune_layers)
            spec, rep = _encode_weight(x, kinds[name], rate, cfg, write)
            rep.name = name
            layers.append(rep)
            return spec
        other += x.nbytes
        return codecs.encode_raw(x, write)

    data = write_container(graph, encode)
    compressed = load_model(data, Path(str(output)).name if output else "<compressed>")
    report = SizeReport(layers, other, len(data))
    result = CompressResult(compressed, report, data)
    if eval is not None:
        score = load_eval(eval)
        result.accuracy = AccuracyReport(score(model), score(compressed), max_drop)
        if not result.accuracy.passed:
            err = CompressionAccuracyError(
                f"compression lost {result.accuracy.drop:.2f} accuracy points, more than "
                f"--max-drop {max_drop:g}; prune less, or use more palette bits"
            )
            err.result = result  # type: ignore[attr-defined]
            raise err
    if output is not None:
        result.save(output)
    return result
