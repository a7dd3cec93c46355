"""Deep Compression benchmarks (issue 6): ratios on AlexNet / VGG-19, Huffman's own gain,
Huffman decode speed, compressed ResNet-50 load time, sparse vs dense latency at batch 1.

usage: python bench/bench_compress.py [--models alexnet,vgg19,resnet50] [--out bench/compress.md]
Models come from ../shared/bench/make_models.py (seeded random weights; cached).
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import modelloader
from modelloader.compress import compress, huffman
from modelloader.kernels.cpu.gemm import fused_gemm
from modelloader.kernels.cpu.sparse import sparse_gemm

REPO = Path(__file__).resolve().parents[1]
MAKE = REPO.parent / "shared" / "bench" / "make_models.py"


def model_path(name: str) -> Path:
    for p in sorted(glob.glob(str(REPO / ".cache" / "bench_models" / "*" / f"{name}.onnx"))):
        return Path(p)
    out = REPO / "bench" / ".models"
    if not (out / f"{name}.onnx").exists():
        subprocess.run([sys.executable, str(MAKE), str(out), name], check=True)
    return out / f"{name}.onnx"


def best_of(fn, n: int = 5) -> float:
    fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def huffman_speed(lines: list[str]) -> None:
    rng = np.random.default_rng(0)
    idx = np.clip(np.round(rng.standard_normal(25_000_000) * 5 + 16), 0, 31).astype(np.int64)
    s = huffman.encode(idx, 32)
    kw = dict(count=s.count, lengths=s.lengths, alphabet=32, chunk=s.chunk, total_bits=s.total_bits)
    t = best_of(lambda: huffman.decode(s.blob, **kw), 3)
    lines.append(
        f"- Huffman decode, 25M 5-bit palette indices ({len(s.blob) / 1e6:.1f} MB): {t:.3f} s"
    )


def ratios(name: str, lines: list[str]) -> Path:
    t = time.perf_counter()
    r = compress(model_path(name), prune=0.91, palettize_bits=5, conv_bits=8, huffman=True)
    dt = time.perf_counter() - t
    o, p, q, h = r.report.totals()
    out = REPO / "bench" / ".models" / f"{name}.mldc"
    out.parent.mkdir(exist_ok=True)
    r.save(out)
    lines.append(
        f"- {name}: {o / 1e6:.1f} MB float32 -> pruned {p / 1e6:.1f} MB -> palettized {q / 1e6:.2f} MB "
        f"-> Huffman {h / 1e6:.2f} MB; file {len(r.data) / 1e6:.2f} MB = **{r.report.ratio:.1f}x**; "
        f"Huffman's own gain {r.report.huffman_gain:.2f}x (compress took {dt:.0f} s)"
    )
    return out


def latency(name: str, packed: Path, lines: list[str]) -> None:
    dense = modelloader.load(model_path(name))
    sparse = modelloader.load(packed)
    x = np.random.default_rng(0).standard_normal(dense.inputs[0].shape).astype(np.float32)
    td, ts = best_of(lambda: dense.predict(x)), best_of(lambda: sparse.predict(x))
    kinds = [v.get("execution") for v in sparse.compression["layers"].values() if "execution" in v]
    lines.append(
        f"- {name} batch 1: dense {td * 1e3:.1f} ms, 91%-pruned (sparse kernels on "
        f"{kinds.count('sparse')}/{len(kinds)} layers) {ts * 1e3:.1f} ms: **{td / ts:.2f}x**"
    )
    for n in sparse.graph.nodes:
        if n.op != "SparseGemm":
            continue
        w = sparse._plan.constants[n.inputs[1]]
        wd = w.to_dense()
        a = np.random.default_rng(1).standard_normal((1, wd.shape[1])).astype(np.float32)
        tdn, tsp = (
            best_of(lambda a=a, wd=wd: fused_gemm(a, wd, transB=1)),
            best_of(lambda a=a, w=w: sparse_gemm(a, w)),
        )
        lines.append(
            f"  - FC {n.name or n.outputs[0]} {wd.shape[0]}x{wd.shape[1]} density {w.density:.2f}: "
            f"dense {tdn * 1e3:.2f} ms, sparse {tsp * 1e3:.2f} ms: {tdn / tsp:.1f}x"
        )


def load_time(lines: list[str]) -> None:
    src = model_path("resnet50")
    packed = REPO / "bench" / ".models" / "resnet50.mldc"
    compress(src, prune=0.9, palettize_bits=5, conv_bits=8).save(packed)
    to = best_of(lambda: modelloader.load(src), 3)
    tc = best_of(lambda: modelloader.load(packed), 3)
    lines.append(
        f"- ResNet-50 load: float32 ONNX ({src.stat().st_size / 1e6:.0f} MB) {to:.2f} s, "
        f"compressed ({packed.stat().st_size / 1e6:.1f} MB) {tc:.2f} s: **{tc / to:.2f}x**"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="bvlc_alexnet,vgg19")
    ap.add_argument("--out", default=str(REPO / "bench" / "compress.md"))
    args = ap.parse_args()
    lines = [f"# Deep Compression benchmarks ({os.cpu_count()} CPUs)", ""]
    huffman_speed(lines)
    print(lines[-1], flush=True)
    for name in args.models.split(","):
        packed = ratios(name, lines)
        print(lines[-1], flush=True)
        latency(name, packed, lines)
        print("\n".join(lines[-3:]), flush=True)
    load_time(lines)
    print(lines[-1], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
