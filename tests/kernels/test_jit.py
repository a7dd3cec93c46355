"""The compiled kernels (``kernels/cpu/_jit.py``) against the NumPy/BLAS path they replace
and against a float64 reference computed tap by tap."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import modelloader
from modelloader.kernels.cpu import _jit
from modelloader.kernels.cpu.conv import conv, fused_conv

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(autouse=True)
def _needs_numba() -> None:
    if not _jit.available:
        pytest.fail("numba is a test dependency (the test extra): install it")
    _jit.load()  # the epilogue only runs compiled once numba is loaded


def _reference(x, w, b, s, d, p, out_sp):
    """Depthwise conv in float64, one kernel tap at a time over a zero-padded input."""
    n, c, h, wd = x.shape
    m, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + p[0] + p[2], wd + p[1] + p[3]))
    xp[:, :, p[0] : p[0] + h, p[1] : p[1] + wd] = x
    xp = np.repeat(xp, m // c, axis=1)
    y = np.broadcast_to(b.astype(np.float64).reshape(1, m, 1, 1), (n, m, *out_sp)).copy()
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * d[0], j * d[1]
            win = xp[:, :, y0 : y0 + s[0] * out_sp[0] : s[0], x0 : x0 + s[1] * out_sp[1] : s[1]]
            y += w[:, 0, i, j].reshape(1, m, 1, 1) * win[:, :, : out_sp[0], : out_sp[1]]
    return y


@st.composite
def depthwise_cases(draw: st.DrawFn) -> dict:
    c = draw(st.integers(1, 6))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    p = [draw(st.integers(0, 3)) for _ in range(4)]
    h = draw(st.integers(max(1, (kh - 1) * d[0] + 1 - p[0] - p[2]), 12))
    wd = draw(st.integers(max(1, (kw - 1) * d[1] + 1 - p[1] - p[3]), 12))
    return dict(
        n=draw(st.integers(1, 2)),
        c=c,
        mult=draw(st.integers(1, 3)),
        hw=(h, wd),
        k=(kh, kw),
        s=s,
        d=d,
        p=p,
        dtype=draw(st.sampled_from([np.float32, np.float64])),
        seed=draw(st.integers(0, 2**16)),
    )


@settings(max_examples=150, deadline=None)
@given(depthwise_cases())
def test_depthwise_matches_reference_and_numpy(case: dict) -> None:
    rng = np.random.default_rng(case["seed"])
    n, c, mult, dt = case["n"], case["c"], case["mult"], case["dtype"]
    if c == 1 and mult == 1:
        mult = 2  # group == C == 1 is a plain conv, not depthwise
    x = rng.standard_normal((n, c, *case["hw"])).astype(dt)
    w = rng.standard_normal((c * mult, 1, *case["k"])).astype(dt)
    b = rng.standard_normal(c * mult).astype(dt)
    kw = dict(group=c, pads=case["p"], strides=case["s"], dilations=case["d"])
    got = conv(x, w, b, **kw).copy()
    _jit.available = False
    try:
        numpy_path = conv(x, w, b, **kw).copy()
    finally:
        _jit.available = True
    out_sp = got.shape[2:]
    want = _reference(x, w, b, case["s"], case["d"], case["p"], out_sp)
    tol = 1e-5 if dt == np.float32 else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    np.testing.assert_allclose(got, numpy_path, rtol=tol, atol=tol)


@pytest.mark.parametrize("mult", [1, 2])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size, pads", [(3, (1, 1, 1, 1)), (6, (0, 0, 1, 1)), (5, (2, 0, 0, 2))])
def test_small_plane_loop_is_identical_to_the_plane_loop(mult, stride, size, pads) -> None:
    """The 3x3 small-plane loop gives bit-identical results to the general one, over any
    range of output channels (a thread's share may start inside a multiplier group)."""
    from modelloader.kernels.cpu.conv import conv_geometry, flat_geometry

    rng = np.random.default_rng(size * stride * mult)
    c = 5
    x = rng.standard_normal((2, c, size, size)).astype(np.float32)
    w = rng.standard_normal((c * mult, 3, 3)).astype(np.float32)
    b = rng.standard_normal(c * mult).astype(np.float32)
    k, s, d, p, out_sp = conv_geometry(
        x.shape, (c * mult, 1, 3, 3), "NOTSET", None, None, pads, (stride, stride)
    )
    wq, hq, _, offs = flat_geometry(size, size, tuple(p), (3, 3), tuple(s), (1, 1), tuple(out_sp))
    bounds = (np.float32(-0.5), np.float32(1.0), np.float32(0.25))  # clamp, padding fill
    for c0, c1 in ((0, c * mult), (1, c * mult - 1)):
        plane = np.zeros((2, c * mult, *out_sp), np.float32)
        small = plane.copy()
        _jit._kernel("_dw_plane")(
            x, w, b, plane, c0, c1, offs, wq, hq, stride, stride, p[0], p[1], *bounds
        )
        wt = np.ascontiguousarray(w.reshape(-1, 9).T)
        _jit._kernel("_dw_small3")(x, wt, b, small, c0, c1, stride, stride, p[0], p[1], *bounds)
        np.testing.assert_array_equal(small, plane)
        assert np.abs(small[:, c0:c1]).sum() > 0 and not small[:, :c0].any()


@pytest.mark.parametrize(
    "activation, params",
    [("", ()), ("Relu", ()), ("Clip", (0.0, 6.0)), ("Clip", (-0.5, 0.25))],
)
def test_fused_clamp_matches_separate_activation(activation: str, params: tuple) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 9, 10)).astype(np.float32) * 4
    x[0, 0, 0, 0] = np.nan  # NaN passes a clamp, as np.clip lets it
    w = rng.standard_normal((8, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    kw = dict(group=8, pads=[1, 1, 1, 1], strides=[2, 1])
    got = fused_conv(x, w, b, activation=activation, activation_params=params, **kw)
    want = conv(x, w, b, **kw).astype(np.float64)
    if activation == "Relu":
        want = np.maximum(want, 0)
    elif activation == "Clip":
        want = np.clip(want, *params)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.isnan(got[0, 0, 0, 0])


@pytest.mark.parametrize("name", ["mobilenet_v2_int8", "mobilenet_v2_f32"])
def test_tflite_models_identical_with_and_without_jit(name: str) -> None:
    """The compiled and NumPy paths agree on whole models: int8 bit for bit, float32 within
    summation-order rounding; both match the interpreter's stored outputs (the fixture tests)."""
    m = modelloader.load(MODELS / "tflite" / f"{name}.tflite")
    with np.load(MODELS / "tflite" / f"{name}.npz") as z:
        feeds = {k.split(":", 1)[1]: z[k] for k in z.files if k.startswith("input:")}
    got = m.predict(feeds)
    _jit.available = False
    try:
        numpy_path = m.predict(feeds)
    finally:
        _jit.available = True
    for k, v in got.items():
        if v.dtype.kind == "f":
            np.testing.assert_allclose(v, numpy_path[k], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(v, numpy_path[k])


def test_env_switch_disables_the_compiled_path() -> None:
    """MODELLOADER_JIT=0 switches off numba's loops and llvmlite's (``_llvm``) alike."""
    code = (
        "from modelloader.kernels.cpu import _jit, _llvm; print(_jit.available or _llvm.available)"
    )
    env = dict(os.environ, MODELLOADER_JIT="0")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize(
    "k, group, shuffle",
    [(1, 1, 0), (3, 1, 0), (1, 4, 4), (3, 2, 2), (1, 2, 4), (3, 8, 0)],
)
@pytest.mark.parametrize("activation, params", [("", ()), ("Relu", ()), ("Clip", (-1.0, 2.0))])
def test_fused_epilogue_matches_numpy_passes(
    k: int, group: int, shuffle: int, residual: bool, activation: str, params: tuple
) -> None:
    """Bias, residual, clamp and channel shuffle in one compiled pass, against the NumPy
    passes: pointwise (shuffle written by the matmul), kxk (shuffle by copy), depthwise."""
    rng = np.random.default_rng(k * 100 + group * 10 + shuffle)
    x = rng.standard_normal((2, 8, 6, 7)).astype(np.float32)
    w = rng.standard_normal((8, 8 // group, k, k)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    z = rng.standard_normal((2, 8, 6, 7)).astype(np.float32) if residual else None
    kw = dict(group=group, pads=[k // 2] * 4, shuffle=shuffle)
    kw.update(activation=activation, activation_params=params)
    got = fused_conv(x, w, b, z, **kw).copy()
    _jit.available = False
    try:
        want = fused_conv(x, w, b, z, **kw).copy()
    finally:
        _jit.available = True
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_epilogue_alone_does_not_load_numba() -> None:
    """A float model without depthwise convs (ResNet-like) never imports numba: its ~115 MB
    would outweigh the epilogue's gain (large outputs take llvmlite's pass, test_llvm.py)."""
    code = (
        "import sys, numpy as np\n"
        "from modelloader.kernels.cpu.conv import fused_conv\n"
        "x = np.ones((1, 4, 5, 5), np.float32); w = np.ones((4, 4, 3, 3), np.float32)\n"
        "fused_conv(x, w, np.ones(4, np.float32), x, pads=[1] * 4, activation='Relu')\n"
        "print('numba' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_compiled_kernels_from_several_threads() -> None:
    """Concurrent predict calls through the compiled kernels (per-call work buffers, one
    compilation) give each caller the single-threaded result."""
    from concurrent.futures import ThreadPoolExecutor

    m = modelloader.load(MODELS / "tflite" / "mobilenet_v2_int8.tflite")
    rng = np.random.default_rng(3)
    feeds = [rng.integers(-128, 128, (1, 96, 96, 3), dtype=np.int8) for _ in range(6)]
    want = [m.predict(f) for f in feeds]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(m.predict, feeds * 3))
    for i, g in enumerate(got):
        for k, v in g.items():
            np.testing.assert_array_equal(v, want[i % len(feeds)][k])


def test_epilogue_rejects_a_residual_of_another_size() -> None:
    """The compiled epilogue does not check bounds, so a residual or source whose size is
    not the output's is a ValueError before it runs (a (1, M, 1, 1) residual would
    otherwise be read far past its end)."""
    _jit.load()
    fn = _jit.epilogue_fn(np.ones(4, np.float32), 4, np.dtype(np.float32), 0.0, 6.0)
    dst = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="same size"):
        fn(dst, np.zeros((1, 4, 1, 1), np.float32))
    with pytest.raises(ValueError, match="same size"):
        fn(dst, None, np.zeros((1, 4, 5, 4), np.float32))
    np.testing.assert_array_equal(fn(dst, np.ones((1, 4, 5, 5), np.float32)), 2.0)
