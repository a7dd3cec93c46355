"""Executor-level buffer reuse (modelloader.buffers): what may be recycled, and that recycling
never changes a result the caller holds."""

from __future__ import annotations

import math
import threading

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import modelloader
from modelloader import buffers

RNG = np.random.default_rng(0)
BIG = (1, 8, 32, 32)  # 32 KiB of float32: above buffers.MIN_BYTES


# --------------------------------------------------------------------------- the pool itself


def _pool_with_demand(nbytes: int, n: int = 4) -> buffers.Pool:
    """A pool whose runs so far had ``n`` buffers of ``nbytes`` live at once."""
    pool = buffers.Pool()
    pool.peak = n * nbytes
    return pool


def test_take_outside_a_run_is_plain_empty() -> None:
    assert buffers.current() is None
    a = buffers.take((4, 4096), np.float32)
    assert a.shape == (4, 4096) and a.dtype == np.float32 and a.flags.owndata


def test_release_recycles_only_unreferenced_owners() -> None:
    a = np.ones(BIG, np.float32)
    pool = _pool_with_demand(a.nbytes)
    env = {"a": a}
    pool.release(env, "a")  # ``a`` still names it here: kept out of the pool
    assert "a" not in env and pool.nbytes == 0

    pool.release({"b": np.ones(BIG, np.float32)}, "b")
    assert pool.nbytes == math.prod(BIG) * 4

    owner = np.ones(BIG, np.float32)
    pool.release({"v": owner[:, :4]}, "v")  # a view whose owner lives on
    pool.release({"v": owner.reshape(-1)}, "v")
    assert pool.sizes == [owner.nbytes]

    # a dying view of an otherwise dead owner gives the owner back
    pool.release({"v": np.ones(BIG, np.float32).transpose(0, 2, 3, 1)}, "v")
    assert pool.sizes == [owner.nbytes] * 2


def _read_only(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.ones(BIG, np.float32)[:, ::2].copy(order="F"),  # not C-contiguous
        lambda: np.frombuffer(bytearray(math.prod(BIG) * 4), np.float32),  # does not own its data
        lambda: _read_only(np.ones(BIG, np.float32)),
        lambda: np.ones(BIG, object),
        lambda: [np.ones(BIG, np.float32)],  # a sequence
        lambda: np.ones(16, np.float32),  # small
    ],
)
def test_release_refuses(make) -> None:
    pool = _pool_with_demand(math.prod(BIG) * 4)
    pool.release({"x": make()}, "x")
    assert pool.nbytes == 0


def test_pool_is_bounded_by_the_peak_live_set() -> None:
    nbytes = math.prod(BIG) * 4
    pool = _pool_with_demand(nbytes, n=2)
    for _ in range(5):
        pool.release({"x": np.ones(BIG, np.float32)}, "x")
    assert pool.sizes == [nbytes] * 2 and pool.nbytes == 2 * nbytes
    # a newly dead buffer displaces the least recently released to stay under the cap
    first = pool.bufs[0]
    pool.release({"x": np.ones(BIG, np.float32)}, "x")
    assert pool.sizes == [nbytes] * 2 and all(b is not first for b in pool.bufs)
    pool.release({"x": np.ones((2,) + BIG[1:], np.float32)}, "x")
    assert pool.nbytes == 2 * nbytes and pool.sizes == [2 * nbytes]
    pool.release({"x": np.ones((3,) + BIG[1:], np.float32)}, "x")  # above the cap: let go
    assert pool.sizes == [2 * nbytes]
    other = buffers.Pool()  # nothing ever served: nothing kept
    other.release({"x": np.ones(BIG, np.float32)}, "x")
    assert other.nbytes == 0


def test_free_plus_live_stays_within_the_peak() -> None:
    nbytes = math.prod(BIG) * 4
    pool = buffers.Pool()
    prev = buffers.activate(pool)
    try:
        held = [buffers.take(BIG, np.float32) for _ in range(2)]  # misses: the peak is 2 now
        assert pool.peak == pool.live == 2 * nbytes
        env = {"h": held.pop()}
        pool.release(env, "h")
        assert pool.nbytes == nbytes and pool.nbytes + pool.live <= pool.peak
        small = buffers.take((1, 4, 32, 32), np.float32)  # served by the bigger free buffer
        assert pool.nbytes == 0 and small.base is not None and small.base.nbytes == nbytes
        assert pool.peak == 2 * nbytes
    finally:
        buffers.activate(prev)


def test_take_serves_any_shape_of_that_size() -> None:
    nbytes = math.prod(BIG) * 4
    pool = _pool_with_demand(nbytes)
    pool.release({"x": np.ones(BIG, np.float32)}, "x")
    prev = buffers.activate(pool)
    try:
        a = buffers.take((nbytes // 8,), np.float64)  # any dtype/shape of a fitting size
    finally:
        buffers.activate(prev)
    assert a.shape == (nbytes // 8,) and a.dtype == np.float64 and pool.nbytes == 0
    a[...] = 2.0  # writeable
    env = {"a": a}
    pool.release(env, "a")  # still named here: refused
    assert pool.nbytes == 0
    env = {"a": a}
    del a
    pool.release(env, "a")  # comes back through its owner
    assert pool.nbytes == nbytes


# --------------------------------------------------------------------------- through a model


def shuffle_cnn() -> onnx.ModelProto:
    """Conv/Relu/residual Add/channel shuffle/pooling/Concat/Mul/Sigmoid, and two outputs that
    alias intermediates (a Reshape view of one, an Identity of another)."""
    c = 8
    inits = [
        numpy_helper.from_array((RNG.standard_normal((c, c, 3, 3)) * 0.2).astype(np.float32), "w1"),
        numpy_helper.from_array(RNG.standard_normal(c).astype(np.float32), "b1"),
        numpy_helper.from_array((RNG.standard_normal((c, 2, 1, 1)) * 0.5).astype(np.float32), "w2"),
        numpy_helper.from_array((RNG.standard_normal((c, 1, 3, 3)) * 0.5).astype(np.float32), "dw"),
        numpy_helper.from_array(np.array([1, 4, 2, 32, 32], np.int64), "s5"),
        numpy_helper.from_array(np.array([1, 8, 32, 32], np.int64), "s4"),
        numpy_helper.from_array(np.array([1, -1], np.int64), "flat"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], group=4),
        helper.make_node("Add", ["c2", "x"], ["a1"]),
        helper.make_node("Relu", ["a1"], ["r2"]),
        helper.make_node("Reshape", ["r2", "s5"], ["sh1"]),
        helper.make_node("Transpose", ["sh1"], ["sh2"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["sh2", "s4"], ["sh3"]),
        helper.make_node("Conv", ["sh3", "dw"], ["d1"], group=c, pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["d1"], ["g1"]),
        helper.make_node("Mul", ["g1", "sh3"], ["m1"]),
        helper.make_node("Mul", ["m1", "half"], ["m2"]),
        helper.make_node("Clip", ["m2"], ["cl"]),
        helper.make_node(
            "MaxPool", ["cl"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node(
            "AveragePool", ["r1"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Concat", ["p1", "p2"], ["cat"], axis=1),
        helper.make_node("Reshape", ["cat", "flat"], ["y"]),  # an output that views ``cat``
        helper.make_node("Relu", ["cat"], ["z"]),
        helper.make_node("Identity", ["m1"], ["w"]),  # an output that is an intermediate
        helper.make_node("Sub", ["z", "cat"], ["u"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shuffle",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 32, 32])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "u", "w", "cl")],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.fixture(scope="module")
def cnn() -> onnx.ModelProto:
    return shuffle_cnn()


def _inputs(n: int) -> list[np.ndarray]:
    return [RNG.standard_normal((1, 8, 32, 32)).astype(np.float32) for _ in range(n)]


def test_matches_onnxruntime_and_reuses_buffers(cnn: onnx.ModelProto) -> None:
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(cnn.SerializeToString(), providers=["CPUExecutionProvider"])
    m = modelloader.load(cnn.SerializeToString())
    for x in _inputs(3):
        got = m.predict(x)
        for name, want in zip(("y", "u", "w", "cl"), sess.run(None, {"x": x})):
            np.testing.assert_allclose(got[name], want, rtol=1e-5, atol=1e-5)
    pool = m._plan._local.pool
    assert pool.nbytes > 0 and pool.peak >= pool.nbytes  # dead intermediates were recycled


def test_results_held_by_the_caller_are_never_overwritten(cnn: onnx.ModelProto) -> None:
    m = modelloader.load(cnn.SerializeToString())
    xs = _inputs(4)
    first = m.predict(xs[0])
    kept = {k: v.copy() for k, v in first.items()}
    for x in xs[1:] + xs[1:]:
        m.predict(x)
    for k in kept:
        np.testing.assert_array_equal(first[k], kept[k])
    again = m.predict(xs[0])
    for k in kept:
        np.testing.assert_array_equal(again[k], kept[k])
        assert not np.shares_memory(again[k], first[k])


def test_inputs_are_never_recycled(cnn: onnx.ModelProto) -> None:
    m = modelloader.load(cnn.SerializeToString())
    x = _inputs(1)[0]
    keep = x.copy()
    for _ in range(3):
        out = m.predict({"x": x})
    np.testing.assert_array_equal(x, keep)
    for v in out.values():
        assert not np.shares_memory(v, x)


def test_concurrent_predict_cnn(cnn: onnx.ModelProto) -> None:
    m = modelloader.load(cnn.SerializeToString())
    xs = _inputs(6)
    expected = [m.predict(x) for x in xs]
    errors: list[BaseException] = []
    held: list[tuple[int, dict[str, np.ndarray]]] = []

    def worker(k: int) -> None:
        try:
            for j in range(25):
                i = (k * 5 + j) % len(xs)
                got = m.predict(xs[i])
                held.append((i, got))
                for name, want in expected[i].items():
                    np.testing.assert_array_equal(got[name], want)
        except BaseException as e:  # noqa: BLE001  re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    for i, got in held:  # nothing a caller kept was reused by a later run on any thread
        for name, want in expected[i].items():
            np.testing.assert_array_equal(got[name], want)


def test_values_captured_by_a_subgraph_are_not_recycled() -> None:
    """An If branch reads an outer intermediate that dies at the If; the branch returns a
    view of it, which must survive the outer run's later allocations."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 32, 32])
    then = helper.make_graph(
        [helper.make_node("Reshape", ["t", "shape"], ["o"])],
        "then",
        [],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(np.array([-1], np.int64), "shape")],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["t"], ["o2"])],
        "else",
        [],
        [helper.make_tensor_value_info("o2", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["t"]),
        helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
        helper.make_node("Greater", ["mx", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["res"], then_branch=then, else_branch=other),
        helper.make_node("Neg", ["x"], ["n1"]),
        helper.make_node("Exp", ["n1"], ["n2"]),
        helper.make_node("Neg", ["n2"], ["n3"]),
    ]
    graph = helper.make_graph(
        nodes,
        "capture",
        [x],
        [
            helper.make_tensor_value_info("res", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("n3", TensorProto.FLOAT, None),
        ],
        initializer=[numpy_helper.from_array(np.array(0, np.float32), "zero")],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    m = modelloader.load(proto.SerializeToString())
    for xv in _inputs(3):
        out = m.predict(xv)
        np.testing.assert_array_equal(out["res"], np.maximum(xv, 0).reshape(-1))
        np.testing.assert_array_equal(out["n3"], -np.exp(-xv))


def test_steady_state_allocates_from_the_pool(
    cnn: onnx.ModelProto, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = modelloader.load(cnn.SerializeToString())
    x = _inputs(1)[0]
    m.predict(x)
    m.predict(x)
    pool = m._plan._local.pool
    size = pool.nbytes
    misses = 0
    real = buffers.Pool.take

    def take(self, shape, dtype, nbytes):
        nonlocal misses
        before = self.nbytes
        out = real(self, shape, dtype, nbytes)
        misses += self.nbytes == before  # nothing left the pool: a fresh allocation
        return out

    monkeypatch.setattr(buffers.Pool, "take", take)
    for _ in range(3):
        m.predict(x)
    # after warm-up only the graph outputs (handed to the caller, so never given back) are
    # fresh allocations; every intermediate is recycled memory
    assert misses <= 3 * len(m.outputs)
    assert pool.nbytes == size  # and the pool does not grow across runs


def test_small_outputs_do_not_pin_big_buffers() -> None:
    """The pooled buffer serving a small output may be much larger; the caller gets a copy."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["a"], ["c"]),
        helper.make_node("MaxPool", ["c"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "small_out",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    m = modelloader.load(proto.SerializeToString())
    x = RNG.standard_normal((1, 8, 64, 64)).astype(np.float32)
    want = (-np.maximum(x, 0)).reshape(1, 8, 32, 2, 32, 2).max(axis=(3, 5))
    for _ in range(3):
        y = m.predict(x)["y"]
        np.testing.assert_array_equal(y, want)
        assert y.base is None or y.base.nbytes <= 2 * y.nbytes + buffers.MIN_BYTES


def test_take_prefers_recent_buffers_then_the_best_fit() -> None:
    n = math.prod(BIG) * 4
    pool = _pool_with_demand(n, n=16)
    for k in (4, 1, 2):  # released in this order: the 2n one is the most recent
        pool.release({"x": np.ones((k,) + BIG[1:], np.float32)}, "x")
    prev = buffers.activate(pool)
    try:
        a = buffers.take(BIG, np.float32)  # the most recent within 2x: the 2n buffer
        assert a.base is not None and a.base.nbytes == 2 * n and a.shape == BIG
        b = buffers.take(BIG, np.float32)  # then the exact one
        assert b.base is None and b.shape == BIG
        c = buffers.take((1, 4) + BIG[2:], np.float32)  # nothing within 2x: the best fit
        assert c.base is not None and c.base.nbytes == 4 * n
    finally:
        buffers.activate(prev)
    assert pool.nbytes == 0
