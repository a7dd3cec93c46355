"""Random generators: shapes, dtypes, seeds, and that draws follow the distribution."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

import modelloader


def _model(node, inputs, outputs):  # noqa: ANN001, ANN202
    g = helper.make_graph([node], "g", inputs, outputs)
    return modelloader.load(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 22)]).SerializeToString()
    )


def test_bernoulli_seeded_reproducible_and_unbiased() -> None:
    node = helper.make_node("Bernoulli", ["p"], ["y"], seed=3.0)
    m = _model(
        node,
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [20000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [20000])],
    )
    p = np.full(20000, 0.3, np.float32)
    a, b = m.predict(p)["y"], m.predict(p)["y"]
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and set(np.unique(a)) <= {0.0, 1.0}
    assert abs(a.mean() - 0.3) < 0.02


def test_random_normal_not_folded_without_seed() -> None:
    node = helper.make_node("RandomNormal", [], ["y"], shape=[1000], mean=2.0, scale=0.5)
    m = _model(node, [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1000])])
    a, b = m.predict({})["y"], m.predict({})["y"]
    assert a.dtype == np.float32 and a.shape == (1000,)
    assert not np.array_equal(a, b), "an unseeded generator must draw anew each run"
    assert abs(a.mean() - 2.0) < 0.1 and abs(a.std() - 0.5) < 0.1
