"""int8 vs float32 latency and model size for ResNet-18/50-shaped models (random weights).

``bench_quant()`` builds each model with onnx.helper, quantizes it with ``modelloader.quantize``
(static, per-channel, calibrated on a few random images) and times modelloader (float32 and
int8 QDQ -> integer ops) and, when installed, onnxruntime on the same files. Returns one dict
per model; ``python bench/bench_quant.py [resnet18,resnet50] [--runs N] [--generic]`` prints a
Markdown table (``--generic`` also times int8 with the generic integer kernels, i.e. without
the dtype-specialised fast kernels of ``kernels/cpu/qconv_fast.py``).

Latencies are the minimum over ``runs`` runs, float32 and int8 taking turns run by run (the
machine is shared: a burst of load then slows both alike). Run directly, the
script drops OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE for itself (they slow numpy's BLAS here):
it re-executes itself without them before numpy loads; importing it changes nothing.
"""

from __future__ import annotations

import os
import sys

_BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
if __name__ == "__main__" and any(v in os.environ for v in _BLAS_OVERRIDES):
    _env = {k: v for k, v in os.environ.items() if k not in _BLAS_OVERRIDES}
    os.execve(sys.executable, [sys.executable, *sys.argv], _env)

import contextlib  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import modelloader  # noqa: E402
from modelloader.kernels.cpu._registry import registry  # noqa: E402
from modelloader.quantize import QuantConfig, quantize  # noqa: E402

LAYERS = {"resnet18": ("basic", [2, 2, 2, 2]), "resnet50": ("bottleneck", [3, 4, 6, 3])}


def build_resnet(name: str, size: int = 224, seed: int = 0) -> onnx.ModelProto:
    """A ResNet-18/50-shaped ONNX model (Conv+BN folded into Conv bias, Relu, residual Add)."""
    kind, blocks = LAYERS[name]
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    k = [0]

    def conv(x: str, cin: int, cout: int, ks: int, stride: int, relu: bool) -> str:
        k[0] += 1
        w = (rng.standard_normal((cout, cin, ks, ks)) * np.sqrt(2 / (cin * ks * ks))).astype(
            np.float32
        )
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        wn, bn, y = f"w{k[0]}", f"b{k[0]}", f"c{k[0]}"
        inits.extend([numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)])
        p = ks // 2
        nodes.append(
            helper.make_node(
                "Conv", [x, wn, bn], [y], kernel_shape=[ks, ks], strides=[stride] * 2, pads=[p] * 4
            )
        )
        if relu:
            nodes.append(helper.make_node("Relu", [y], [y + "r"]))
            return y + "r"
        return y

    x = conv("input", 3, 64, 7, 2, True)
    nodes.append(
        helper.make_node("MaxPool", [x], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    )
    x, cin = "mp", 64
    exp = 1 if kind == "basic" else 4
    for stage, n in enumerate(blocks):
        width = 64 * 2**stage
        for i in range(n):
            stride = 2 if i == 0 and stage > 0 else 1
            if kind == "basic":
                y = conv(conv(x, cin, width, 3, stride, True), width, width, 3, 1, False)
            else:
                y = conv(x, cin, width, 1, 1, True)
                y = conv(y, width, width, 3, stride, True)
                y = conv(y, width, width * exp, 1, 1, False)
            sc = (
                x
                if stride == 1 and cin == width * exp
                else conv(x, cin, width * exp, 1, stride, False)
            )
            k[0] += 1
            nodes.append(helper.make_node("Add", [y, sc], [f"a{k[0]}"]))
            nodes.append(helper.make_node("Relu", [f"a{k[0]}"], [f"r{k[0]}"]))
            x, cin = f"r{k[0]}", width * exp
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    fw = (rng.standard_normal((1000, cin)) * 0.01).astype(np.float32)
    inits += [
        numpy_helper.from_array(fw, "fcw"),
        numpy_helper.from_array(np.zeros(1000, np.float32), "fcb"),
    ]
    nodes.append(helper.make_node("Gemm", ["flat", "fcw", "fcb"], ["logits"], transB=1))
    g = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _time(*fns, runs: int) -> list[float]:
    """Each fn's minimum over ``runs`` runs in ms, the fns taking turns run by run, so a burst
    of load on the shared machine hits all of them alike."""
    for fn in fns:
        fn()
    ts: list[list[float]] = [[] for _ in fns]
    for _ in range(runs):
        for fn, t in zip(fns, ts):
            t0 = time.perf_counter()
            fn()
            t.append(time.perf_counter() - t0)
    return [float(np.min(t)) * 1e3 for t in ts]


@contextlib.contextmanager
def generic_int_kernels():
    """Within the block, models loaded use the generic integer kernels (the dtype-specialised
    ones from kernels/cpu/qconv_fast.py are hidden from the registry)."""
    saved = dict(registry._specs)
    try:
        for key, specs in saved.items():
            keep = [sp for sp in specs if not sp.fn.__module__.endswith("qconv_fast")]
            if len(keep) != len(specs):
                registry._specs[key] = keep
        yield
    finally:
        registry._specs.clear()
        registry._specs.update(saved)


def bench_quant(
    names: list[str] | None = None, runs: int = 10, size: int = 224, generic: bool = False
) -> list[dict]:
    """Per model: float32/int8 latency (ms, min of ``runs``) in modelloader and onnxruntime,
    their int8/float32 ratios, and file sizes; ``generic`` adds int8 on the generic kernels."""
    rows = []
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        for name in names or list(LAYERS):
            fp = Path(tmp) / f"{name}.onnx"
            onnx.save(build_resnet(name, size), str(fp))
            calib = [
                {"input": rng.standard_normal((1, 3, size, size)).astype(np.float32)}
                for _ in range(4)
            ]
            q = quantize(fp, QuantConfig(eval_split=0.0, layer_report_samples=1), calib)
            qp = Path(tmp) / f"{name}.int8.onnx"
            q.save(qp)
            x = calib[0]
            fm = modelloader.load(fp)
            qm = modelloader.load(qp)
            fp32_ms, int8_ms = _time(partial(fm.predict, x), partial(qm.predict, x), runs=runs)
            row = {
                "model": name,
                "size_fp32_mb": fp.stat().st_size / 1e6,
                "size_int8_mb": qp.stat().st_size / 1e6,
                "ml_fp32_ms": fp32_ms,
                "ml_int8_ms": int8_ms,
            }
            row["ml_int8/fp32"] = row["ml_int8_ms"] / row["ml_fp32_ms"]
            if generic:
                with generic_int_kernels():
                    gm = modelloader.load(qp)
                    [row["ml_int8_generic_ms"]] = _time(partial(gm.predict, x), runs=runs)
                row["ml_int8_generic/fp32"] = row["ml_int8_generic_ms"] / row["ml_fp32_ms"]
            try:
                import onnxruntime as ort

                sessions = [
                    ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
                    for p in (fp, qp)
                ]
                ort_ms = _time(*(partial(s.run, None, x) for s in sessions), runs=runs)
                row["ort_fp32_ms"], row["ort_int8_ms"] = ort_ms
                row["ort_int8/fp32"] = row["ort_int8_ms"] / row["ort_fp32_ms"]
            except ImportError:
                pass
            rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        out.append(
            "| "
            + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in r.values())
            + " |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="?", default=None, help="comma-separated: resnet18,resnet50")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--generic", action="store_true", help="also time the generic int kernels")
    args = ap.parse_args()
    names = args.models.split(",") if args.models else None
    print(table(bench_quant(names, runs=args.runs, generic=args.generic)))
