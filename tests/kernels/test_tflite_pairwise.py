"""TFLite ADD/SUB/MUL on 8-bit inputs through the pair table equal the direct fixed-point
arithmetic, element for element, with broadcasting."""

from __future__ import annotations

import numpy as np
import pytest

from modelloader.kernels.cpu import qlinear


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
@pytest.mark.parametrize("op", ["add", "sub", "mul"])
@pytest.mark.parametrize("shapes", [((2, 8, 9, 9), (2, 8, 9, 9)), ((1, 8, 9, 9), (1, 8, 1, 1))])
def test_table_matches_direct(dtype, op: str, shapes) -> None:
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, shapes[0]).astype(dtype)
    b = rng.integers(info.min, info.max + 1, shapes[1]).astype(dtype)
    zp = int(rng.integers(info.min, info.max + 1))
    params = (0.031, zp, 0.017, -zp // 2 if dtype == np.int8 else zp // 2, 0.05, 3, None, None)
    fn = {"add": qlinear.tflite_add, "sub": qlinear.tflite_sub, "mul": qlinear.tflite_mul}[op]
    if op == "mul":
        direct = qlinear._tflite_mul(a, b, *params)
    else:
        direct = qlinear._tflite_addsub(a, b, *params, 1 if op == "add" else -1)
    names = ("a_scale", "a_zp", "b_scale", "b_zp", "y_scale", "y_zp", "act_min", "act_max")
    got = fn(a, b, **dict(zip(names, params)))
    assert max(a.size, b.size) >= qlinear._PAIR_MIN  # the table path ran
    assert got.dtype == dtype and got.shape == direct.shape
    np.testing.assert_array_equal(got, direct)
