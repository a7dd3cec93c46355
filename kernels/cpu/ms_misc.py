"""com.microsoft contrib ops with no ai.onnx counterpart that onnxruntime's CPU provider runs:
CropAndResize, ScaledSiLU, Inverse, CDist, UnfoldTensor, and GridSample's bicubic/border
combination (where torch's semantics, which the contrib op follows, differ from ai.onnx's).
The contrib
spellings of standard ops (ExpandDims, GatherND, Pad, Range, Trilu, Unique, the rest of
GridSample, TransposeMatMul, NhwcMaxPool) import onto the ai.onnx kernels instead
(importers/onnx/ops/ms_misc.py).

Each kernel follows the schema in onnxruntime's ``contrib_defs.cc`` and, where the schema is
silent, what the CPU kernel in ``onnxruntime/contrib_ops/cpu`` computes.
"""

from __future__ import annotations

import numpy as np

from modelloader.errors import InputError
from modelloader.kernels.cpu._registry import kernel
from modelloader.kernels.cpu.image import _cubic_coeffs4

MS = "com.microsoft"


@kernel("CropAndResize", domain=MS)
def crop_and_resize(
    x: np.ndarray,
    rois: np.ndarray,
    batch_indices: np.ndarray,
    crop_size: np.ndarray,
    *,
    extrapolation_value: float = 0.0,
    mode: str = "bilinear",
) -> np.ndarray:
    """com.microsoft CropAndResize-1 (TensorFlow's crop_and_resize, NCHW): X (N, C, H, W), rois
    (R, 4) as normalised (y1, x1, y2, x2), batch_indices (R,) int32, crop_size [crop_h, crop_w]
    -> Y (R, C, crop_h, crop_w). Corner-aligned sampling at ``y1*(H-1) + i*(y2-y1)*(H-1)/(ch-1)``
    (the box centre when ch == 1); samples outside [0, H-1] x [0, W-1] take
    ``extrapolation_value``. ``mode`` is bilinear or nearest (round half away from zero).
    Raises InputError for a batch index outside [0, N)."""
    n, c, h, w = x.shape
    ch, cw = (int(v) for v in np.asarray(crop_size).reshape(-1)[:2])
    bi = np.asarray(batch_indices).reshape(-1).astype(np.int64)
    if bi.size and (bi.min() < 0 or bi.max() >= n):
        raise InputError(f"CropAndResize: batch_indices {bi.tolist()} outside [0, {n})")
    r = np.asarray(rois, np.float32).reshape(-1, 4)
    y = np.empty((len(r), c, ch, cw), x.dtype)

    def coords(lo: np.float32, hi: np.float32, size: int, steps: int) -> np.ndarray:
        if steps > 1:
            scale = (hi - lo) * np.float32(size - 1) / np.float32(steps - 1)
            return lo * np.float32(size - 1) + np.arange(steps, dtype=np.float32) * scale
        return np.full(1, np.float32(0.5) * (lo + hi) * np.float32(size - 1), np.float32)

    for k, (y1, x1, y2, x2) in enumerate(r):
        img = x[bi[k]].astype(np.float32, copy=False)
        iy, ix = coords(y1, y2, h, ch), coords(x1, x2, w, cw)
        vy = (iy >= 0) & (iy <= h - 1)
        vx = (ix >= 0) & (ix <= w - 1)
        if mode == "nearest":
            ny = np.clip(np.trunc(iy + np.copysign(0.5, iy)), 0, h - 1).astype(np.int64)
            nx = np.clip(np.trunc(ix + np.copysign(0.5, ix)), 0, w - 1).astype(np.int64)
            out = img[:, ny[:, None], nx[None, :]]
        else:
            ty = np.clip(np.floor(iy), 0, h - 1).astype(np.int64)
            by = np.clip(np.ceil(iy), 0, h - 1).astype(np.int64)
            lx = np.clip(np.floor(ix), 0, w - 1).astype(np.int64)
            rx = np.clip(np.ceil(ix), 0, w - 1).astype(np.int64)
            fy = (iy - np.floor(iy)).astype(np.float32)[:, None]
            fx = (ix - np.floor(ix)).astype(np.float32)[None, :]
            top = img[:, ty[:, None], lx] + (img[:, ty[:, None], rx] - img[:, ty[:, None], lx]) * fx
            bot = img[:, by[:, None], lx] + (img[:, by[:, None], rx] - img[:, by[:, None], lx]) * fx
            out = top + (bot - top) * fy
        valid = vy[:, None] & vx[None, :]
        y[k] = np.where(valid, out, np.float32(extrapolation_value)).astype(x.dtype)
    return y


@kernel("ScaledSiLU", domain=MS)
def scaled_silu(
    x: np.ndarray, scale: np.ndarray | None = None, *, alpha: float = 1.0
) -> np.ndarray:
    """com.microsoft ScaledSiLU-1: z = T(s * X), Y = T(z * T(sigmoid(z))), s the scalar
    ``scale`` input when given, else ``alpha``; each step rounded to X's type."""
    t = x.dtype.type
    s = float(np.asarray(scale, np.float64).reshape(-1)[0]) if scale is not None else alpha
    z = (x.astype(np.float64) * s).astype(x.dtype)
    sig = (1.0 / (1.0 + np.exp(-z.astype(np.float64)))).astype(x.dtype)
    return (z.astype(np.float64) * sig.astype(np.float64)).astype(t)


@kernel("Inverse", domain=MS)
def inverse(x: np.ndarray) -> np.ndarray:
    """com.microsoft Inverse-1: the inverse of each square matrix in X (..., n, n), computed in
    float64 and rounded to X's type (float16, float32 or float64). A singular matrix gives
    whatever LAPACK's partial-pivoting LU gives (inf/nan), as onnxruntime's Eigen kernel."""
    with np.errstate(all="ignore"):
        try:
            y = np.linalg.inv(x.astype(np.float64))
        except np.linalg.LinAlgError:
            y = np.full(x.shape, np.inf)
    return y.astype(x.dtype)


@kernel("CDist", domain=MS)
def cdist(a: np.ndarray, b: np.ndarray, *, metric: str = "sqeuclidean") -> np.ndarray:
    """com.microsoft CDist-1: pairwise distances between the rows of A (N, K) and B (M, K),
    (N, M); ``metric`` is sqeuclidean or euclidean. Computed in float64, rounded once."""
    d = a.astype(np.float64)[:, None, :] - b.astype(np.float64)[None, :, :]
    sq = np.einsum("nmk,nmk->nm", d, d)
    return (np.sqrt(sq) if metric == "euclidean" else sq).astype(a.dtype)


@kernel("UnfoldTensor", domain=MS)
def unfold_tensor(x: np.ndarray, *, size: int, dim: int = -1, step: int = 1) -> np.ndarray:
    """com.microsoft UnfoldTensor-1 (torch.Tensor.unfold): every window of ``size`` along
    ``dim`` starting a multiple of ``step`` apart; ``dim`` becomes (n - size) // step + 1 and a
    last axis of length ``size`` is appended. Raises InputError when size > n."""
    axis = dim + x.ndim if dim < 0 else dim
    if size > x.shape[axis]:
        raise InputError(
            f"UnfoldTensor: size {size} exceeds dimension {dim} of length {x.shape[axis]}"
        )
    win = np.lib.stride_tricks.sliding_window_view(x, size, axis=axis)
    index = [slice(None)] * win.ndim
    index[axis] = slice(None, None, step)
    return np.ascontiguousarray(win[tuple(index)])


@kernel("GridSample", domain=MS)
def grid_sample_bicubic_border(
    x: np.ndarray,
    grid: np.ndarray,
    *,
    align_corners: int = 0,
    mode: str = "bicubic",
    padding_mode: str = "border",
) -> np.ndarray:
    """com.microsoft GridSample-1 with mode bicubic and padding_mode border, as
    torch.nn.functional.grid_sample computes it: X (N, C, H, W) sampled at grid (N, Ho, Wo, 2)
    with the 4x4 taps around the unclamped position each clamped into the image. Every other
    mode/padding combination imports as ai.onnx GridSample."""
    n, c, h, w = x.shape
    g = grid.astype(np.float64).reshape(n, -1, 2)
    taps = []
    for d, size in ((0, w), (1, h)):  # grid[..., 0] indexes W, grid[..., 1] indexes H
        if align_corners:
            pos = (g[..., d] + 1) / 2 * (size - 1)
        else:
            pos = ((g[..., d] + 1) * size - 1) / 2
        base = np.floor(pos)
        idx = np.clip(base.astype(np.int64)[..., None] + np.arange(-1, 3), 0, size - 1)
        taps.append((idx, _cubic_coeffs4(pos - base)))
    (ix, wx), (iy, wy) = taps
    flat = x.reshape(n, c, -1).astype(np.float64)
    out = np.zeros((n, c, g.shape[1]))
    for i in range(4):
        for j in range(4):
            tap = np.take_along_axis(flat, (iy[..., i] * w + ix[..., j])[:, None, :], axis=2)
            out += tap * (wy[..., i] * wx[..., j])[:, None, :]
    return out.reshape(n, c, *grid.shape[1:3]).astype(x.dtype)
