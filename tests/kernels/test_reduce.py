"""Float ReduceSum/ReduceMean over short trailing rows (summed by BLAS) against NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from modelloader.kernels.cpu import reduce as reduce_mod
from modelloader.kernels.cpu import registry

RNG = np.random.default_rng(5)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMean"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axes", [[2, 3], [-1], [1, 2, 3], [1, 2], [0]])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_short_rows_match_numpy(op: str, dtype, axes: list[int], keepdims: int) -> None:
    x = RNG.standard_normal((2, 80, 3, 3)).astype(dtype)
    x[0, 0, 0, 0], x[1, 5, 1, 1] = np.nan, np.inf
    ax = np.array(axes, np.int64)
    fast = reduce_mod.row_sums(x, tuple(sorted(a % 4 for a in axes)), True)
    # trailing axes of rows shorter than 128 take the BLAS path; the rest NumPy's
    assert (fast is not None) == (axes in ([2, 3], [-1]))
    got = registry.lookup(op)(x, ax, keepdims=keepdims)
    ref = (np.sum if op == "ReduceSum" else np.mean)(x, axis=tuple(axes), keepdims=bool(keepdims))
    assert got.dtype == x.dtype and got.shape == ref.shape
    tol = 1e-5 if dtype == np.float32 else 1e-12  # another order of additions
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int16, np.uint16])
def test_short_integer_rows_sum_exactly(dtype) -> None:
    info = np.iinfo(dtype)
    x = RNG.integers(info.min, info.max, (1, 100, 11, 11), endpoint=True).astype(dtype)
    x[0, 0] = info.max  # the largest sums
    x[0, 1] = info.min
    got = reduce_mod.row_sums(x, (2, 3), False)
    assert got is not None and got.dtype == np.int64
    np.testing.assert_array_equal(got, x.sum(axis=(2, 3), dtype=np.int64))


def test_integer_reduce_sum_keeps_its_dtype_and_wraps() -> None:
    x = np.full((1, 80, 3, 3), 100, np.int8)
    got = registry.lookup("ReduceSum")(x, np.array([2, 3]), keepdims=0)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, np.sum(x, axis=(2, 3), dtype=np.int8))
