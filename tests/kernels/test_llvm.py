"""The llvmlite-compiled conv epilogue (``kernels/cpu/_llvm.py``): bit-identical to the NumPy
passes and to numba's pass, loaded only for outputs large enough to gain from it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from modelloader.kernels.cpu import _jit, _llvm
from modelloader.kernels.cpu import conv as cv


@pytest.fixture(autouse=True)
def _needs_llvmlite() -> None:
    if not _llvm.available:
        pytest.fail("llvmlite is a test dependency (the test extra, with numba): install it")


def _numpy_passes(dst, b, z, lo, hi):
    """The NumPy passes the compiled loop replaces, in their order of float operations."""
    v = dst + (np.zeros(dst.shape[1], dst.dtype) if b is None else b).reshape(
        (1, -1) + (1,) * (dst.ndim - 2)
    )
    if z is not None:
        v = v + z
    v = np.where(v < lo, dst.dtype.type(lo), v)
    return np.where(v > hi, dst.dtype.type(hi), v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("bounds", [(-np.inf, np.inf), (0.0, np.inf), (0.0, 6.0), (-0.5, 1.0)])
@pytest.mark.parametrize("shape", [(1, 5, 7, 3), (2, 3, 4, 4), (1, 4, 0, 5), (3, 2, 1, 1)])
def test_identical_to_numpy_and_numba(dtype, residual, bias, bounds, shape) -> None:
    rng = np.random.default_rng(len(shape) + shape[1])
    dst = (rng.standard_normal(shape) * 3).astype(dtype)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], dtype)
    dst.reshape(-1)[: min(dst.size, 5)] = special[: min(dst.size, 5)]
    b = rng.standard_normal(shape[1]).astype(dtype) if bias else None
    z = rng.standard_normal(shape).astype(dtype) if residual else None
    want = _numpy_passes(dst, b, z, *bounds)
    got = _llvm.epilogue_fn(b, shape[1], np.dtype(dtype), *bounds)(dst.copy(), z)
    np.testing.assert_array_equal(got, want)
    _jit.load()
    numba_pass = _jit.epilogue_fn(b, shape[1], np.dtype(dtype), *bounds)(dst.copy(), z)
    assert got.tobytes() == numba_pass.tobytes()  # same bits, signs of zero included


def test_residual_read_through_a_view() -> None:
    rng = np.random.default_rng(1)
    dst = rng.standard_normal((1, 4, 6, 6)).astype(np.float32)
    z = rng.standard_normal((1, 4, 6, 12)).astype(np.float32)[..., ::2]  # not contiguous
    got = _llvm.epilogue_fn(None, 4, np.dtype(np.float32), 0.0, np.inf)(dst.copy(), z)
    np.testing.assert_array_equal(got, _numpy_passes(dst, None, z, 0.0, np.inf))


@pytest.mark.parametrize("residual", [False, True])
def test_source_with_junk_columns(residual) -> None:
    """From a product whose lines carry junk columns (the flat taps' layout) straight into
    the output: the crop and the epilogue in one pass; other views are copied first."""
    rng = np.random.default_rng(4)
    wide = rng.standard_normal((2, 3, 5, 9)).astype(np.float32)
    src = wide[..., :6]
    b = rng.standard_normal(3).astype(np.float32)
    z = rng.standard_normal((2, 3, 5, 6)).astype(np.float32) if residual else None
    fn = _llvm.epilogue_fn(b, 3, np.dtype(np.float32), 0.0, 6.0)
    want = _numpy_passes(np.ascontiguousarray(src), b, z, 0.0, 6.0)
    np.testing.assert_array_equal(fn(np.empty((2, 3, 5, 6), np.float32), z, src), want)
    other = np.ascontiguousarray(src.transpose(0, 1, 3, 2)).transpose(0, 1, 3, 2)
    np.testing.assert_array_equal(fn(np.empty((2, 3, 5, 6), np.float32), z, other), want)


def test_rejects_what_the_loop_cannot_read_safely() -> None:
    """The loop does not check bounds: mismatched operands are ValueErrors before it runs."""
    fn = _llvm.epilogue_fn(np.ones(4, np.float32), 4, np.dtype(np.float32), 0.0, 6.0)
    dst = np.zeros((1, 4, 5, 5), np.float32)
    with pytest.raises(ValueError, match="residual"):
        fn(dst, np.zeros((1, 4, 1, 1), np.float32))
    with pytest.raises(ValueError, match="residual"):
        fn(dst, np.zeros((1, 4, 5, 5), np.float64))
    with pytest.raises(ValueError, match="output"):
        fn(np.zeros((1, 4, 5, 5), np.float64))
    with pytest.raises(ValueError, match="output"):
        fn(np.zeros((1, 3, 5, 5), np.float32))
    with pytest.raises(ValueError, match="output"):
        fn(np.zeros((1, 4, 5, 10), np.float32)[..., ::2])
    with pytest.raises(TypeError):
        _llvm.epilogue_fn(None, 4, np.dtype(np.float16), 0.0, 6.0)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("activation, params", [("", ()), ("Relu", ()), ("Clip", (0.0, 6.0))])
def test_convs_identical_with_and_without_it(monkeypatch, k, residual, activation, params):
    """Generic (3x3) and prepared (pointwise) FusedConv with outputs over MIN_SIZE give the
    NumPy passes' bits through the llvmlite pass (numba's pass held off)."""
    monkeypatch.setattr(_jit, "loaded", lambda: False)
    rng = np.random.default_rng(k)
    x = rng.standard_normal((1, 8, 64, 64)).astype(np.float32)
    w = rng.standard_normal((16, 8, k, k)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    z = rng.standard_normal((1, 16, 64, 64)).astype(np.float32) if residual else None
    assert 16 * 64 * 64 >= _llvm.MIN_SIZE
    attrs = dict(kernel_shape=[k, k], pads=[k // 2] * 4, activation=activation)
    attrs["activation_params"] = params
    prepared = cv._prepare_fused_conv((x, w, b, z), **attrs)
    assert prepared is not None

    def both() -> list[np.ndarray]:
        return [cv.fused_conv(x, w, b, z, **attrs).copy(), prepared(x, w, b, z).copy()]

    got = both()
    assert _llvm.loaded()
    monkeypatch.setattr(_llvm, "available", False)
    want = both()
    for g, v in zip(got, want):
        np.testing.assert_array_equal(g, v)


def test_loaded_for_large_outputs_only_and_never_numba() -> None:
    """A float CNN without depthwise convs: small outputs keep the NumPy passes (no llvmlite
    import), a large one loads llvmlite but not numba (~115 MB more)."""
    code = (
        "import sys, numpy as np\n"
        "from modelloader.kernels.cpu.conv import fused_conv\n"
        "def run(s):\n"
        "    x = np.ones((1, 4, s, s), np.float32); w = np.ones((16, 4, 3, 3), np.float32)\n"
        "    fused_conv(x, w, np.ones(16, np.float32), pads=[1] * 4, activation='Relu')\n"
        "run(8); print('llvmlite' in sys.modules)\n"
        "run(64); print('llvmlite' in sys.modules, 'numba' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "False"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "shape, k, s, pads, ceil",
    [
        ((1, 64, 30, 30), 3, 2, (1, 1, 1, 1), 0),  # ResNet's stem pool
        ((2, 5, 9, 8), 3, 1, (0, 1, 2, 0), 0),
        ((1, 3, 10, 11), 3, 2, (1, 1, 1, 1), 1),  # ceil mode reads past the pads
        ((1, 4, 5, 5), 2, 2, (0, 0, 0, 0), 1),
        ((1, 2, 3, 3), 3, 1, (2, 2, 2, 2), 0),  # windows wholly in the padding
        ((3, 3, 7, 9), 2, 2, (0, 0, 1, 1), 0),
        ((1, 2, 1, 1), 3, 1, (1, 1, 1, 1), 0),
    ],
)
def test_max_pool_identical_to_the_numpy_folds(dtype, shape, k, s, pads, ceil) -> None:
    from modelloader.kernels.cpu import pool

    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype)
    x.reshape(-1)[: min(x.size, 5)] = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf])[
        : min(x.size, 5)
    ]
    geo = pool._geometry(x, [k, k], [s, s], None, list(pads), "NOTSET", ceil)
    kk, ss, dd, p, out_sp = geo
    want = pool._fold(x, kk, ss, dd, p, out_sp, -np.inf, np.maximum)
    out = np.empty(x.shape[:2] + tuple(out_sp), dtype)
    got = _llvm.max_pool(x, kk, ss, p, out_sp, out)
    assert got.tobytes() == want.tobytes()  # NaN, infinities and zero signs included


def test_max_pool_kernel_routes_large_inputs(monkeypatch) -> None:
    """MaxPool of a large float input runs llvmlite's loop (same bits as the folds); the
    shapes it has no loop for, and small inputs, keep the folds."""
    from modelloader.kernels.cpu import pool

    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 16, 64, 64)).astype(np.float32)
    calls: list[tuple] = []
    real = _llvm.max_pool
    monkeypatch.setattr(_llvm, "max_pool", lambda *a: calls.append(a[1:3]) or real(*a))
    attrs = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    got = pool.max_pool(x, **attrs)
    pool.max_pool(x, kernel_shape=[3, 3], strides=[2, 2], dilations=[2, 2])
    pool.max_pool(x[:, :, :8, :8], **attrs)
    assert calls == [([3, 3], [2, 2])]
    monkeypatch.setattr(_llvm, "available", False)
    np.testing.assert_array_equal(got, pool.max_pool(x, **attrs))


def test_rejects_pools_it_has_no_loop_for() -> None:
    x = np.zeros((1, 2, 8, 8), np.float32)
    out = np.empty((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="kernel"):
        _llvm.max_pool(x, [3, 3], [3, 3], [0, 0, 0, 0], (2, 2), np.empty((1, 2, 2, 2), np.float32))
    with pytest.raises(ValueError, match="output"):
        _llvm.max_pool(x, [2, 2], [2, 2], [0, 0, 0, 0], (4, 4), out[:, :1])
    with pytest.raises(ValueError, match="input"):
        _llvm.max_pool(x.astype(np.int8), [2, 2], [2, 2], [0, 0, 0, 0], (4, 4), out)


def test_a_failed_compile_falls_back_to_numpy(monkeypatch) -> None:
    """An llvmlite that cannot build the loops (another API) switches the module off for the
    process, with a warning, instead of failing the run."""

    def broken(unit: str) -> None:
        raise AttributeError("no create_pass_builder")

    monkeypatch.setattr(_llvm, "_fns", {})
    monkeypatch.setattr(_llvm, "_done", set())
    monkeypatch.setattr(_llvm, "_compile", broken)
    monkeypatch.setattr(_llvm, "available", True)
    with pytest.warns(RuntimeWarning, match="could not be compiled"):
        assert not _llvm.enabled(_llvm.MIN_SIZE)
    assert not _llvm.available and not _llvm.enabled(_llvm.MIN_SIZE)
    assert not _llvm.enabled(_llvm.MIN_SIZE - 1)
    assert not _llvm._compiled("chain") and not _llvm._compiled("wino")


def test_units_compile_on_demand() -> None:
    """Each unit is its own module: a model that needs only the epilogues never builds the
    chain loops (in a fresh process, as compiled units are process-wide)."""
    import subprocess
    import sys

    code = (
        "from modelloader.kernels.cpu import _llvm; assert _llvm.enabled(_llvm.MIN_SIZE); "
        "print(sorted(_llvm._done)); _llvm._kernel('wino_in'); print(sorted(_llvm._done))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:2] == ["['base']", "['base', 'wino']"]


def test_from_several_threads(monkeypatch) -> None:
    """Concurrent convs and pools through the compiled loops (no shared scratch: each call
    brings its own buffers) give each caller the serial result."""
    from concurrent.futures import ThreadPoolExecutor

    from modelloader.kernels.cpu import pool

    monkeypatch.setattr(_jit, "loaded", lambda: False)
    rng = np.random.default_rng(6)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    xs = [rng.standard_normal((1, 8, 48, 48)).astype(np.float32) for _ in range(6)]

    def work(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        y = cv.fused_conv(x, w, b, x[:, :1].repeat(16, 1), pads=[1] * 4, activation="Relu")
        return y.copy(), pool.max_pool(y, kernel_shape=[3, 3], strides=[2, 2]).copy()

    want = [work(x) for x in xs]
    assert _llvm.loaded()
    with ThreadPoolExecutor(4) as ex:
        got = list(ex.map(work, xs * 4))
    for i, (y, p) in enumerate(got):
        np.testing.assert_array_equal(y, want[i % len(xs)][0])
        np.testing.assert_array_equal(p, want[i % len(xs)][1])


@pytest.mark.parametrize("shape", [(2, 16, 32, 32), (4096, 16), (1, 8, 4, 32, 32)])
@pytest.mark.parametrize("activation, params", [("", ()), ("Relu", ()), ("Clip", (0.0, 6.0))])
def test_fused_batch_norm_identical_with_and_without_it(monkeypatch, shape, activation, params):
    """Inference batch norm with a clamp as one compiled pass: the NumPy passes' values
    (x * a, then + c, then the clamp), NaN and infinities included."""
    from modelloader.kernels.cpu import norm

    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 4).astype(np.float32)
    x.reshape(-1)[:3] = [np.nan, np.inf, -np.inf]
    c = shape[1]
    stats = [rng.standard_normal(c).astype(np.float32) for _ in range(3)]
    var = rng.random(c).astype(np.float32) + 0.1
    kw = dict(epsilon=1e-3, activation=activation, activation_params=params)
    assert x.size >= _llvm.MIN_SIZE
    got = norm.fused_batch_norm(x, *stats, var, **kw)
    assert _llvm.loaded()
    monkeypatch.setattr(_llvm, "available", False)
    want = norm.fused_batch_norm(x, *stats, var, **kw)
    assert got.shape == x.shape and got.dtype == x.dtype
    np.testing.assert_array_equal(got, want)
