"""ConvChain (kernels/cpu/chain.py, _llvm_chain.py): the compiled loops against float64
NumPy references and TFLite's integer arithmetic; the plan pass's rules; whole chains
against onnxruntime and against the same model planned without chains."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelloader
from modelloader.kernels.cpu import _llvm, chain, qlinear, registry
from modelloader.kernels.cpu import _llvm_chain as lc
from modelloader.kernels.cpu.conv import _conv_float

pytestmark = pytest.mark.skipif(not _llvm.available, reason="llvmlite is not installed")


@pytest.fixture(scope="module")
def run_chain():
    assert _llvm._compiled("chain")
    return _llvm._kernel("conv_chain")


def _conv64(x_hwc, w, b, group, k, s, pads):
    y = _conv_float(
        x_hwc.transpose(2, 0, 1)[None].astype(np.float64), w.astype(np.float64),
        b.astype(np.float64), auto_pad="NOTSET", dilations=[1, 1], group=group,
        kernel_shape=[k, k], pads=list(pads), strides=[s, s],
    )  # fmt: skip
    return y[0].transpose(1, 2, 0)


def _program(layer: dict, inputs: list[np.ndarray], out_size: int) -> lc.Program:
    """One layer over an arena holding ``inputs`` back to back, then the output (NaN)."""
    at, offsets = 0, []
    for a in inputs:
        offsets.append(at)
        at += a.size
    fields = {k: (lc.At(offsets[v[1]]) if isinstance(v, tuple) else v) for k, v in layer.items()}
    fields["dst"] = lc.At(at)
    prog = lc.Program([fields], at + out_size, 64)
    for off, a in zip(offsets, inputs):
        prog.arena[off : off + a.size] = a.ravel()
    prog.arena[at:] = np.nan
    prog.out = prog.arena[at:]  # type: ignore[attr-defined]
    return prog


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(("p", "c", "m"), [(1, 1, 8), (3, 5, 8), (4, 4, 16), (5, 3, 24),
                                           (9, 112, 1280), (37, 24, 40), (6, 336, 56)])  # fmt: skip
def test_pointwise(run_chain, p: int, c: int, m: int, residual: bool) -> None:
    rng = np.random.default_rng(p * 1000 + c + m)
    x = rng.standard_normal((p, c)).astype(np.float32)
    w = rng.standard_normal((m, c)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    z = rng.standard_normal((p, m)).astype(np.float32)
    layer = {"kind": lc.PW_RESIDUAL if residual else lc.PW, "src": ("v", 0), "b": b,
             "w": np.ascontiguousarray(w.T), "np": p, "c": c, "m": m, "lo": -1.0, "hi": 2.0}  # fmt: skip
    if residual:
        layer["z"] = ("v", 1)
    prog = _program(layer, [x, z], p * m)
    prog.run(run_chain)
    ref = x.astype(np.float64) @ w.T.astype(np.float64) + b + (z if residual else 0)
    np.testing.assert_allclose(prog.out.reshape(p, m), np.clip(ref, -1, 2), rtol=1e-5, atol=1e-5)


_DW_CASES = [
    (c, h, w, s, pads)
    for (c, h, w), s, pads in itertools.product(
        [(8, 5, 7), (16, 17, 19), (24, 1, 1), (40, 2, 30)],
        [1, 2],
        itertools.product([0, 1], repeat=4),
    )
    if h + pads[0] + pads[2] >= 3 and w + pads[1] + pads[3] >= 3
]


@pytest.mark.parametrize(("c", "h", "w", "s", "pads"), _DW_CASES)
def test_depthwise(run_chain, c: int, h: int, w: int, s: int, pads: tuple) -> None:
    oh, ow = (h + pads[0] + pads[2] - 3) // s + 1, (w + pads[1] + pads[3] - 3) // s + 1
    rng = np.random.default_rng(c + h + w + s)
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    wt = rng.standard_normal((c, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c).astype(np.float32)
    layer = {"kind": lc.DW_S1 if s == 1 else lc.DW_S2, "src": ("v", 0), "z": lc.ZEROS,
             "w": np.ascontiguousarray(wt.reshape(c, 9).T), "b": b, "c": c, "h": h, "wd": w,
             "oh": oh, "ow": ow, "pt": pads[0], "pl": pads[1], "lo": -1.0, "hi": 1.5}  # fmt: skip
    prog = _program(layer, [x], oh * ow * c)
    prog.run(run_chain)
    ref = np.clip(_conv64(x, wt, b, c, 3, s, pads), -1, 1.5)
    np.testing.assert_allclose(prog.out.reshape(oh, ow, c), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pads", [(0, 0, 0, 0), (1, 1, 1, 1), (0, 0, 1, 1), (2, 1, 0, 2)])
@pytest.mark.parametrize(("k", "s"), [(1, 2), (3, 1), (3, 2), (5, 2)])
@pytest.mark.parametrize(("c", "m"), [(3, 16), (1, 8), (5, 24)])
def test_general_conv(run_chain, c: int, m: int, k: int, s: int, pads: tuple) -> None:
    h, w = 9, 13
    oh, ow = (h + pads[0] + pads[2] - k) // s + 1, (w + pads[1] + pads[3] - k) // s + 1
    rng = np.random.default_rng(c * m + k + s)
    x = rng.standard_normal((h, w, c)).astype(np.float32)
    wt = rng.standard_normal((m, c, k, k)).astype(np.float32)
    b = rng.standard_normal(m).astype(np.float32)
    layer = {"kind": lc.CONV, "src": ("v", 0), "z": lc.ZEROS, "b": b,
             "w": np.ascontiguousarray(wt.transpose(2, 3, 1, 0)), "c": c, "h": h, "wd": w,
             "oh": oh, "ow": ow, "pt": pads[0], "pl": pads[1], "lo": -1.0, "hi": 1.5, "m": m,
             "kh": k, "kw": k, "s": s}  # fmt: skip
    prog = _program(layer, [x], oh * ow * m)
    prog.run(run_chain)
    ref = np.clip(_conv64(x, wt, b, 1, k, s, pads), -1, 1.5)
    np.testing.assert_allclose(prog.out.reshape(oh, ow, m), ref, rtol=1e-5, atol=1e-5)


def test_nan_and_inf_pass_the_clamp_as_numpy_does(run_chain) -> None:
    x = np.array([[np.nan, 1.0], [np.inf, 1.0], [-np.inf, 1.0], [0.5, 1.0]], np.float32)
    w = np.zeros((8, 2), np.float32)
    w[:, 0] = 1.0
    layer = {"kind": lc.PW, "src": ("v", 0), "w": np.ascontiguousarray(w.T),
             "b": np.zeros(8, np.float32), "np": 4, "c": 2, "m": 8, "lo": 0.0, "hi": 6.0}  # fmt: skip
    prog = _program(layer, [x], 32)
    prog.run(run_chain)
    got = prog.out.reshape(4, 8)[:, 0]
    assert np.isnan(got[0]) and got[1] == 6.0 and got[2] == 0.0 and got[3] == 0.5


def test_requant_is_tflites(run_chain) -> None:
    """REQUANT of exact accumulators equals qlinear's _TflRequant bit for bit, over
    channels with and without right shifts, with bias, zero points and a clamp."""
    rng = np.random.default_rng(3)
    m, p = 24, 7
    mult = np.concatenate([rng.uniform(1e-4, 0.9, m - 2), [1.5, 2.5]])  # two left shifts
    bias = rng.integers(-5000, 5000, m).astype(np.int64).reshape(1, m, 1, 1)
    req = qlinear._tfl_requant(mult, m, bias, -7)
    acc = rng.integers(-(1 << 17), 1 << 17, (1, m, 1, p)).astype(np.float32)
    want = req.apply(acc, -100, 90, np.dtype(np.int8))
    spec = chain._requant_spec(req, 0, m, p, {"act_min": -100, "act_max": 90, "y_zp": -7})
    spec["dst"] = lc.At(0)
    prog = lc.Program([spec], m * p, 8)
    prog.arena[:] = acc[0, :, 0, :].T.ravel()
    prog.run(run_chain)
    got = prog.arena.reshape(p, m).T + -7  # stored less the output zero point
    np.testing.assert_array_equal(got, want[0, :, 0, :])


def test_add_table_is_the_pair_table(run_chain) -> None:
    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, 40).astype(np.int8)
    b = rng.integers(-128, 128, 40).astype(np.int8)
    attrs = {"a_scale": 0.02, "a_zp": 3, "b_scale": 0.05, "b_zp": -9, "y_scale": 0.04,
             "y_zp": -4, "act_min": -120, "act_max": 127}  # fmt: skip
    want = qlinear.tflite_add(a, b, **attrs)
    table = qlinear._pair_table(
        qlinear._tflite_addsub, np.dtype(np.int8), (*qlinear._pair_params(attrs), 1)
    )
    layer = {"kind": lc.ADD_TABLE, "src": ("v", 0), "z": ("v", 1), "w": table, "np": 40,
             "c": 5, "m": -2, "pt": -4}  # fmt: skip
    prog = _program(layer, [a.astype(np.float32) - 5, b.astype(np.float32) + 2], 40)
    prog.run(run_chain)
    np.testing.assert_array_equal(prog.out + -4, want)


# --------------------------------------------------------------------------- whole chains

RNG = np.random.default_rng(11)


def _const(name: str, value) -> object:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _block_model(c: int = 8, e: int = 16, hw: int = 10, batch: int = 1, extra_out: str = "",
                 act: str = "Clip", stride: int = 1) -> bytes:  # fmt: skip
    """stem 3x3/s2 conv -> ReLU6, pointwise expand -> ReLU6, depthwise 3x3 -> ReLU6,
    pointwise project (+ the block input), then a head conv that reads the block output."""
    nodes, inits = [], []

    def conv(name, x, w, group=1, pads=(0, 0, 0, 0), strides=(1, 1), activation=True):
        m = w.shape[0]
        inits.extend([_const(f"{name}_w", w), _const(f"{name}_b", RNG.standard_normal(m))])
        out = f"{name}_y"
        nodes.append(helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [out], group=group,
                                      pads=list(pads), strides=list(strides)))  # fmt: skip
        if activation:
            if act == "Clip":
                nodes.append(helper.make_node("Clip", [out, "lo", "hi"], [f"{name}_a"]))
            else:
                nodes.append(helper.make_node(act, [out], [f"{name}_a"]))
            return f"{name}_a"
        return out

    inits += [_const("lo", np.float32(0)), _const("hi", np.float32(6))]
    x = conv(
        "stem", "x", RNG.standard_normal((c, 3, 3, 3)) * 0.3, pads=(0, 0, 1, 1), strides=(2, 2)
    )
    h = conv("exp", x, RNG.standard_normal((e, c, 1, 1)) * 0.3)
    h = conv("dw", h, RNG.standard_normal((e, 1, 3, 3)) * 0.3, group=e, pads=(1, 1, 1, 1),
             strides=(stride, stride))  # fmt: skip
    h = conv("proj", h, RNG.standard_normal((c, e, 1, 1)) * 0.3, activation=False)
    if stride == 1:
        nodes.append(helper.make_node("Add", [x, h], ["res"]))
        h = "res"
    y = conv("head", h, RNG.standard_normal((16, c, 1, 1)) * 0.3)
    outs = [y] + ([extra_out] if extra_out else [])
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, hw, hw])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outs],
        initializer=inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def _unchained(data: bytes) -> modelloader.Model:
    saved = list(registry._plan_passes)
    registry._plan_passes[:] = []
    try:
        return modelloader.load(data)
    finally:
        registry._plan_passes[:] = saved


def _chains(m: modelloader.Model) -> list:
    return [s.node for s in m._plan.steps if s.node.op == "ConvChain"]


def _check(data: bytes, batch: int = 1, hw: int = 10) -> modelloader.Model:
    m = modelloader.load(data)
    x = RNG.standard_normal((batch, 3, hw, hw)).astype(np.float32)
    got = m.predict(x)
    plain = _unchained(data).predict(x)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[k], plain[k], rtol=1e-5, atol=1e-6)
    return m


def _no_fallback(*args, **kwargs):
    raise AssertionError("the layer-by-layer fallback ran")


def test_block_runs_as_one_compiled_chain(monkeypatch) -> None:
    data = _block_model()
    m = modelloader.load(data)
    (node,) = _chains(m)
    ops = [layer["op"] for layer in node.attrs["layers"]]
    assert ops == ["FusedConv"] * 5  # stem, expand, depthwise, project (+ residual), head
    assert node.attrs["layers"][3]["inputs"][3] == ("v", 1)  # the residual: the stem's value
    monkeypatch.setattr(chain, "conv_chain", _no_fallback)
    _check(data)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("hw", [10, 15, 4])
def test_chain_matches_onnxruntime(stride: int, hw: int) -> None:
    _check(_block_model(hw=hw, stride=stride), hw=hw)


def test_value_read_outside_is_not_swallowed() -> None:
    # the stem's output is also a graph output: the chain starts after it, reading it
    m = _check(_block_model(extra_out="stem_a"))
    (node,) = _chains(m)
    assert node.inputs[0] == "stem_a" and len(node.attrs["layers"]) == 4
    # the expansion's output too: no chain may hold it but as its last value
    m = _check(_block_model(extra_out="exp_a"))
    assert "exp_a" in {o for s in m._plan.steps for o in s.outputs}


def test_other_activations_are_not_chained() -> None:
    m = _check(_block_model(act="Sigmoid"))
    for node in _chains(m):
        for layer in node.attrs["layers"]:
            assert layer["attrs"].get("activation", "") in ("", "Clip", "Relu")


@pytest.mark.parametrize(("c", "e"), [(6, 12), (8, 20)])  # channels not multiples of 8
def test_unfit_channels_fall_back(c: int, e: int) -> None:
    _check(_block_model(c=c, e=e))


def test_batch_of_two_falls_back() -> None:
    _check(_block_model(batch=2), batch=2)


def test_without_llvmlite_the_layers_run_one_by_one(monkeypatch) -> None:
    monkeypatch.setattr(_llvm, "available", False)
    m = _check(_block_model())
    assert _chains(m)


def test_threads_get_their_own_arenas() -> None:
    data = _block_model()
    m = modelloader.load(data)
    plain = _unchained(data)
    xs = [RNG.standard_normal((1, 3, 10, 10)).astype(np.float32) for _ in range(4)]
    want = [plain.predict(x)["head_a"] for x in xs]
    errors: list = []

    def work(i: int) -> None:
        for _ in range(50):
            got = m.predict(xs[i])["head_a"]
            if not np.allclose(got, want[i], rtol=1e-5, atol=1e-6):
                errors.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def test_allocation_never_overlaps_live_values() -> None:
    rng = np.random.default_rng(5)
    for _ in range(200):
        n = int(rng.integers(2, 12))
        shapes = [(int(rng.integers(1, 50)),) for _ in range(n)]
        writes = {0: -1, **{v: v - 1 for v in range(1, n)}}
        reads = {v: int(rng.integers(max(writes[v], 0), n)) for v in range(n - 1)}
        reads[n - 1] = n
        offsets, size = chain._allocate(shapes, writes, reads)
        for u, v in itertools.combinations(range(n), 2):
            overlap = (
                offsets[u] < offsets[v] + shapes[v][0] and offsets[v] < offsets[u] + shapes[u][0]
            )
            # v is written while u is still to be read: they must not share memory
            if overlap:
                assert reads[u] < writes[v], (shapes, writes, reads, offsets)
        assert size == max(o + s[0] for o, s in zip(offsets, shapes))


@pytest.mark.parametrize("name", ["mobilenet_v2_f32", "mobilenet_v2_int8"])
def test_mobilenet_chain_matches_its_unchained_plan(name: str) -> None:
    from pathlib import Path

    path = Path(__file__).parents[2] / "models" / "tflite" / f"{name}.tflite"
    m = modelloader.load(path)
    assert len(_chains(m)) == 1 and len(_chains(m)[0].attrs["layers"]) >= 50
    plain = _unchained(path.read_bytes())
    inp = m.inputs[0]
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, inp.shape) if inp.dtype == np.int8 else rng.random(inp.shape)
    x = x.astype(inp.dtype)
    got, want = m.predict(x), plain.predict(x)
    for k in want:
        if inp.dtype == np.int8:
            np.testing.assert_array_equal(got[k], want[k])  # the same integer arithmetic
        else:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6)
