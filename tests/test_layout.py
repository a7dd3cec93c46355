"""modelloader.layout: Transpose cancellation/sinking keeps results and graph boundaries."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

import modelloader
from modelloader.executor import Plan, RunState
from modelloader.ir import Graph, Node, Value
from modelloader.kernels.cpu import registry
from modelloader.layout import fuse_integer_clip, optimize_layout

DIR = Path(__file__).resolve().parents[1] / "models" / "tflite"
MANIFEST = DIR / "manifest.json"
ENTRIES = (
    [(k, v) for k, v in json.loads(MANIFEST.read_text()).items() if not k.startswith("_")]
    if MANIFEST.exists()
    else []
)


def _run(g: Graph, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """One run from fresh state (stateful fixtures: their first call)."""
    return Plan(g, registry).run(feeds, state=RunState())


def _transposes(g: Graph) -> int:
    return sum(n.op == "Transpose" for n in g.nodes)


@pytest.mark.skipif(not ENTRIES, reason="no TFLite fixtures")
@pytest.mark.parametrize("name,entry", ENTRIES, ids=[k for k, _ in ENTRIES])
def test_fixture_unchanged(name: str, entry: dict) -> None:
    raw = modelloader.load(DIR / entry["file"], optimize=False)
    g = raw.graph
    before = [v.name for v in g.inputs], [v.name for v in g.outputs]
    arrays = np.load(DIR / entry["expected"])
    sfx = "#0" if int(entry.get("invocations", 1)) > 1 else ""
    feeds = {v.name: arrays[f"input:{e['name']}{sfx}"] for v, e in zip(g.inputs, entry["inputs"])}
    want = _run(copy.deepcopy(g), feeds)
    n0 = _transposes(g)
    optimize_layout(g)
    fuse_integer_clip(g)
    assert ([v.name for v in g.inputs], [v.name for v in g.outputs]) == before
    assert _transposes(g) <= n0
    got = _run(g, feeds)
    for w, o, v in zip(want, got, g.outputs):
        assert o.dtype == w.dtype and o.shape == w.shape, v.name
        if o.dtype.kind == "f":
            # reductions may sum in another memory order
            np.testing.assert_allclose(o, w, rtol=1e-5, atol=1e-6, err_msg=v.name)
        else:
            np.testing.assert_array_equal(o, w, err_msg=v.name)


@pytest.mark.skipif(not ENTRIES, reason="no TFLite fixtures")
@pytest.mark.parametrize("name", ["mobilenet_v2_f32", "mobilenet_v2_int8"])
def test_mobilenet_runs_nchw(name: str) -> None:
    m = modelloader.load(DIR / f"{name}.tflite")
    # the input's NHWC->NCHW transpose is the only one left
    assert [s.node.op for s in m._plan.steps].count("Transpose") == 1
    assert not any(s.node.op == "Clip" for s in m._plan.steps)


@pytest.mark.skipif(not ENTRIES, reason="no TFLite fixtures")
def test_mobilenet_residual_adds_fuse_into_convs() -> None:
    # the file declares every tensor's shape; the NCHW twins the layout pass makes inherit
    # them, so each block's residual Add is proven same-shape and joins its project conv
    m = modelloader.load(DIR / "mobilenet_v2_f32.tflite")
    ops = [n.op for n in m.graph.nodes]
    assert "Add" not in ops
    assert sum(len(n.inputs) == 4 for n in m.graph.nodes if n.op == "FusedConv") == 10


# --------------------------------------------------------------------------- synthetic graphs

NHWC2NCHW, NCHW2NHWC = [0, 3, 1, 2], [0, 2, 3, 1]


def _graph(nodes: list[Node], outputs: list[str], consts: dict | None = None) -> Graph:
    return Graph(
        inputs=[Value("x", np.dtype(np.float32), (2, 4, 5, 3)), Value("y", np.dtype(np.float32))],
        outputs=[Value(o) for o in outputs],
        nodes=nodes,
        constants=dict(consts or {}),
    )


def _check(g: Graph, max_transposes: int) -> Graph:
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((2, 4, 5, 3)).astype(np.float32),
        "y": rng.standard_normal((2, 4, 5, 3)).astype(np.float32),
    }
    want = _run(copy.deepcopy(g), feeds)
    outs = [v.name for v in g.outputs]
    optimize_layout(g)
    assert [v.name for v in g.outputs] == outs
    assert _transposes(g) <= max_transposes, [n.op for n in g.nodes]
    got = _run(g, feeds)
    for w, o in zip(want, got):
        assert o.shape == w.shape and o.dtype == w.dtype
        np.testing.assert_allclose(o, w, rtol=1e-6, atol=1e-6)
    return g


def T(src: str, dst: str, perm: list[int]) -> Node:
    return Node("Transpose", [src], [dst], {"perm": perm})


def test_cancel_pair_and_unary_chain() -> None:
    g = _graph(
        [
            T("x", "a", NHWC2NCHW),
            Node("Relu", ["a"], ["b"]),
            Node("Clip", ["b", "lo", "hi"], ["c"]),
            Node("Sigmoid", ["c"], ["d"]),
            T("d", "e", NCHW2NHWC),
        ],
        ["e"],
        {"lo": np.float32(0.1), "hi": np.float32(0.6)},
    )
    g = _check(g, 0)
    assert [n.op for n in g.nodes] == ["Relu", "Clip", "Sigmoid"]


def test_graph_output_transpose_kept() -> None:
    # "a" is a graph output: its transpose must stay, the later pair still cancels
    g = _graph(
        [T("x", "a", NHWC2NCHW), Node("Neg", ["a"], ["b"]), T("b", "c", NCHW2NHWC)], ["a", "c"]
    )
    _check(g, 1)


def test_binary_with_constant_and_same_perm() -> None:
    g = _graph(
        [
            T("x", "a", NHWC2NCHW),
            T("y", "b", NHWC2NCHW),
            Node("Add", ["a", "b"], ["c"]),
            Node("Mul", ["c", "k"], ["d"]),  # per-channel constant in NCHW
            Node("Sub", ["d", "s"], ["e"]),  # scalar
            Node("Div", ["e", "r"], ["f"]),  # rank-2 constant broadcast over (H, W)
            T("f", "out", NCHW2NHWC),
        ],
        ["out"],
        {
            "k": np.arange(3, dtype=np.float32).reshape(3, 1, 1) + 1,
            "s": np.float32(0.5),
            "r": np.arange(20, dtype=np.float32).reshape(4, 5) + 1,
        },
    )
    _check(g, 0)


def test_mismatched_operand_blocks_sinking() -> None:
    g = _graph(
        [T("x", "a", NHWC2NCHW), Node("Add", ["a", "a"], ["b"]), T("b", "o", NCHW2NHWC)], ["o"]
    )
    _check(g, 0)
    # y is not transposed: Add(T(x), y') must keep the transpose
    g = Graph(
        inputs=[
            Value("x", np.dtype(np.float32), (2, 4, 5, 3)),
            Value("y", np.dtype(np.float32), (2, 3, 4, 5)),
        ],
        outputs=[Value("o")],
        nodes=[T("x", "a", NHWC2NCHW), Node("Add", ["a", "y"], ["o"])],
    )
    optimize_layout(g)
    assert [n.op for n in g.nodes] == ["Transpose", "Add"]


@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [[1, 2], [2, 3], [1], [-1], [0, 2]])
def test_reduce_axes(axes: list[int], keepdims: int) -> None:
    g = _graph(
        [
            T("x", "a", NHWC2NCHW),
            Node("ReduceMean", ["a", "ax"], ["b"], {"keepdims": keepdims}),
            Node("Relu", ["b"], ["c"]),
        ],
        ["c"],
        {"ax": np.asarray(axes, np.int64)},
    )
    _check(g, 1)


def test_concat_softmax_pad() -> None:
    g = _graph(
        [
            T("x", "a", NHWC2NCHW),
            T("y", "b", NHWC2NCHW),
            Node("Concat", ["a", "b"], ["c"], {"axis": 1}),
            Node("Softmax", ["c"], ["d"], {"axis": 1}),
            Node("Pad", ["d", "p"], ["e"], {"mode": "constant"}),
            T("e", "f", NCHW2NHWC),
            Node("LogSoftmax", ["f"], ["out"]),
        ],
        ["out"],
        {"p": np.asarray([0, 1, 0, 2, 0, 0, 3, 1], np.int64)},
    )
    g = _check(g, 0)
    assert "Transpose" not in [n.op for n in g.nodes]


def test_transposed_constant_folds() -> None:
    g = _graph(
        [T("w", "wt", [1, 0]), Node("MatMul", ["m", "wt"], ["o"])],
        ["o"],
        {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "m": np.ones((4, 3), np.float32)},
    )
    optimize_layout(g)
    assert [n.op for n in g.nodes] == ["MatMul"]
    assert g.constants["wt"].shape == (3, 2)


def test_integer_clip_folds_into_act_range() -> None:
    g = Graph(
        inputs=[Value("x", np.dtype(np.int8), (1, 4))],
        outputs=[Value("o")],
        nodes=[
            Node(
                "TFLiteAdd",
                ["x", "x"],
                ["a"],
                {"a_scale": 0.1, "b_scale": 0.1, "y_scale": 0.1, "act_min": -100},
                "modelloader",
            ),
            Node("Clip", ["a", "lo", "hi"], ["o"]),
        ],
        constants={"lo": np.int8(-5), "hi": np.int8(20)},
    )
    x = {"x": np.asarray([[-60, -1, 3, 100]], np.int8)}
    want = _run(copy.deepcopy(g), x)
    fuse_integer_clip(g)
    assert [n.op for n in g.nodes] == ["TFLiteAdd"]
    assert g.nodes[0].attrs["act_min"] == -5 and g.nodes[0].attrs["act_max"] == 20
    np.testing.assert_array_equal(_run(g, x)[0], want[0])
