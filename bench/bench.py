#!/usr/bin/env python3
"""Benchmark modelloader against onnxruntime on real CNN architectures, batch 1, two threads.

Models come from ../shared/bench/make_models.py (ONNX's light models with seeded random weights)
and are built once into bench/.models/. Every (model, runtime) pair runs in its own subprocess,
so load time and peak RSS are that runtime's alone. Each worker loads the model, runs
``--warmup`` untimed inferences, then times ``--runs`` more and reports the median.

Threads: onnxruntime gets intra_op_num_threads=2, inter_op_num_threads=1; modelloader runs with
NumPy's BLAS limited to 2 threads through threadpoolctl. OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
are removed from the workers' environment (they slow NumPy's OpenBLAS on this machine); the
table header says which BLAS kernel the workers actually used.

usage: python bench/bench.py [--models resnet50,squeezenet] [--runs 20] [--warmup 3]
The markdown table is printed and written to bench/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MODELS_DIR = HERE / ".models"
MAKE_MODELS = HERE.parent.parent / "shared" / "bench" / "make_models.py"
RESULTS = HERE / "results.md"
DEFAULT_MODELS = ["resnet50", "densenet121", "inception_v2", "squeezenet", "shufflenet"]
RUNTIMES = ["modelloader", "onnxruntime"]
THREADS = 2
DROP_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---------------------------------------------------------------------------------------------
# worker: one runtime, one model, in its own process


def run_worker(runtime: str, path: Path, runs: int, warmup: int, out: Path) -> dict:
    """Loads and times ``path`` with ``runtime``; saves the outputs to ``out`` (npz)."""
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = THREADS
        opts.inter_op_num_threads = 1
        t0 = time.perf_counter()
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        load_s = time.perf_counter() - t0
        [inp] = sess.get_inputs()
        names = [o.name for o in sess.get_outputs()]

        def infer(x: np.ndarray) -> dict[str, np.ndarray]:
            return dict(zip(names, sess.run(None, {inp.name: x}), strict=True))

        name, shape = inp.name, inp.shape
        info = {"version": ort.__version__}
    else:
        from threadpoolctl import threadpool_info, threadpool_limits

        import modelloader

        threadpool_limits(limits=THREADS, user_api="blas")
        t0 = time.perf_counter()
        model = modelloader.load(path)
        load_s = time.perf_counter() - t0
        [inp] = model.inputs
        name, shape = inp.name, inp.shape

        def infer(x: np.ndarray) -> dict[str, np.ndarray]:
            return model.predict({name: x})

        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        info = {"version": modelloader.__version__, "numpy": np.__version__, "blas": blas}

    x = np.random.default_rng(0).standard_normal([int(d) for d in shape]).astype(np.float32)
    for _ in range(warmup):
        outputs = infer(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        outputs = infer(x)
        times.append(time.perf_counter() - t0)
    np.savez(out, **outputs)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {
        "load_s": load_s,
        "median_ms": statistics.median(times) * 1e3,
        "peak_rss_mib": rss_kib / 1024,
        **info,
    }


# ---------------------------------------------------------------------------------------------
# driver


def build_models(names: list[str]) -> None:
    missing = [n for n in names if not (MODELS_DIR / f"{n}.onnx").exists()]
    if not missing:
        return
    if not MAKE_MODELS.is_file():
        sys.exit(f"{MAKE_MODELS} not found: check out the shared repo beside this one")
    print(f"building {', '.join(missing)} into {MODELS_DIR} ...", file=sys.stderr)
    subprocess.run([sys.executable, str(MAKE_MODELS), str(MODELS_DIR), *missing], check=True)


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DROP_ENV}


def measure(runtime: str, model: str, runs: int, warmup: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", runtime, str(MODELS_DIR / f"{model}.onnx")]
    cmd += ["--runs", str(runs), "--warmup", str(warmup), "--out", str(out)]
    proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        print(f"{model}/{runtime} failed: {last}", file=sys.stderr)
        return {"error": last}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def max_rel_diff(a_path: Path, b_path: Path) -> float:
    """Largest |a - b| over an output, relative to that output's largest |b|; max over outputs."""
    with np.load(a_path) as a, np.load(b_path) as b:
        return max(
            float(np.max(np.abs(a[k].astype(np.float64) - b[k])) / max(np.max(np.abs(b[k])), 1e-30))
            for k in b.files
            if k in a.files
        )


def fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def table(rows: list[dict], runs: int, warmup: int, blas: str) -> str:
    head = [
        f"Batch 1, {THREADS} threads, median of {runs} runs after {warmup} warm-up; "
        f"{cpu_name()}, {os.cpu_count()} CPUs.",
        f"NumPy BLAS: {blas}.",
        "",
        "| model | load ml (s) | load ort (s) | latency ml (ms) | latency ort (ms) "
        "| ml / ort | peak RSS ml (MiB) | peak RSS ort (MiB) | max diff / max ort |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines, errors = [], []
    for r in rows:
        ml, ort = r["modelloader"], r["onnxruntime"]
        ratio = (
            ml["median_ms"] / ort["median_ms"] if "median_ms" in ml and "median_ms" in ort else None
        )
        cells = [
            r["model"],
            fmt(ml.get("load_s"), ".2f"),
            fmt(ort.get("load_s"), ".2f"),
            fmt(ml.get("median_ms"), ".1f"),
            fmt(ort.get("median_ms"), ".1f"),
            fmt(ratio, ".2f"),
            fmt(ml.get("peak_rss_mib"), ".0f"),
            fmt(ort.get("peak_rss_mib"), ".0f"),
            fmt(r.get("diff"), ".1e"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        errors += [
            f"- {r['model']} / {rt}: {r[rt]['error']}" for rt in RUNTIMES if "error" in r[rt]
        ]
    if errors:
        lines += ["", "Failures:", *errors]
    return "\n".join(head + lines) + "\n"


def describe_blas(results: list[dict]) -> str:
    for r in results:
        for b in r["modelloader"].get("blas", []):
            return (
                f"{b['internal_api']} {b['version']}, kernel/coretype {b.get('architecture')}, "
                f"{b['num_threads']} threads ({Path(b['filepath']).name})"
            )
    return "unknown (no modelloader run succeeded)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated names")
    ap.add_argument("--runs", type=int, default=10, help="timed runs per model and runtime")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument("--worker", nargs=2, metavar=("RUNTIME", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        runtime, path = args.worker
        print(json.dumps(run_worker(runtime, Path(path), args.runs, args.warmup, args.out)))
        return

    models = [m for m in args.models.split(",") if m]
    build_models(models)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            row: dict = {"model": model}
            for rt in RUNTIMES:
                row[rt] = measure(rt, model, args.runs, args.warmup, Path(tmp, f"{model}-{rt}.npz"))
                brief = {k: v for k, v in row[rt].items() if k in ("load_s", "median_ms", "error")}
                print(f"{model:>14} {rt:<12} {brief}", file=sys.stderr)
            if all("error" not in row[rt] for rt in RUNTIMES):
                row["diff"] = max_rel_diff(
                    Path(tmp, f"{model}-modelloader.npz"), Path(tmp, f"{model}-onnxruntime.npz")
                )
            rows.append(row)
    text = table(rows, args.runs, args.warmup, describe_blas(rows))
    print(text)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
