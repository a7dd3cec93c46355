#!/usr/bin/env python3
"""Benchmark modelloader against onnxruntime on real CNN architectures, batch 1, two threads.

Models come from ../shared/bench/make_models.py (ONNX's light models with seeded random weights)
and bench/make_encoder.py (a BERT-base-sized transformer encoder, as exporters write it) and
are built once into bench/.models/. Every (model, runtime) pair runs in its own subprocess,
so load time and peak RSS are that runtime's alone. Each worker loads the model, runs
``--warmup`` untimed inferences, then times ``--runs`` more and reports the median. The
runtimes take turns ``--repeat`` times per model, and the table keeps each one's fastest
worker (the machine is shared: a burst of load must then hit every turn of one runtime).

Threads: onnxruntime gets intra_op_num_threads=2, inter_op_num_threads=1; modelloader runs with
NumPy's BLAS limited to 2 threads through threadpoolctl. OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
are removed from the workers' environment (they slow NumPy's OpenBLAS on this machine); the
table header says which BLAS kernel the workers actually used.

TFLite: the MobileNetV2 fixtures of models/tflite (float32, float16 weights, full int8; made by
scripts/make_tflite_fixtures.py) run on modelloader and on ai-edge-litert's Interpreter
(num_threads=2, default op resolver, so XNNPACK where it applies), fed the seeded inputs stored
beside them, in a second table. ai-edge-litert is a bench-only dependency (the `bench` extra);
without it those rows are skipped with a note.

usage: python bench/bench.py [--models resnet50,squeezenet] [--tflite mobilenet_v2_int8]
                             [--runs 30] [--tflite-runs 200] [--warmup 3] [--repeat 3]
The ONNX table's last column, the GEMM floor, is the time bare ``np.matmul`` calls of the
model's Conv/Gemm/MatMul product shapes take in the modelloader worker (cache-warm, no im2col
or elementwise passes): what NumPy's BLAS alone needs for the model.

The markdown tables are printed and written to bench/results.md.
"""

from __future__ import annotations

import argparse
import importlib.util
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
DEFAULT_MODELS = [
    "resnet50",
    "densenet121",
    "inception_v2",
    "squeezenet",
    "shufflenet",
    "bert_encoder",
]
#: models this repository builds itself (the rest come from ../shared/bench/make_models.py)
OWN_MODELS = {"bert_encoder": HERE / "make_encoder.py"}
RUNTIMES = ["modelloader", "onnxruntime"]
TFLITE_DIR = HERE.parent / "models" / "tflite"
DEFAULT_TFLITE = ["mobilenet_v2_f32", "mobilenet_v2_f16", "mobilenet_v2_int8"]
TFLITE_RUNTIMES = ["modelloader", "litert"]
THREADS = 2
DROP_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---------------------------------------------------------------------------------------------
# worker: one runtime, one model, in its own process


def stored_inputs(path: Path) -> dict[str, np.ndarray]:
    """The seeded inputs a TFLite fixture's npz holds (``input:<name>``), by input name."""
    with np.load(path.with_suffix(".npz")) as z:
        return {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("input:")}


def run_worker(runtime: str, path: Path, runs: int, warmup: int, out: Path) -> dict:
    """Loads and times ``path`` with ``runtime``; saves the outputs to ``out`` (npz)."""
    feeds = None
    if runtime == "litert":
        from importlib.metadata import version

        from ai_edge_litert.interpreter import Interpreter

        t0 = time.perf_counter()
        interp = Interpreter(model_path=str(path), num_threads=THREADS)
        [key] = interp.get_signature_list()
        runner = interp.get_signature_runner(key)
        load_s = time.perf_counter() - t0
        feeds = stored_inputs(path)

        def infer(x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return {k: np.array(v, copy=True) for k, v in runner(**x).items()}

        info = {"version": version("ai-edge-litert")}
    elif runtime == "onnxruntime":
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
        name, shape = inp.name, inp.shape  # one input for every benchmarked model

        def infer(x: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            return model.predict(x if isinstance(x, dict) else {name: x})

        if path.suffix == ".tflite":
            feeds = stored_inputs(path)
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        info = {"version": modelloader.__version__, "numpy": np.__version__, "blas": blas}

    if feeds is not None:
        x = feeds
    else:
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
    if runtime == "modelloader" and path.suffix == ".onnx":
        info["gemm_floor_ms"] = gemm_floor_ms(path)  # after the RSS reading: it allocates
    return {
        "load_s": load_s,
        "median_ms": statistics.median(times) * 1e3,
        "peak_rss_mib": rss_kib / 1024,
        **info,
    }


def gemm_floor_ms(path: Path, runs: int = 5) -> float:
    """Sum over the model's Conv/Gemm/MatMul nodes of a bare ``np.matmul`` of the same
    (groups, M, K) @ (K, N) shape (median of ``runs``, operands cache-warm): the time NumPy's
    BLAS alone needs for the model's products, with no im2col, bias or activation passes."""
    import onnx

    g = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False)).graph
    dims = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*g.value_info, *g.input, *g.output]
    }
    dims.update({t.name: list(t.dims) for t in g.initializer})
    shapes = []
    for n in g.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        if n.op_type == "Conv":
            w, y = dims[n.input[1]], dims[n.output[0]]
            grp = attrs.get("group", 1)
            shapes.append((grp, w[0] // grp, int(np.prod(w[1:])), int(np.prod(y[2:]))))
        elif n.op_type in ("Gemm", "MatMul"):
            a, y = dims[n.input[0]], dims[n.output[0]]
            k = a[0] if attrs.get("transA", 0) else a[-1]
            shapes.append((1, int(np.prod(y[:-1])), k, y[-1]))
    total = 0.0
    rng = np.random.default_rng(0)
    for grp, m, k, n in shapes:
        a = rng.standard_normal((grp, m, k), np.float32)
        b = rng.standard_normal((grp, k, n), np.float32)
        out = np.empty((grp, m, n), np.float32)
        np.matmul(a, b, out=out)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            np.matmul(a, b, out=out)
            times.append(time.perf_counter() - t0)
        total += statistics.median(times)
    return total * 1e3


# ---------------------------------------------------------------------------------------------
# driver


def build_models(names: list[str]) -> None:
    missing = [n for n in names if not (MODELS_DIR / f"{n}.onnx").exists()]
    for n in [n for n in missing if n in OWN_MODELS]:
        print(f"building {n} into {MODELS_DIR} ...", file=sys.stderr)
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        out = MODELS_DIR / f"{n}.onnx"
        subprocess.run([sys.executable, str(OWN_MODELS[n]), str(out)], check=True)
        missing.remove(n)
    if not missing:
        return
    if not MAKE_MODELS.is_file():
        sys.exit(f"{MAKE_MODELS} not found: check out the shared repo beside this one")
    print(f"building {', '.join(missing)} into {MODELS_DIR} ...", file=sys.stderr)
    subprocess.run([sys.executable, str(MAKE_MODELS), str(MODELS_DIR), *missing], check=True)


def worker_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DROP_ENV}


def measure(runtime: str, model: str, runs: int, warmup: int, out: Path, path: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", runtime, str(path)]
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


def table(
    rows: list[dict],
    runs: int,
    warmup: int,
    blas: str,
    runtimes: list[str] = RUNTIMES,
    short: str = "ort",
    floor: bool = True,
    repeat: int = 1,
) -> str:
    """Markdown table of ``runtimes`` = [modelloader, reference], the reference called ``short``;
    ``floor`` adds the GEMM-floor column (``gemm_floor_ms``)."""
    s = short
    head = [
        f"Batch 1, {THREADS} threads, median of {runs} runs after {warmup} warm-up, the faster "
        f"of {repeat} processes per runtime taking turns; {cpu_name()}, {os.cpu_count()} CPUs.",
        f"NumPy BLAS: {blas}.",
        "",
        f"| model | load ml (s) | load {s} (s) | latency ml (ms) | latency {s} (ms) "
        f"| ml / {s} | peak RSS ml (MiB) | peak RSS {s} (MiB) | max diff / max {s} |"
        + (" GEMM floor (ms) |" if floor else ""),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if floor else ""),
    ]
    lines, errors = [], []
    for r in rows:
        ml, ort = r[runtimes[0]], r[runtimes[1]]
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
        if floor:
            cells.append(fmt(ml.get("gemm_floor_ms"), ".1f"))
        lines.append("| " + " | ".join(cells) + " |")
        errors += [
            f"- {r['model']} / {rt}: {r[rt]['error']}" for rt in runtimes if "error" in r[rt]
        ]
    if errors:
        lines += ["", "Failures:", *errors]
    return "\n".join(head + lines) + "\n"


def describe_blas(results: list[dict]) -> str:
    for r in results:
        if "modelloader" not in r:
            continue
        for b in r["modelloader"].get("blas", []):
            return (
                f"{b['internal_api']} {b['version']}, kernel/coretype {b.get('architecture')}, "
                f"{b['num_threads']} threads ({Path(b['filepath']).name})"
            )
    return "unknown (no modelloader run succeeded)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated names")
    ap.add_argument(
        "--tflite",
        default=",".join(DEFAULT_TFLITE),
        help="comma-separated fixtures of models/tflite ('' for none)",
    )
    ap.add_argument("--runs", type=int, default=30, help="timed runs per ONNX model and runtime")
    ap.add_argument(
        "--tflite-runs",
        type=int,
        default=200,
        help="timed runs per TFLite fixture (a few ms each: medians of 10 vary by 20 %%)",
    )
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="processes per runtime, taking turns; the fastest median of each is reported",
    )
    ap.add_argument("--worker", nargs=2, metavar=("RUNTIME", "MODEL"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.worker:
        runtime, path = args.worker
        print(json.dumps(run_worker(runtime, Path(path), args.runs, args.warmup, args.out)))
        return

    models = [m for m in args.models.split(",") if m]
    tfl_models = [m for m in args.tflite.split(",") if m]
    build_models(models)
    rows, tfl_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            rows.append(bench_row(model, MODELS_DIR / f"{model}.onnx", RUNTIMES, args, tmp))
        have_litert = importlib.util.find_spec("ai_edge_litert") is not None
        tfl_args = argparse.Namespace(**{**vars(args), "runs": args.tflite_runs})
        for model in tfl_models if have_litert else []:
            path = TFLITE_DIR / f"{model}.tflite"
            tfl_rows.append(bench_row(model, path, TFLITE_RUNTIMES, tfl_args, tmp))
    text = ""
    if rows:
        text += table(rows, args.runs, args.warmup, describe_blas(rows), repeat=args.repeat)
    if tfl_models:
        text += "\n" if text else ""
        if have_litert:
            text += "TFLite, modelloader vs ai-edge-litert (Interpreter, default resolver).\n"
            text += table(
                tfl_rows,
                args.tflite_runs,
                args.warmup,
                describe_blas(tfl_rows),
                TFLITE_RUNTIMES,
                "litert",
                floor=False,
                repeat=args.repeat,
            )
        else:
            text += (
                "TFLite rows skipped: ai-edge-litert is not installed (pip install '.[bench]').\n"
            )
    print(text)
    RESULTS.write_text(text)


def bench_row(
    model: str, path: Path, runtimes: list[str], args: argparse.Namespace, tmp: str
) -> dict:
    """Times ``path`` on each runtime in its own process; adds the outputs' max relative diff."""
    row: dict = {"model": model}
    outs = {rt: Path(tmp, f"{model}-{rt}.npz") for rt in runtimes}
    # the runtimes take turns ``repeat`` times and each keeps its fastest process: a burst of
    # load on the shared machine then has to hit every turn of one runtime to skew the ratio
    for _ in range(args.repeat):
        for rt in runtimes:
            got = measure(rt, model, args.runs, args.warmup, outs[rt], path)
            brief = {k: v for k, v in got.items() if k in ("load_s", "median_ms", "error")}
            print(f"{model:>18} {rt:<12} {brief}", file=sys.stderr)
            best = row.get(rt)
            if (
                best is None
                or "error" in best
                or ("error" not in got and got["median_ms"] < best["median_ms"])
            ):
                row[rt] = got
    if all("error" not in row[rt] for rt in runtimes):
        row["diff"] = max_rel_diff(outs[runtimes[0]], outs[runtimes[1]])
    return row


if __name__ == "__main__":
    main()
