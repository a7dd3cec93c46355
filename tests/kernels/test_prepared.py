"""Kernel preparers (``kernels.registry``): a prepared node computes exactly what its generic
kernel computes, for every shape it is called with, and the executor falls back to the
generic kernel where a preparer declines or fails."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelloader.executor import Plan, RunState
from modelloader.ir import Graph, Node, Value
from modelloader.kernels.cpu import conv as conv_mod
from modelloader.kernels.cpu import qlinear, registry
from modelloader.kernels.registry import Registry

RNG = np.random.default_rng(11)

# (C, M, group, kernel, strides, pads, H)
GEOMETRIES = [
    (8, 12, 1, 1, 1, 0, 6),  # pointwise: one matmul
    (8, 12, 1, 1, 2, 0, 7),  # strided 1x1: generic
    (6, 6, 6, 3, 1, 1, 9),  # depthwise, same size
    (6, 12, 6, 3, 2, 1, 10),  # depthwise, multiplier 2, strided
    (5, 5, 5, 5, 1, 0, 8),  # depthwise, no padding
    (4, 6, 2, 3, 1, 1, 7),  # grouped: generic
    (3, 7, 1, 3, 2, 1, 12),  # full 3x3: generic
]
ACTIVATIONS = [("", ()), ("Relu", ()), ("Clip", (0.0, 6.0)), ("LeakyRelu", (0.1,))]


def _equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)


def _conv_case(geometry, dtype=np.float32, bias=True):
    c, m, group, k, s, p, h = geometry
    w = RNG.standard_normal((m, c // group, k, k)).astype(dtype)
    b = RNG.standard_normal(m).astype(dtype) if bias else None
    attrs = dict(group=group, strides=[s, s], pads=[p] * 4, kernel_shape=[k, k])
    return w, b, attrs


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a[0] or "none")
@pytest.mark.parametrize("residual", [False, True])
def test_fused_conv_matches_generic(geometry, activation, residual, path: str) -> None:
    w, b, attrs = _conv_case(geometry)
    attrs.update(activation=activation[0], activation_params=list(activation[1]))
    prepared = conv_mod._prepare_fused_conv((None, w, b, None), **attrs)
    if activation[0] == "LeakyRelu":
        assert prepared is None  # not a clamp: the generic kernel runs
        return
    c, h = geometry[0], geometry[-1]
    for batch, size in ((1, h), (1, h + 3), (2, h)):  # a shape seen again, a new one, batch 2
        x = RNG.standard_normal((batch, c, size, size)).astype(np.float32)
        x[0, 0, 0, :2] = (np.nan, np.inf)
        want_shape = conv_mod.conv(x, w, b, **{k: v for k, v in attrs.items() if "activ" not in k})
        z = RNG.standard_normal(want_shape.shape).astype(np.float32) if residual else None
        want = conv_mod.fused_conv(x, w, b, z, **attrs)
        for _ in range(2):
            _equal(prepared(x, w, b, z), want)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_matches_generic(geometry, bias, path: str) -> None:
    w, b, attrs = _conv_case(geometry, bias=bias)
    prepared = conv_mod._prepare_conv((None, w, b), **attrs)
    assert prepared is not None
    c, h = geometry[0], geometry[-1]
    x = RNG.standard_normal((1, c, h, h)).astype(np.float32)
    args = (x, w) if b is None else (x, w, b)
    _equal(prepared(*args), conv_mod.conv(*args, **attrs))
    # a non-contiguous input, float64 weights and a float16 input (computed in float32)
    xt = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    _equal(prepared(xt, *args[1:]), conv_mod.conv(xt, *args[1:], **attrs))
    x16 = x.astype(np.float16)
    _equal(prepared(x16, *args[1:]), conv_mod.conv(x16, *args[1:], **attrs))
    w64, b64, _ = _conv_case(geometry, np.float64, bias)
    p64 = conv_mod._prepare_conv((None, w64, b64), **attrs)
    a64 = (x.astype(np.float64), w64) + (() if b64 is None else (b64,))
    _equal(p64(*a64), conv_mod.conv(*a64, **attrs))


def test_prepared_conv_runs_its_recipes(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Pointwise and (compiled) depthwise convs never reach the generic kernel; anything
    else, or weights other than the node's constants, does."""
    calls = []

    def generic(*args, **kw):
        calls.append(args[0].shape)
        return conv_mod.fused_conv(*args, **kw)

    for geometry, fast in ((GEOMETRIES[0], True), (GEOMETRIES[2], path == "jit")):
        w, b, attrs = _conv_case(geometry)
        prepared = conv_mod.prepared_float_conv(generic, (None, w, b), attrs)
        x = RNG.standard_normal((1, geometry[0], 6, 6)).astype(np.float32)
        want = conv_mod.fused_conv(x, w, b, **attrs)
        calls.clear()
        _equal(prepared(x, w, b), want)
        assert (calls == []) is fast
        calls.clear()
        _equal(prepared(x, w.copy(), b), want)  # not the constant: generic
        assert calls == [x.shape]


def test_prepared_conv_reports_bad_shapes_as_the_generic_kernel() -> None:
    w, b, attrs = _conv_case(GEOMETRIES[0])
    prepared = conv_mod._prepare_conv((None, w, b), **attrs)
    x = RNG.standard_normal((1, 5, 6, 6)).astype(np.float32)  # 5 channels, weights want 8
    with pytest.raises(ValueError) as generic:
        conv_mod.conv(x, w, b, **attrs)
    with pytest.raises(ValueError) as got:
        prepared(x, w, b)
    assert str(got.value) == str(generic.value)


@pytest.mark.parametrize("depthwise", [False, True])
def test_prepared_tflite_conv_runs_its_recipes(
    depthwise: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = 6
    m, group = (c, c) if depthwise else (5, 1)
    k = 3 if depthwise else 1
    w = RNG.integers(-127, 128, (m, c // group, k, k), dtype=np.int8)
    bias = RNG.integers(-1000, 1000, m).astype(np.int32)
    attrs = dict(
        x_scale=0.02, w_scale=[0.01] * m, y_scale=0.05, x_zp=3, y_zp=-4, group=group,
        pads=[1, 1, 1, 1] if depthwise else [0, 0, 0, 0], act_min=-128, act_max=127,
    )  # fmt: skip
    prepared = qlinear._prepare_tflite_conv((None, w, bias), **attrs)
    x = RNG.integers(-128, 128, (1, c, 7, 7), dtype=np.int8)
    want = qlinear.tflite_conv(x, w, bias, **attrs)
    monkeypatch.setattr(qlinear, "tflite_conv", None)  # the recipe must not need it
    np.testing.assert_array_equal(prepared(x, w, bias), want)


def _graph(w: np.ndarray) -> Graph:
    return Graph(
        inputs=[Value("x", np.dtype(np.float32), (1, 2, 3, 3))],
        outputs=[Value("y")],
        nodes=[Node("Conv", ["x", "w"], ["y"], {"kernel_shape": [1, 1]})],
        constants={"w": w},
    )


def test_executor_uses_a_preparer_and_falls_back_when_it_declines_or_fails() -> None:
    w = RNG.standard_normal((4, 2, 1, 1)).astype(np.float32)
    x = RNG.standard_normal((1, 2, 3, 3)).astype(np.float32)
    want = conv_mod.conv(x, w, kernel_shape=[1, 1])
    seen = []

    def run_with(prep) -> np.ndarray:
        reg = Registry("test")
        reg.register("Conv")(conv_mod.conv)
        reg.register_preparer("Conv")(prep)
        plan = Plan(_graph(w), reg)
        (got,) = plan.run({"x": x}, state=RunState())
        return got, plan.steps[0].fn

    def prep(consts, **attrs):
        seen.append((consts, attrs))
        return lambda x, w: conv_mod.conv(x, w, **attrs) + 1

    got, fn = run_with(prep)
    assert seen[0][0][1] is w and seen[0][0][0] is None and seen[0][1] == {"kernel_shape": [1, 1]}
    _equal(got, want + 1)  # the prepared kernel ran
    for declining in (lambda consts, **a: None, lambda consts, **a: 1 / 0):
        got, fn = run_with(declining)
        assert fn is conv_mod.conv
        _equal(got, want)


def test_registry_refuses_a_second_preparer() -> None:
    reg = Registry("test")
    reg.register_preparer("Conv")(lambda consts, **a: None)
    with pytest.raises(ValueError, match="already has a preparer"):
        reg.register_preparer("Conv")(lambda consts, **a: None)
    assert registry.preparer("Conv") is conv_mod._prepare_conv
    assert registry.preparer("TFLiteConv", "modelloader") is qlinear._prepare_tflite_conv


@pytest.mark.parametrize("op", ["TFLiteAdd", "TFLiteSub", "TFLiteMul"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16])
def test_prepared_tflite_pairwise_matches_generic(op: str, dtype, path: str) -> None:
    attrs = dict(a_scale=0.05, b_scale=0.08, y_scale=0.11, a_zp=3, b_zp=-2, y_zp=4)
    if dtype == np.int16:
        attrs.update(a_zp=0, b_zp=0, y_zp=0)  # int16 is symmetric
    attrs.update(act_min=-100 if dtype != np.uint8 else 10, act_max=100)
    prepared = registry.preparer(op, "modelloader")((None, None), **attrs)
    generic = registry.lookup(op, "modelloader")
    info = np.iinfo(dtype)
    for shape_a, shape_b in (
        ((1, 8, 12, 12),) * 2,
        ((2, 3, 4),) * 2,
        ((1, 8, 12, 12), (1, 8, 1, 1)),
    ):
        a = RNG.integers(info.min, info.max, shape_a, endpoint=True).astype(dtype)
        b = RNG.integers(info.min, info.max, shape_b, endpoint=True).astype(dtype)
        for _ in range(2):
            _equal(prepared(a, b), generic(a, b, **attrs))


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16])
@pytest.mark.parametrize("keep", [0, 1])
def test_prepared_tflite_fully_connected_matches_generic(dtype, keep: int, path: str) -> None:
    n, k = 7, 40
    w = RNG.integers(-127, 128, (n, k), dtype=np.int8)
    bias = RNG.integers(-3000, 3000, n).astype(np.int64 if dtype == np.int16 else np.int32)
    attrs = dict(
        x_scale=0.03, w_scale=list(RNG.uniform(0.005, 0.02, n)), y_scale=0.09,
        x_zp=0 if dtype == np.int16 else 5, y_zp=0 if dtype == np.int16 else -6,
        act_min=None, act_max=None, keep_num_dims=keep,
    )  # fmt: skip
    if dtype == np.uint8:
        w = w.view(np.uint8)
        attrs.update(w_zp=128, w_scale=0.01, x_zp=130, y_zp=120)
    prepared = qlinear._prepare_tflite_fully_connected((None, w, bias), **attrs)
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max, (2, 3, k), endpoint=True).astype(dtype)
    want = qlinear.tflite_fully_connected(x, w, bias, **attrs)
    assert want.shape == ((2, 3, n) if keep else (6, n))
    for _ in range(2):
        _equal(prepared(x, w, bias), want)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("axes", [[2, 3], [-1], [1]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_prepared_qlinear_reduce_mean_matches_generic(dtype, axes, keepdims) -> None:
    info = np.iinfo(dtype)
    consts = (
        None,
        np.float32(0.0031),
        np.asarray(3, dtype),
        np.float32(0.0029),
        np.asarray(-7 if dtype == np.int8 else 9, dtype),
    )
    attrs = dict(axes=axes, keepdims=keepdims)
    prepared = qlinear._prepare_qlinear_reduce_mean(consts, **attrs)
    for shape in ((1, 70, 3, 3), (2, 5, 4, 6)):
        x = RNG.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        x[0, 0] = info.max  # saturating means
        want = qlinear.qlinear_reduce_mean(x, *consts[1:], **attrs)
        for _ in range(2):
            _equal(prepared(x, *consts[1:]), want)


@pytest.mark.parametrize("group, shuffle", [(4, 4), (2, 4), (1, 3)])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("loaded", [True, False])
def test_prepared_shuffle_conv_matches_generic(
    group, shuffle, residual, loaded, monkeypatch
) -> None:
    """Channel-shuffled pointwise convs: the prepared recipe when the conv's matmul can write
    the shuffled order and numba is loaded, the generic kernel otherwise; same results."""
    from modelloader.kernels.cpu import _jit

    _jit.load()
    if not loaded:
        monkeypatch.setattr(_jit, "loaded", lambda: False)
    c, m = 8, 12
    w = RNG.standard_normal((m, c // group, 1, 1)).astype(np.float32)
    b = RNG.standard_normal(m).astype(np.float32)
    attrs = dict(group=group, shuffle=shuffle, activation="Relu", kernel_shape=[1, 1])
    prepared = conv_mod._prepare_fused_conv((None, w, b, None), **attrs)
    x = RNG.standard_normal((2, c, 5, 5)).astype(np.float32)
    z = RNG.standard_normal((2, m, 5, 5)).astype(np.float32) if residual else None
    want = conv_mod.fused_conv(x, w, b, z, **attrs)
    for _ in range(2):
        _equal(prepared(x, w, b, z), want)


@st.composite
def conv_cases(draw: st.DrawFn) -> dict:
    c = draw(st.integers(1, 6))
    group = draw(st.sampled_from([g for g in (1, 2, 3, c) if c % g == 0]))
    m = group * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    return dict(
        n=draw(st.integers(1, 2)),
        c=c,
        m=m,
        group=group,
        k=k,
        s=[draw(st.integers(1, 3)), draw(st.integers(1, 3))],
        d=[draw(st.integers(1, 2)), draw(st.integers(1, 2))],
        auto_pad=draw(st.sampled_from(["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])),
        pads=[draw(st.integers(0, 2)) for _ in range(4)],
        hw=(draw(st.integers(8, 13)), draw(st.integers(8, 13))),
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        activation=draw(st.sampled_from([("", ()), ("Relu", ()), ("Clip", (-0.5, 0.75))])),
        bias=draw(st.booleans()),
        residual=draw(st.booleans()),
        transposed=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=120, deadline=None)
@given(conv_cases())
def test_prepared_fused_conv_matches_generic_on_random_geometry(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    dt, c, m, group = case["dtype"], case["c"], case["m"], case["group"]
    w = rng.standard_normal((m, c // group, *case["k"])).astype(dt)
    b = rng.standard_normal(m).astype(dt) if case["bias"] else None
    attrs = dict(
        group=group, strides=case["s"], dilations=case["d"], auto_pad=case["auto_pad"],
        activation=case["activation"][0], activation_params=list(case["activation"][1]),
    )  # fmt: skip
    if case["auto_pad"] == "NOTSET":
        attrs["pads"] = case["pads"]
    x = rng.standard_normal((case["n"], c, *case["hw"])).astype(dt)
    if case["transposed"]:  # a non-contiguous input
        x = np.ascontiguousarray(x.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    plain = conv_mod.conv(x, w, **{k: v for k, v in attrs.items() if "activ" not in k})
    z = rng.standard_normal(plain.shape).astype(dt) if case["residual"] else None
    prepared = conv_mod._prepare_fused_conv((None, w, b, None), **attrs)
    want = conv_mod.fused_conv(x, w, b, z, **attrs)
    _equal(prepared(x, w, b, z), want)


@settings(max_examples=80, deadline=None)
@given(conv_cases(), st.sampled_from([np.int8, np.uint8]))
def test_prepared_tflite_conv_matches_generic_on_random_geometry(case: dict, dtype) -> None:
    rng = np.random.default_rng(case["seed"])
    c, m, group = case["c"], case["m"], case["group"]
    info = np.iinfo(dtype)
    w = rng.integers(-127, 128, (m, c // group, *case["k"]), dtype=np.int8)
    bias = rng.integers(-5000, 5000, m).astype(np.int32) if case["bias"] else None
    attrs = dict(
        x_scale=0.02, w_scale=list(rng.uniform(0.002, 0.02, m)), y_scale=0.05,
        x_zp=int(rng.integers(-10, 10)) + (128 if dtype == np.uint8 else 0),
        y_zp=int(rng.integers(-10, 10)) + (128 if dtype == np.uint8 else 0),
        strides=case["s"], dilations=case["d"], pads=case["pads"], group=group,
        act_min=int(info.min) + 3, act_max=int(info.max) - 2,
    )  # fmt: skip
    if dtype == np.uint8:
        w = (w.astype(np.int16) + 128).astype(np.uint8)
        attrs.update(w_scale=0.01, w_zp=128)
    x = rng.integers(info.min, info.max, (case["n"], c, *case["hw"]), endpoint=True).astype(dtype)
    prepared = qlinear._prepare_tflite_conv((None, w, bias), **attrs)
    _equal(prepared(x, w, bias), qlinear.tflite_conv(x, w, bias, **attrs))
