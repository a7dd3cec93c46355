"""Linear quantization kernels: QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear.

Scales and zero points are per-tensor (scalar), per-axis (1-D along ``axis``) or blocked
(same rank as x, repeated ``block_size`` times along ``axis``). Integer targets use
round-half-to-even then saturate; float8/float4 targets use ml_dtypes casts (RNE).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np

from modelloader.buffers import take
from modelloader.kernels.cpu._registry import kernel
from modelloader.kernels.cpu._ufuncs import clip
from modelloader.kernels.cpu.conv import scratch

# TensorProto.DataType -> numpy dtype, for the types these ops produce or compute in
_ONNX_DTYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float32),
    2: np.dtype(np.uint8),
    3: np.dtype(np.int8),
    4: np.dtype(np.uint16),
    5: np.dtype(np.int16),
    6: np.dtype(np.int32),
    10: np.dtype(np.float16),
    11: np.dtype(np.float64),
    16: np.dtype(ml_dtypes.bfloat16),
    17: np.dtype(ml_dtypes.float8_e4m3fn),
    18: np.dtype(ml_dtypes.float8_e4m3fnuz),
    19: np.dtype(ml_dtypes.float8_e5m2),
    20: np.dtype(ml_dtypes.float8_e5m2fnuz),
    21: np.dtype(ml_dtypes.uint4),
    22: np.dtype(ml_dtypes.int4),
    23: np.dtype(ml_dtypes.float4_e2m1fn),
    24: np.dtype(ml_dtypes.float8_e8m0fnu),
    25: np.dtype(ml_dtypes.uint2),
    26: np.dtype(ml_dtypes.int2),
}

_INT_RANGES: dict[np.dtype, tuple[int, int]] = {
    np.dtype(np.uint8): (0, 255),
    np.dtype(np.int8): (-128, 127),
    np.dtype(np.uint16): (0, 65535),
    np.dtype(np.int16): (-32768, 32767),
    np.dtype(ml_dtypes.uint4): (0, 15),
    np.dtype(ml_dtypes.int4): (-8, 7),
    np.dtype(ml_dtypes.uint2): (0, 3),
    np.dtype(ml_dtypes.int2): (-2, 1),
}


def onnx_dtype(code: int) -> np.dtype:
    """numpy dtype for an ONNX TensorProto.DataType code."""
    try:
        return _ONNX_DTYPES[int(code)]
    except KeyError:
        raise ValueError(f"unsupported ONNX data type {code}") from None


def _expand(value: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int) -> np.ndarray:
    """Makes a scale/zero point broadcastable to ``shape`` (per-tensor, per-axis or blocked)."""
    value = np.asarray(value)
    if value.ndim == 0 or value.size == 1 and not block_size:
        return value.reshape(())
    axis = axis % len(shape)
    if not block_size:
        dims = [1] * len(shape)
        dims[axis] = value.size
        return value.reshape(dims)
    value = np.repeat(value, block_size, axis=axis)
    if value.shape[axis] != shape[axis]:
        value = value.take(np.arange(shape[axis]), axis=axis)
    return value


@kernel("QuantizeLinear")
def quantize_linear(
    x: np.ndarray,
    y_scale: np.ndarray,
    y_zero_point: np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    output_dtype: int = 0,
    precision: int = 0,
    saturate: int = 1,
) -> np.ndarray:
    """ONNX QuantizeLinear-25: y = saturate(round_half_even(x / y_scale) + y_zero_point)."""
    if y_zero_point is not None:
        out_dt = y_zero_point.dtype
    elif output_dtype:
        out_dt = onnx_dtype(output_dtype)
    else:
        out_dt = np.dtype(np.uint8)
    scale = _expand(y_scale, x.shape, axis, block_size)
    # the division runs in the precision attribute's type, else in the scale's type
    pdt = onnx_dtype(precision) if precision else scale.dtype
    if pdt.itemsize < 4 or pdt.kind != "f":
        # float16/bfloat16 division: compute in float32 and round to the precision type
        q = (x.astype(np.float32) / scale.astype(np.float32)).astype(pdt).astype(np.float32)
    else:
        q = x.astype(pdt, copy=False) / scale.astype(pdt, copy=False)
    zp = None if y_zero_point is None else _expand(y_zero_point, x.shape, axis, block_size)
    if out_dt in _INT_RANGES:
        lo, hi = _INT_RANGES[out_dt]
        q = np.rint(q)
        if zp is not None:
            q = q + zp.astype(np.int64).astype(q.dtype)
        return clip(q, lo, hi).astype(np.int32).astype(out_dt)
    if zp is not None:
        q = q + zp.astype(np.float32)
    q = q.astype(np.float32, copy=False)
    if saturate or out_dt == np.dtype(ml_dtypes.float4_e2m1fn):
        fi = ml_dtypes.finfo(out_dt)
        q = np.clip(q, np.float32(fi.min), np.float32(fi.max))
    return q.astype(out_dt)


@kernel("DequantizeLinear")
def dequantize_linear(
    x: np.ndarray,
    x_scale: np.ndarray,
    x_zero_point: np.ndarray | None = None,
    *,
    axis: int = 1,
    block_size: int = 0,
    output_dtype: int = 0,
) -> np.ndarray:
    """ONNX DequantizeLinear-25: y = (x - x_zero_point) * x_scale, in output_dtype or x_scale's type."""
    out_dt = onnx_dtype(output_dtype) if output_dtype else np.asarray(x_scale).dtype
    scale = _expand(x_scale, x.shape, axis, block_size)
    if x.dtype.kind in "iu" or x.dtype in _INT_RANGES:
        xi = x.astype(np.int64)
        if x_zero_point is not None:
            xi = xi - _expand(x_zero_point, x.shape, axis, block_size).astype(np.int64)
        dx = xi.astype(np.float32)
    else:
        dx = x.astype(np.float32)
        if x_zero_point is not None:
            dx = dx - _expand(x_zero_point, x.shape, axis, block_size).astype(np.float32)
    cd = out_dt if out_dt in (np.float32, np.float64) else np.dtype(np.float32)
    y = dx.astype(cd, copy=False) * scale.astype(cd)
    return np.asarray(y).astype(out_dt, copy=False)


@kernel("DynamicQuantizeLinear")
def dynamic_quantize_linear(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ONNX DynamicQuantizeLinear-11: uint8 quantization with scale/zero point from x's range
    (range widened to include 0)."""
    xf = x.astype(np.float32, copy=False)
    lo = np.float32(min(0.0, float(xf.min()) if xf.size else 0.0))
    hi = np.float32(max(0.0, float(xf.max()) if xf.size else 0.0))
    scale = np.float32((hi - lo) / np.float32(255))
    if scale == 0:
        return np.zeros(x.shape, np.uint8), np.asarray(scale), np.asarray(np.uint8(0))
    zp = np.clip(np.rint(np.float32(0) - lo / scale), 0, 255)
    # saturate(rint(x / scale) + zp), in place in one work buffer
    t = np.divide(xf, scale, out=scratch("dql", xf.shape, np.float32))
    np.rint(t, out=t)
    t += zp
    clip(t, np.float32(0), np.float32(255), out=t)
    y = take(x.shape, np.uint8)
    np.copyto(y, t, casting="unsafe")
    return y, np.asarray(scale, np.float32), np.asarray(zp.astype(np.uint8))
