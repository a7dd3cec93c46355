"""Behaviour of the elementwise/activation/reduce families that ONNX's node suite misses:
legacy-opset importer rewrites, dtype preservation and tie/overflow edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import modelloader
from modelloader.kernels.cpu import registry


def _run(op: str, opset: int, inputs: list[np.ndarray], attrs: dict, n_out: int = 1) -> list:
    names = [f"x{i}" for i in range(len(inputs))]
    outs = [f"y{i}" for i in range(n_out)]
    graph = helper.make_graph(
        [helper.make_node(op, names, outs, **attrs)],
        "g",
        [
            helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
            for n, x in zip(names, inputs)
        ],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    got = modelloader.load(model.SerializeToString()).predict(dict(zip(names, inputs)))
    return [got[o] for o in outs]


X = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("axis", [0, 1, 2, -2])
def test_softmax_family_opset11_coerces_to_2d(op: str, axis: int) -> None:
    (y,) = _run(op, 11, [X], {"axis": axis})
    a = axis % X.ndim
    flat = X.reshape(int(np.prod(X.shape[:a])), -1)
    fn = registry.lookup(op)
    np.testing.assert_allclose(y, fn(flat, axis=-1).reshape(X.shape), rtol=1e-6)


def test_legacy_broadcast_axis() -> None:
    a = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    b = np.arange(12, dtype=np.float32).reshape(3, 4)
    (y,) = _run("Add", 6, [a, b], {"broadcast": 1, "axis": 1})
    np.testing.assert_allclose(y, a + b[:, :, None])


def test_legacy_clip_topk_reduce_cast() -> None:
    (y,) = _run("Clip", 6, [X], {"min": -0.5, "max": 0.5})
    np.testing.assert_array_equal(y, np.clip(X, -0.5, 0.5))
    values, idx = _run("TopK", 1, [X], {"k": 2, "axis": 1}, n_out=2)
    assert idx.dtype == np.int64 and values.shape == (2, 2, 4)
    (y,) = _run("ReduceSum", 11, [X], {"axes": [1], "keepdims": 0})
    np.testing.assert_allclose(y, X.sum(axis=1), rtol=1e-6)
    (y,) = _run("Cast", 1, [X], {"to": "FLOAT16"})
    assert y.dtype == np.float16


@pytest.mark.parametrize(
    "op,attrs",
    [
        ("Sigmoid", {}),
        ("Gelu", {}),
        ("Gelu", {"approximate": "tanh"}),
        ("Mish", {}),
        ("Softplus", {}),
        ("Swish", {}),
        ("Erf", {}),
        ("Softmax", {}),
        ("HardSwish", {}),
    ],
)
def test_float32_stays_float32(op: str, attrs: dict) -> None:
    x = np.random.default_rng(2).standard_normal(300_000).astype(np.float32) * 30
    y = registry.lookup(op)(x, **attrs)
    assert y.dtype == np.float32 and y.shape == x.shape and np.isfinite(y).all()


def test_pow_keeps_base_dtype() -> None:
    pow_ = registry.lookup("Pow")
    assert pow_(X, np.array(2, np.int64)).dtype == np.float32
    assert pow_(np.array([2, 3], np.int32), np.array([0.5], np.float32)).dtype == np.int32


def test_topk_ties_keep_index_order() -> None:
    x = np.array([[1, 3, 3, 2, 3]], dtype=np.uint8)
    values, idx = registry.lookup("TopK")(x, np.array([3]), largest=1)
    np.testing.assert_array_equal(idx, [[1, 2, 4]])
    values, idx = registry.lookup("TopK")(x, np.array([2]), largest=0)
    np.testing.assert_array_equal(idx, [[0, 3]])


def test_bitshift_out_of_range_and_signed() -> None:
    shift = registry.lookup("BitShift")
    x = np.array([-8, 8, 1], np.int8)
    np.testing.assert_array_equal(
        shift(x, np.array([1, 9, 7], np.int8), direction="RIGHT"), [-4, 0, 0]
    )
    np.testing.assert_array_equal(
        shift(x, np.array([8, 1, 7], np.int8), direction="LEFT"), [0, 16, -128]
    )
