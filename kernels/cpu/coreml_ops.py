"""Kernels for CoreML weight decompression (domain ``modelloader``).

Palettized (look-up table) and bitmask-sparse weights stay compressed in memory: the
importer emits these as input-less nodes carrying the packed arrays as attributes,
so the executor never folds them and each run decompresses into a fresh array. The
functions below are also what the importer uses when it must densify at load.
"""

from __future__ import annotations

import numpy as np

from modelloader.kernels.cpu._registry import kernel

D = "modelloader"


def unpack_bits(packed: np.ndarray, nbits: int, count: int, signed: bool = False) -> np.ndarray:
    """``count`` ``nbits``-wide values packed LSB-first into bytes (CoreML's sub-byte layout)."""
    raw = np.frombuffer(np.ascontiguousarray(packed).tobytes(), np.uint8)
    if nbits == 8:
        vals = raw[:count]
        return vals.view(np.int8) if signed else vals
    if count * nbits > raw.size * 8:
        raise ValueError(f"{raw.size} bytes hold fewer than {count} {nbits}-bit values")
    bits = np.unpackbits(raw, bitorder="little")[: count * nbits].reshape(count, nbits)
    weights = (1 << np.arange(nbits, dtype=np.uint16)).astype(np.uint16)
    vals = (bits.astype(np.uint16) @ weights).astype(np.uint8)
    if signed:
        return np.where(
            vals >= 1 << (nbits - 1), vals.astype(np.int16) - (1 << nbits), vals
        ).astype(np.int8)
    return vals


def block_index(shape: tuple[int, ...], blocks: tuple[int, ...]) -> np.ndarray:
    """For each element of ``shape``, the row-major index of its block in a ``blocks`` grid."""
    idx = np.zeros((1,) * len(shape), np.int64)
    stride = 1
    for axis in reversed(range(len(shape))):
        size, nb = shape[axis], blocks[axis]
        per = size // nb
        r = [1] * len(shape)
        r[axis] = size
        idx = idx + (np.arange(size, dtype=np.int64) // per * stride).reshape(r)
        stride *= nb
    return np.broadcast_to(idx, shape)


def lut_decode(indices: np.ndarray, lut: np.ndarray, vector_axis: int | None = None) -> np.ndarray:
    """iOS18 ``constexpr_lut_to_dense``: ``lut`` is [*block grid, 2**nbits, vector size]."""
    rank = indices.ndim
    grid = tuple(lut.shape[:rank])
    entries, vsize = lut.shape[rank], lut.shape[rank + 1]
    blk = block_index(indices.shape, grid)
    flat = lut.reshape(-1, vsize)
    out = flat[blk * entries + indices.astype(np.int64)]  # [*indices.shape, vsize]
    if vsize == 1:
        return out[..., 0]
    axis = vector_axis % rank if vector_axis is not None else 0
    out = np.moveaxis(out, -1, axis + 1)
    shape = list(indices.shape)
    shape[axis] *= vsize
    return out.reshape(shape)


@kernel("CoreMLLutToDense", domain=D)
def lut_to_dense(
    *, indices: np.ndarray, nbits: int, shape: list[int], lut: np.ndarray, vector_axis: int = 0
) -> np.ndarray:
    """Packed ``nbits`` indices (LSB first) -> ``lut`` entries, in the lut's blocks."""
    vsize = lut.shape[-1]
    ishape = list(shape)
    if vsize > 1:
        ishape[vector_axis] //= vsize
    idx = unpack_bits(indices, nbits, int(np.prod(ishape))).reshape(ishape)
    return lut_decode(idx, lut, vector_axis)


@kernel("CoreMLSparseToDense", domain=D)
def sparse_to_dense(*, mask: np.ndarray, values: np.ndarray, shape: list[int]) -> np.ndarray:
    """Bitmask sparse (LSB first, row-major) -> dense, zeros where the mask bit is 0."""
    n = int(np.prod(shape))
    bits = unpack_bits(mask, 1, n).astype(bool)
    out = np.zeros(n, values.dtype)
    out[bits] = values.reshape(-1)[: int(bits.sum())]
    return out.reshape(shape)
