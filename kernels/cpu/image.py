"""Image kernels: Resize, GridSample, AffineGrid, RoiAlign, NonMaxSuppression, CenterCropPad."""

from __future__ import annotations

import math

import numpy as np

from modelloader.kernels.cpu._registry import kernel

# --------------------------------------------------------------------------- Resize


def _source_coords(
    mode: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Maps output indices along one axis to input coordinates; also flags extrapolated ones."""
    y = np.arange(out_len, dtype=np.float64)
    out_f = scale * in_len
    extrap = None
    if mode == "align_corners":
        x = np.zeros(out_len) if out_f == 1 else y * (in_len - 1) / (out_f - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        r0, r1 = roi if roi is not None else (0.0, 1.0)
        if out_f == 1:
            x = np.full(out_len, (r1 - r0) * (in_len - 1) / 2)
        else:
            x = y * (r1 - r0) * (in_len - 1) / (out_f - 1)
        x = x + r0 * (in_len - 1)
        extrap = (x < 0) | (x > in_len - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out_len, -0.5) if out_f == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif mode == "half_pixel_symmetric":
        offset = in_len / 2 * (1 - out_len / out_f)
        x = offset + (y + 0.5) / scale - 0.5
    elif mode == "tf_half_pixel_for_nn":  # Resize-11 only
        x = (y + 0.5) / scale
    else:
        raise ValueError(f"Resize: unknown coordinate_transformation_mode {mode!r}")
    return x, extrap


def _cubic_kernel(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    t2, t3 = t * t, t * t * t
    near = (a + 2) * t3 - (a + 3) * t2 + 1
    far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _axis_weights(
    mode: str,
    ratio: np.ndarray,
    scale: float,
    antialias: bool,
    cubic_a: float,
    nearest_mode: str,
) -> np.ndarray:
    """Interpolation coefficients, shape (out, n), for the n taps starting below each position."""
    if mode == "nearest":
        frac = ratio != 1.0
        if nearest_mode == "round_prefer_floor":
            hi = ratio > 0.5
        elif nearest_mode == "round_prefer_ceil":
            hi = ratio >= 0.5
        elif nearest_mode == "floor":
            hi = np.zeros_like(frac)
        elif nearest_mode == "ceil":
            hi = np.ones_like(frac)
        else:
            raise ValueError(f"Resize: unknown nearest_mode {nearest_mode!r}")
        hi = hi | ~frac
        return np.stack([~hi, hi], axis=1).astype(np.float64)
    if mode == "linear":
        if not antialias:
            return np.stack([1 - ratio, ratio], axis=1)
        s = min(scale, 1.0)
        start = int(np.floor(-1 / s) + 1)
        taps = np.arange(start, 2 - start)
        w = np.clip(1 - np.abs((taps[None, :] - ratio[:, None]) * s), 0, 1)
        return w / w.sum(axis=1, keepdims=True)
    if mode == "cubic":
        if not antialias:
            taps = np.array([-1.0, 0.0, 1.0, 2.0])
            return _cubic_kernel(taps[None, :] - ratio[:, None], cubic_a)
        s = min(scale, 1.0)
        start = int(np.floor(-2 / s) + 1)
        taps = np.arange(start, 2 - start)
        w = _cubic_kernel(s * (taps[None, :] - ratio[:, None]), cubic_a)
        return w / w.sum(axis=1, keepdims=True)
    raise ValueError(f"Resize: unknown mode {mode!r}")


def _resize_axis(
    data: np.ndarray,
    axis: int,
    out_len: int,
    scale: float,
    roi: tuple[float, float] | None,
    *,
    mode: str,
    coord_mode: str,
    antialias: bool,
    cubic_a: float,
    exclude_outside: bool,
    extrapolation_value: float,
    nearest_mode: str,
) -> np.ndarray:
    in_len = data.shape[axis]
    if out_len == 0:
        shape = list(data.shape)
        shape[axis] = 0
        return np.empty(shape, dtype=data.dtype)
    x, extrap = _source_coords(coord_mode, out_len, in_len, scale, roi)
    base = np.floor(x)
    is_int = x == base
    # An integral coordinate uses ratio 1 relative to the tap below it (the reference's convention).
    ratio = np.where(is_int, 1.0, x - base)
    w = _axis_weights(mode, ratio, scale, antialias, cubic_a, nearest_mode)
    n = w.shape[1]
    first = base.astype(np.int64) + np.where(is_int, -(n // 2), -(n // 2) + 1)
    idx = first[:, None] + np.arange(n)[None, :]
    if exclude_outside:
        w = np.where((idx < 0) | (idx >= in_len), 0.0, w)
        tot = w.sum(axis=1, keepdims=True)
        w = w / np.where(tot == 0, 1.0, tot)
    idx = np.clip(idx, 0, in_len - 1)
    moved = np.moveaxis(data, axis, -1)
    if mode == "nearest":
        pick = np.take_along_axis(idx, w.argmax(axis=1)[:, None], axis=1)[:, 0]
        res = np.take(moved, pick, axis=-1)
    else:
        # Dense (out, in) weight matrix; clamped taps at the edges accumulate.
        mat = np.zeros((out_len, in_len), dtype=np.float64)
        np.add.at(mat, (np.repeat(np.arange(out_len), n), idx.ravel()), w.ravel())
        res = moved @ mat.T.astype(moved.dtype, copy=False)
    if extrap is not None and extrap.any():
        res = np.where(extrap, res.dtype.type(extrapolation_value), res)
    return np.moveaxis(res, -1, axis)


@kernel("Resize")
def resize(
    x: np.ndarray,
    roi: np.ndarray | None = None,
    scales: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
    *,
    antialias: int = 0,
    axes: list[int] | None = None,
    coordinate_transformation_mode: str = "half_pixel",
    cubic_coeff_a: float = -0.75,
    exclude_outside: int = 0,
    extrapolation_value: float = 0.0,
    keep_aspect_ratio_policy: str = "stretch",
    mode: str = "nearest",
    nearest_mode: str = "round_prefer_floor",
) -> np.ndarray:
    """ONNX Resize-19: separable per-axis nearest/linear/cubic resampling of X to ``sizes`` or by
    ``scales`` (over ``axes``), with the coordinate transformation, roi crop and antialias filter."""
    r = x.ndim
    ax = [a + r if a < 0 else a for a in axes] if axes is not None else list(range(r))
    if scales is not None and scales.size == 0:
        scales = None
    if sizes is not None and sizes.size == 0:
        sizes = None
    if roi is not None and roi.size == 0:
        roi = None
    if sizes is not None:
        sz = [int(v) for v in sizes]
        scl = [sz[i] / x.shape[a] for i, a in enumerate(ax)]
        if keep_aspect_ratio_policy != "stretch":
            pick = min if keep_aspect_ratio_policy == "not_larger" else max
            s = pick(scl)
            scl = [s] * len(ax)
            sz = [int(s * x.shape[a] + 0.5) for a in ax]
    elif scales is not None:
        scl = [float(v) for v in scales.astype(np.float64)]
        sz = [int(math.floor(s * x.shape[a])) for s, a in zip(scl, ax)]
    else:
        raise ValueError("Resize: one of scales or sizes is required")
    rois = None
    if roi is not None:
        rv = roi.astype(np.float64).ravel()
        k = len(ax)
        rois = [(float(rv[i]), float(rv[i + k])) for i in range(k)]

    integer = not (x.dtype.kind == "f" or x.dtype.kind == "V")
    work = x if mode == "nearest" else x.astype(np.float64 if integer else _float_work(x.dtype))
    for i, a in enumerate(ax):
        axis_roi = rois[i] if rois is not None else None
        if (
            math.isclose(scl[i], 1.0)
            and sz[i] == x.shape[a]
            and (
                axis_roi is None
                or (math.isclose(axis_roi[0], 0.0) and math.isclose(axis_roi[1], 1.0))
            )
        ):
            continue
        work = _resize_axis(
            work,
            a,
            sz[i],
            scl[i],
            axis_roi,
            mode=mode,
            coord_mode=coordinate_transformation_mode,
            antialias=bool(antialias),
            cubic_a=cubic_coeff_a,
            exclude_outside=bool(exclude_outside),
            extrapolation_value=extrapolation_value,
            nearest_mode=nearest_mode,
        )
    if work.dtype == x.dtype:
        return work
    if integer:
        info = np.iinfo(x.dtype)
        return np.clip(np.round(work), info.min, info.max).astype(x.dtype)
    return work.astype(x.dtype)


def _float_work(dt: np.dtype) -> type:
    return np.float64 if dt == np.float64 else np.float32


# --------------------------------------------------------------------------- GridSample


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflects coordinates into [lo, hi] by bouncing off the nearer border repeatedly."""
    rng = hi - lo
    if rng <= 0:
        return np.full_like(x, lo)
    below = x < lo
    d = np.where(below, lo - x, x - hi)
    k = np.floor(d / rng)
    r = d - k * rng
    even = k % 2 == 0
    from_lo = np.where(even, lo + r, hi - r)
    from_hi = np.where(even, hi - r, lo + r)
    return np.where(below, from_lo, np.where(x > hi, from_hi, x))


def _cubic_coeffs4(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic weights for taps -1, 0, 1, 2 at fractional offset t; shape (..., 4)."""
    taps = np.array([-1.0, 0.0, 1.0, 2.0])
    return _cubic_kernel(taps - t[..., None], a)


@kernel("GridSample")
def grid_sample(
    x: np.ndarray,
    grid: np.ndarray,
    *,
    align_corners: int = 0,
    mode: str = "linear",
    padding_mode: str = "zeros",
) -> np.ndarray:
    """ONNX GridSample-22: samples X (N, C, *S) at normalised grid locations (N, *O, k) with
    nearest/linear/cubic interpolation and zeros/border/reflection padding."""
    n, c = x.shape[:2]
    spatial = x.shape[2:]
    k = len(spatial)
    out_sp = grid.shape[1:-1]
    mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
    g = grid.astype(np.float64).reshape(n, -1, k)[
        ..., ::-1
    ]  # last grid coord indexes the last axis
    p = g.shape[1]
    taps_per_dim: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for d in range(k):
        size = spatial[d]
        if align_corners:
            pos = (g[..., d] + 1) / 2 * (size - 1)
            lo, hi = 0.0, size - 1.0
        else:
            pos = ((g[..., d] + 1) * size - 1) / 2
            lo, hi = -0.5, size - 0.5
        if mode == "nearest":
            pos = np.rint(pos)
        outside = (pos < lo) | (pos > hi)
        if padding_mode == "border":
            pos = np.where(outside, np.clip(pos, 0, size - 1), pos)
        elif padding_mode == "reflection":
            pos = np.where(outside, _reflect(pos, lo, hi), pos)
        if mode == "nearest":
            idx = pos.astype(np.int64)[..., None]
            w = np.ones_like(pos)[..., None]
        elif mode == "linear":
            base = np.floor(pos)
            t = pos - base
            idx = base.astype(np.int64)[..., None] + np.arange(2)
            w = np.stack([1 - t, t], axis=-1)
        elif mode == "cubic":
            base = np.floor(pos)
            idx = base.astype(np.int64)[..., None] + np.arange(-1, 3)
            w = _cubic_coeffs4(pos - base)
        else:
            raise ValueError(f"GridSample: unknown mode {mode!r}")
        # Resolve each tap index according to the padding mode.
        if padding_mode == "zeros":
            valid = (idx >= 0) & (idx < size)
            w = w * valid
            idx = np.clip(idx, 0, size - 1)
        elif padding_mode == "border":
            idx = np.clip(idx, 0, size - 1)
        else:
            idx = np.clip(
                np.trunc(_reflect(idx.astype(np.float64), lo, hi)).astype(np.int64), 0, size - 1
            )
        taps_per_dim.append((idx, w, np.arange(idx.shape[-1])))
    xf = x.reshape(n, c, -1).astype(np.float64)
    strides = [int(np.prod(spatial[d + 1 :])) for d in range(k)]
    out = np.zeros((n, c, p), dtype=np.float64)
    for combo in np.ndindex(*[t[0].shape[-1] for t in taps_per_dim]):
        flat = np.zeros((n, p), dtype=np.int64)
        wt = np.ones((n, p), dtype=np.float64)
        for d, j in enumerate(combo):
            idx, w, _ = taps_per_dim[d]
            flat += idx[..., j] * strides[d]
            wt *= w[..., j]
        out += np.take_along_axis(xf, flat[:, None, :], axis=2) * wt[:, None, :]
    return out.reshape(n, c, *out_sp).astype(x.dtype)


@kernel("AffineGrid")
def affine_grid(theta: np.ndarray, size: np.ndarray, *, align_corners: int = 0) -> np.ndarray:
    """ONNX AffineGrid-20: grid (N, *S, k) = theta (N, k, k+1) @ [x, y, (z,) 1] over normalised
    output coordinates (x indexing the last spatial axis)."""
    dims = [int(v) for v in size[2:]]
    axes = []
    for s in dims:
        if align_corners:
            a = np.linspace(-1.0, 1.0, s) if s > 1 else np.array([-1.0])
        else:
            a = (np.arange(s) * 2 + 1) / s - 1
        axes.append(a)
    mesh = np.meshgrid(*axes, indexing="ij")
    homo = np.stack([*mesh[::-1], np.ones(dims)], axis=-1).reshape(-1, len(dims) + 1)
    grid = np.einsum("nij,pj->npi", theta.astype(np.float64), homo)
    return grid.reshape(theta.shape[0], *dims, len(dims)).astype(theta.dtype)


# --------------------------------------------------------------------------- RoiAlign


def _roi_axis(
    start: float, bin_size: float, pooled: int, grid: int, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps along one axis for the sample points of every bin: low, high, wlow, whigh, valid."""
    ph = np.arange(pooled)[:, None]
    i = np.arange(grid)[None, :]
    pos = (start + ph * bin_size + (i + 0.5) * bin_size / grid).ravel()
    valid = (pos >= -1.0) & (pos <= size)
    pos = np.maximum(pos, 0.0)
    low = pos.astype(np.int64)
    at_end = low >= size - 1
    low = np.where(at_end, size - 1, low)
    high = np.where(at_end, size - 1, low + 1)
    pos = np.where(at_end, low.astype(np.float64), pos)
    frac = pos - low
    return low, high, (1 - frac) * valid, frac * valid, valid


@kernel("RoiAlign")
def roi_align(
    x: np.ndarray,
    rois: np.ndarray,
    batch_indices: np.ndarray,
    *,
    coordinate_transformation_mode: str = "half_pixel",
    mode: str = "avg",
    output_height: int = 1,
    output_width: int = 1,
    sampling_ratio: int = 0,
    spatial_scale: float = 1.0,
) -> np.ndarray:
    """ONNX RoiAlign-22: average (or max) of bilinearly sampled points in each output bin."""
    _, c, h, w = x.shape
    half = coordinate_transformation_mode == "half_pixel"
    off = 0.5 if half else 0.0
    out = np.zeros((rois.shape[0], c, output_height, output_width), dtype=np.float64)
    xd = x.astype(np.float64)
    for r in range(rois.shape[0]):
        x1, y1, x2, y2 = (float(v) * spatial_scale - off for v in rois[r])
        rw, rh = x2 - x1, y2 - y1
        if not half:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / output_height, rw / output_width
        gh = sampling_ratio if sampling_ratio > 0 else int(np.ceil(rh / output_height))
        gw = sampling_ratio if sampling_ratio > 0 else int(np.ceil(rw / output_width))
        ylo, yhi, wyl, wyh, _ = _roi_axis(y1, bh, output_height, gh, h)
        xlo, xhi, wxl, wxh, _ = _roi_axis(x1, bw, output_width, gw, w)
        img = xd[int(batch_indices[r])]
        corners = [
            img[:, ylo[:, None], xlo[None, :]] * (wyl[:, None] * wxl[None, :]),
            img[:, ylo[:, None], xhi[None, :]] * (wyl[:, None] * wxh[None, :]),
            img[:, yhi[:, None], xlo[None, :]] * (wyh[:, None] * wxl[None, :]),
            img[:, yhi[:, None], xhi[None, :]] * (wyh[:, None] * wxh[None, :]),
        ]
        if mode == "avg":
            s = sum(corners).reshape(c, output_height, gh, output_width, gw)
            out[r] = s.sum(axis=(2, 4)) / max(gh * gw, 1)
        else:
            s = np.maximum.reduce(corners).reshape(c, output_height, gh, output_width, gw)
            out[r] = s.max(axis=(2, 4))
    return out.astype(x.dtype)


# --------------------------------------------------------------------------- NonMaxSuppression


@kernel("NonMaxSuppression")
def non_max_suppression(
    boxes: np.ndarray,
    scores: np.ndarray,
    max_output_boxes_per_class: np.ndarray | None = None,
    iou_threshold: np.ndarray | None = None,
    score_threshold: np.ndarray | None = None,
    *,
    center_point_box: int = 0,
) -> np.ndarray:
    """ONNX NonMaxSuppression-11: greedy per (batch, class) selection by descending score,
    dropping boxes whose IoU with a kept box exceeds the threshold; returns [k, 3] int64 indices."""
    max_out = (
        0
        if max_output_boxes_per_class is None
        else int(np.asarray(max_output_boxes_per_class).ravel()[0])
    )
    iou_t = 0.0 if iou_threshold is None else float(np.asarray(iou_threshold).ravel()[0])
    score_t = None if score_threshold is None else float(np.asarray(score_threshold).ravel()[0])
    b = boxes.astype(np.float64)
    if center_point_box:
        cx, cy, bw, bh = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
        y1, x1, y2, x2 = cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2
    else:
        y1 = np.minimum(b[..., 0], b[..., 2])
        y2 = np.maximum(b[..., 0], b[..., 2])
        x1 = np.minimum(b[..., 1], b[..., 3])
        x2 = np.maximum(b[..., 1], b[..., 3])
    area = (y2 - y1) * (x2 - x1)
    selected: list[tuple[int, int, int]] = []
    if max_out <= 0:
        return np.zeros((0, 3), dtype=np.int64)
    for bi in range(scores.shape[0]):
        for ci in range(scores.shape[1]):
            s = scores[bi, ci]
            order = np.argsort(-s, kind="stable")
            if score_t is not None:
                order = order[s[order] > score_t]
            kept: list[int] = []
            for i in order:
                if kept:
                    k = np.asarray(kept)
                    iw = np.minimum(x2[bi, k], x2[bi, i]) - np.maximum(x1[bi, k], x1[bi, i])
                    ih = np.minimum(y2[bi, k], y2[bi, i]) - np.maximum(y1[bi, k], y1[bi, i])
                    inter = np.maximum(iw, 0) * np.maximum(ih, 0)
                    union = area[bi, k] + area[bi, i] - inter
                    with np.errstate(divide="ignore", invalid="ignore"):
                        iou = np.where(union > 0, inter / union, 0.0)
                    if np.any(iou > iou_t):
                        continue
                kept.append(int(i))
                if len(kept) >= max_out:
                    break
            selected.extend((bi, ci, i) for i in kept)
    return np.asarray(selected, dtype=np.int64).reshape(-1, 3)


# --------------------------------------------------------------------------- CenterCropPad


@kernel("CenterCropPad")
def center_crop_pad(
    x: np.ndarray, shape: np.ndarray, *, axes: list[int] | None = None
) -> np.ndarray:
    """ONNX CenterCropPad-18: center-crop or zero-pad each of ``axes`` to ``shape``."""
    r = x.ndim
    ax = [a + r if a < 0 else a for a in axes] if axes is not None else list(range(r))
    src = [slice(None)] * r
    dst = [slice(None)] * r
    new_shape = list(x.shape)
    for a, target in zip(ax, (int(v) for v in shape)):
        dim = x.shape[a]
        new_shape[a] = target
        if target < dim:
            start = (dim - target) // 2
            src[a] = slice(start, start + target)
        elif target > dim:
            start = (target - dim) // 2
            dst[a] = slice(start, start + dim)
    out = np.zeros(new_shape, dtype=x.dtype)
    out[tuple(dst)] = x[tuple(src)]
    return out
