"""Kernels for sparse (CSR) weights, domain ``modelloader`` (see modelloader/compress/sparse.py).

``SparseGemm(A, W, C)`` computes ``act(alpha * op(A) @ W.T + beta * C)`` where ``W`` is a
``SparseTensor`` holding op(B) transposed (``[N, K]``); ``A`` may have leading batch axes
(MatMul). ``SparseConv(X, W, B, Z)`` is FusedConv with a sparse ``W``: im2col, then a
CSR @ dense product (for a grouped conv, with the block-diagonal matrix of its groups).
Products run in compiled loops (``_jit.csr_rows``) where numba is installed, else in
scipy's CSR kernels.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelloader.kernels.cpu import _jit
from modelloader.kernels.cpu._registry import kernel
from modelloader.kernels.cpu.conv import (
    apply_activation,
    fused_conv,
    pad_input,
    resolve_pads,
    scratch,
    window_view,
)
from modelloader.parallel import num_threads, parallel_for, uses_team

D = "modelloader"
_FLOATS = (np.float32, np.float64)


def csr_product(w: Any, rhs: np.ndarray) -> np.ndarray:
    """``w``'s 2-D CSR view times a dense vector or matrix on the intra-op threads (the
    compiled and scipy's sparse kernels release the GIL), by row blocks of about equal
    non-zeros in the compiled loops (``_jit.csr_rows``); without them
    in scipy's, a vector by column blocks (partial sums added), a matrix by row blocks."""
    rows, cols = w.matrix_shape
    if rhs.ndim not in (1, 2) or rhs.shape[0] != cols:
        # the compiled loops do not check bounds: a mismatch must stop here
        raise ValueError(
            f"sparse product: the weight's matrix is {rows}x{cols} but the input has shape "
            f"{rhs.shape}; its first axis must be {cols}"
        )
    if _jit.available and rhs.dtype == w.dtype and rhs.dtype.type in _FLOATS:
        out = np.empty(w.matrix_shape[:1] + rhs.shape[1:], w.dtype)
        ranges = w.row_ranges(num_threads())
        args = (w.indptr, w.narrow_indices(), w.data, np.ascontiguousarray(rhs), out)

        def row_ranges(i: int, j: int) -> None:
            for r in ranges[i:j]:
                _jit.csr_rows(*args, r)

        parallel_for(len(ranges), row_ranges)
        return out
    if rhs.ndim == 1:
        cblocks = w.column_blocks(num_threads())
        partial = np.empty((len(cblocks), w.matrix_shape[0]), np.result_type(w.dtype, rhs.dtype))

        def columns(i: int, j: int) -> None:
            for k in range(i, j):
                lo, hi, m = cblocks[k]
                partial[k] = m @ rhs[lo:hi]

        parallel_for(len(cblocks), columns)
        return partial[0] if len(cblocks) == 1 else partial.sum(axis=0)
    blocks = w.row_blocks(num_threads())
    if len(blocks) == 1:
        return np.asarray(blocks[0][2] @ rhs)
    out = np.empty((w.matrix_shape[0],) + rhs.shape[1:], np.result_type(w.dtype, rhs.dtype))

    def rows(i: int, j: int) -> None:
        for lo, hi, m in blocks[i:j]:
            out[lo:hi] = m @ rhs

    parallel_for(len(blocks), rows)
    return out


@kernel("SparseGemm", domain=D)
@uses_team
def sparse_gemm(
    a: np.ndarray,
    w: Any,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> np.ndarray:
    """modelloader SparseGemm: Gemm/FusedGemm/MatMul with a CSR right operand ``[N, K]``."""
    aa = a.T if transA else a
    lead = aa.shape[:-1]
    x = aa.reshape(-1, aa.shape[-1]).astype(w.dtype, copy=False)
    # (W @ x.T).T: CSR rows are the outputs, so each output is one sparse dot product
    if x.shape[0] == 1:  # a matrix-vector product: no dense transposes
        y = csr_product(w, x[0])[None, :]
    else:
        y = np.ascontiguousarray(csr_product(w, np.ascontiguousarray(x.T)).T)
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    if c is not None and beta != 0.0:
        cc = c.astype(y.dtype, copy=False)
        y += cc if beta == 1.0 else cc * y.dtype.type(beta)
    apply_activation(y, activation, activation_params)
    return y.reshape(*lead, y.shape[-1]).astype(a.dtype, copy=False)


@kernel("SparseConv", domain=D)
@uses_team
def sparse_conv(
    x: np.ndarray,
    w: Any,
    b: np.ndarray | None = None,
    z: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
    activation: str = "",
    activation_params: Sequence[float] = (),
) -> np.ndarray:
    """modelloader SparseConv: act(Conv(X, W, B) + Z), ``W`` a SparseTensor. A grouped conv
    is one product of the whole im2col with the block-diagonal matrix of its groups
    (``SparseTensor.block_diagonal``).

    A timed weight (one with a ``dense_twin``) runs both the dense and the sparse form in its
    first calls, alternating which goes first, and then keeps the faster (``W.choose``);
    both forms give the same result up to float summation order."""
    attrs = dict(
        auto_pad=auto_pad,
        dilations=dilations,
        group=group,
        kernel_shape=kernel_shape,
        pads=pads,
        strides=strides,
        activation=activation,
        activation_params=activation_params,
    )
    twin = w.dense_twin
    if twin is None or w.choice == "sparse":
        return _sparse_conv(x, w, b, z, **attrs)
    if w.choice == "dense":
        return fused_conv(x, twin, b, z, **attrs)
    forms = [("dense", fused_conv, twin), ("sparse", _sparse_conv, w)]
    if len(w._times) % 2:
        forms.reverse()
    seconds, results = {}, {}
    for form, fn, weight in forms:
        t = time.perf_counter()
        results[form] = fn(x, weight, b, z, **attrs)
        seconds[form] = time.perf_counter() - t
    w.choose(seconds["dense"], seconds["sparse"])
    return results["sparse"]


def _sparse_conv(
    x: np.ndarray,
    w: Any,
    b: np.ndarray | None,
    z: np.ndarray | None,
    *,
    auto_pad: str,
    dilations: Sequence[int] | None,
    group: int,
    kernel_shape: Sequence[int] | None,
    pads: Sequence[int] | None,
    strides: Sequence[int] | None,
    activation: str,
    activation_params: Sequence[float],
) -> np.ndarray:
    n, c = x.shape[:2]
    if group < 1 or c != w.shape[1] * group or w.shape[0] % group:
        raise ValueError(
            f"SparseConv: input has {c} channels but the weight {w.shape} with group={group} "
            f"expects {w.shape[1] * group} (and output channels divisible by the group)"
        )
    r = x.ndim - 2
    k = list(kernel_shape or w.shape[2:])
    if group > 1:
        w = w.block_diagonal(group)
    s = list(strides or [1] * r)
    d = list(dilations or [1] * r)
    p, out_sp = resolve_pads(x.shape[2:], k, s, d, pads, auto_pad)
    hw = math.prod(out_sp)
    m = w.shape[0]
    xx = x.astype(w.dtype, copy=False)
    out = np.empty((n, m, hw), w.dtype)
    if math.prod(k) == 1 and not any(p) and all(v == 1 for v in s):
        cols_all = np.ascontiguousarray(xx).reshape(n, c, hw)
        for i in range(n):
            out[i] = csr_product(w, cols_all[i])
    else:
        xp = pad_input(xx, p, slot="sparse_pad")
        view = window_view(xp, k, s, d, out_sp)
        cols = scratch("sparse_cols", (n, c, *k, *out_sp), xx.dtype)
        np.copyto(cols, view)
        cols = cols.reshape(n, c * math.prod(k), hw)
        for i in range(n):
            out[i] = csr_product(w, cols[i])
    out = out.reshape((n, m, *out_sp))
    if b is not None:
        out += b.astype(out.dtype, copy=False).reshape((m,) + (1,) * r)
    if z is not None:
        np.add(out, z, out=out, casting="unsafe")
    apply_activation(out, activation, activation_params)
    return out.astype(x.dtype, copy=False)
