"""Weight-compression MIL ops (``constexpr_*``): values known at load.

Palettized and sparse weights whose inputs are plain constants stay compressed: the
row emits an input-less ``CoreMLLutToDense`` / ``CoreMLSparseToDense`` node holding the
packed data (the executor never folds input-less nodes), unless the model is loaded
with densified weights. Quantized weights and chains of compression ops are
decompressed at load.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloader.errors import ModelFormatError
from modelloader.importers.coreml.mlprogram import MILContext, mil_op
from modelloader.kernels.cpu.coreml_ops import D, lut_decode, unpack_bits


def _axis_shape(v: np.ndarray, rank: int, axis: int) -> np.ndarray:
    if v.ndim == 0 or v.size == 1:
        return v.reshape(())
    shape = [1] * rank
    shape[axis % rank] = -1
    return v.reshape(shape)


def _expand_blocks(v: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Repeats a block-grid array (same rank as ``shape``) up to ``shape``."""
    if v.ndim != len(shape):
        raise ModelFormatError(f"block parameters of rank {v.ndim} for a rank-{len(shape)} weight")
    for axis, (n, b) in enumerate(zip(shape, v.shape)):
        if b == 0 or n % b:
            raise ModelFormatError(f"weight dim {n} is not a multiple of its {b} blocks")
        if b != n:
            v = np.repeat(v, n // b, axis=axis)
    return v


def _float_out(ctx: MILContext, op: Any, i: int = 0) -> np.dtype:
    return ctx.dtype_of(op.outputs[i].name) or np.dtype(np.float32)


def _set(ctx: MILContext, op: Any, value: np.ndarray, i: int = 0) -> None:
    ctx.set_const(op.outputs[i].name, value)


@mil_op("constexpr_affine_dequantize")
def affine_dequantize(op: Any, ctx: MILContext) -> None:
    """scale * (q - zero_point) along ``axis`` (iOS16)."""
    q = np.asarray(ctx.need(op, "quantized_data"))
    zp = np.asarray(ctx.need(op, "zero_point"))
    scale = np.asarray(ctx.need(op, "scale"))
    axis = int(ctx.const(op, "axis", 0))
    out = (q.astype(np.float32) - _axis_shape(zp, q.ndim, axis).astype(np.float32)) * _axis_shape(
        scale, q.ndim, axis
    ).astype(np.float32)
    _set(ctx, op, out.astype(_float_out(ctx, op)))


@mil_op("constexpr_blockwise_shift_scale")
def blockwise_shift_scale(op: Any, ctx: MILContext) -> None:
    """scale * (data - offset), ``scale``/``offset`` one entry per block (iOS18)."""
    data = np.asarray(ctx.need(op, "data"))
    scale = _expand_blocks(np.asarray(ctx.need(op, "scale")), data.shape)
    out = data.astype(np.float32)
    off = ctx.const(op, "offset")
    if off is not None:
        out = out - _expand_blocks(np.asarray(off), data.shape).astype(np.float32)
    _set(ctx, op, (out * scale.astype(np.float32)).astype(_float_out(ctx, op)))


@mil_op("constexpr_cast")
def constexpr_cast(op: Any, ctx: MILContext) -> None:
    _set(ctx, op, np.asarray(ctx.need(op, "source_val")).astype(_float_out(ctx, op)))


def _raw_input(ctx: MILContext, op: Any, key: str) -> tuple[np.ndarray, int] | None:
    """(packed bytes, bits) of an immediate/blob sub-byte input, for keeping it compressed."""
    b = ctx.binding(op, key)
    if b is None or b.WhichOneof("binding") != "value":
        return None
    from modelloader.importers.coreml.mlprogram import _SUBBYTE, dtype_name

    v = b.value
    name = dtype_name(v.type.tensorType.dataType)
    bits = _SUBBYTE[name][0] if name in _SUBBYTE else 8 if name == "UINT8" else 0
    if not bits or (name in _SUBBYTE and _SUBBYTE[name][1]):
        return None
    if v.WhichOneof("value") == "blobFileValue":
        assert ctx.file is not None
        raw = ctx.file.blob(v.blobFileValue.fileName, int(v.blobFileValue.offset))
    elif v.immediateValue.tensor.WhichOneof("value") == "bytes":
        raw = memoryview(v.immediateValue.tensor.bytes.values)
    else:
        return None
    return np.frombuffer(raw, np.uint8), bits


@mil_op("constexpr_lut_to_dense")
def lut_to_dense(op: Any, ctx: MILContext) -> None:
    """iOS18: indices (uintN) + lut [*blocks, 2**N, vector]; iOS16: lut [2**N] + packed bytes + shape."""
    lut = np.asarray(ctx.need(op, "lut"))
    out_name = op.outputs[0].name
    dt = _float_out(ctx, op)
    if ctx.has(op, "shape"):  # iOS16 form
        shape = [int(s) for s in np.asarray(ctx.need(op, "shape")).reshape(-1)]
        nbits = int(np.log2(lut.size))
        packed = np.asarray(ctx.need(op, "indices"), np.uint8)
        lut6 = lut.reshape((1,) * len(shape) + (lut.size, 1))
        if not ctx.densify:
            _keep(
                ctx,
                out_name,
                "palettized",
                "CoreMLLutToDense",
                indices=packed,
                nbits=nbits,
                shape=shape,
                lut=lut6.astype(dt),
                vector_axis=0,
            )
            return
        idx = unpack_bits(packed, nbits, int(np.prod(shape))).reshape(shape)
        _set(ctx, op, lut_decode(idx, lut6).astype(dt))
        return
    vaxis = ctx.const(op, "vector_axis")
    raw = None if ctx.densify else _raw_input(ctx, op, "indices")
    if raw is not None:
        shape = list(ctx.shape_of(out_name) or ())
        if shape and all(isinstance(d, int) for d in shape):
            packed, nbits = raw
            _keep(
                ctx,
                out_name,
                "palettized",
                "CoreMLLutToDense",
                indices=packed,
                nbits=nbits,
                shape=shape,
                lut=lut.astype(dt),
                vector_axis=int(vaxis or 0) % len(shape),
            )
            return
    idx = np.asarray(ctx.need(op, "indices"))
    _set(ctx, op, lut_decode(idx, lut, None if vaxis is None else int(vaxis)).astype(dt))


def _keep(ctx: MILContext, name: str, kind: str, kernel: str, **attrs: Any) -> None:
    ctx.node(kernel, [], [name], D, **attrs)
    ctx.compressed[name] = kind


def _scatter(mask: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.zeros(mask.shape, values.dtype)
    out[mask.astype(bool)] = values.reshape(-1)[: int(mask.astype(bool).sum())]
    return out


@mil_op("constexpr_sparse_to_dense")
def sparse_to_dense(op: Any, ctx: MILContext) -> None:
    """iOS18: nonzero_data + mask (uint1, dense shape); iOS16: packed mask bytes + shape."""
    out_name = op.outputs[0].name
    dt = _float_out(ctx, op)
    values = ctx.const(op, "nonzero_data")
    if values is None:
        raise ModelFormatError("constexpr_sparse_to_dense: nonzero_data must be constant")
    values = np.asarray(values)
    if ctx.has(op, "shape"):
        shape = [int(s) for s in np.asarray(ctx.need(op, "shape")).reshape(-1)]
        packed = np.asarray(ctx.need(op, "mask"), np.uint8)
    else:
        raw = _raw_input(ctx, op, "mask")
        shape = list(ctx.shape_of(out_name) or ())
        if raw is not None and raw[1] == 1 and shape and all(isinstance(d, int) for d in shape):
            packed = raw[0]
        else:
            mask = np.asarray(ctx.need(op, "mask"))
            _set(ctx, op, _scatter(mask, values).astype(dt))
            return
    if ctx.densify or values.dtype.kind != "f":
        n = int(np.prod(shape))
        mask = unpack_bits(packed, 1, n).reshape(shape)
        _set(ctx, op, _scatter(mask, values).astype(dt))
        return
    _keep(
        ctx,
        out_name,
        "sparse",
        "CoreMLSparseToDense",
        mask=packed,
        values=values.astype(dt),
        shape=shape,
    )


@mil_op("constexpr_lut_to_sparse")
def lut_to_sparse(op: Any, ctx: MILContext) -> None:
    """(indices_mask, indices_nonzero, lut) -> (output_mask, output_nonzero_data)."""
    mask = np.asarray(ctx.need(op, "indices_mask")).astype(bool)
    nz = np.asarray(ctx.need(op, "indices_nonzero_data"))
    lut = np.asarray(ctx.need(op, "lut"))
    vaxis = ctx.const(op, "vector_axis")
    vsize = lut.shape[-1]
    if vsize != 1:
        raise ModelFormatError("constexpr_lut_to_sparse with vector palettes is not supported")
    dense_idx = _scatter(mask, nz)
    dense = lut_decode(dense_idx, lut, None if vaxis is None else int(vaxis))
    _set(ctx, op, mask.astype(np.uint8), 0)
    _set(ctx, op, dense[mask].astype(_float_out(ctx, op, 1)), 1)


@mil_op("constexpr_sparse_blockwise_shift_scale")
def sparse_shift_scale(op: Any, ctx: MILContext) -> None:
    """(data_mask, nonzero_data, scale, offset) -> (output_mask, output_nonzero_data)."""
    mask = np.asarray(ctx.need(op, "data_mask")).astype(bool)
    nz = np.asarray(ctx.need(op, "nonzero_data"))
    dense = _scatter(mask, nz).astype(np.float32)
    scale = _expand_blocks(np.asarray(ctx.need(op, "scale")), mask.shape).astype(np.float32)
    off = ctx.const(op, "offset")
    if off is not None:
        dense = dense - _expand_blocks(np.asarray(off), mask.shape).astype(np.float32)
    _set(ctx, op, mask.astype(np.uint8), 0)
    _set(ctx, op, (dense * scale)[mask].astype(_float_out(ctx, op, 1)), 1)
