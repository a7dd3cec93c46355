"""Tensor codecs of the compressed container and their codec chains (docs/container.md).

A tensor entry is ``{"dtype", "shape", "codec"}``; ``codec["kind"]`` is one of

* ``raw``: the little-endian array bytes.
* ``float16``: a float tensor stored as IEEE half.
* ``affine_int8``: ``x = scale * (q - zero_point)`` with ``q`` int8 (per tensor).
* ``palette``: weight sharing (Deep Compression section 3): a float32 ``codebook`` blob of
  at most ``2**bits`` entries and an index *stream* of one index per element.
* ``sparse``: the non-zeros of the flattened tensor as relative positions (Deep Compression
  section 2: each index is the gap to the previous entry, stored in ``index_bits`` bits as
  ``gap - 1``; a gap wider than ``2**index_bits`` gets filler zero entries) plus a nested
  codec (raw / float16 / palette) for the ``entries`` values, fillers included.

An index stream is ``packed`` (fixed ``bits`` per symbol, MSB-first) or ``huffman``
(``huffman.py``). Blob references are ``{"offset", "length"}`` dicts under a ``blob`` key,
relative to the container's data section. Decoders validate every field they read and
raise the typed errors of ``modelloader.errors``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelloader.compress import huffman
from modelloader.errors import (
    CodebookError,
    DecodedLengthError,
    HeaderSchemaError,
    SizeCapError,
    SparseIndexError,
)

#: dtypes a container tensor may have (name -> numpy dtype)
DTYPES: dict[str, np.dtype] = {
    np.dtype(t).name: np.dtype(t)
    for t in (
        np.float32,
        np.float64,
        np.float16,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.bool_,
    )
}
MAX_RANK = 8
MAX_ELEMENTS = 1 << 32
MAX_PALETTE_BITS = 8
MAX_INDEX_BITS = 16

#: ``read(ref) -> bytes`` of one blob, range-checked by the container
BlobReader = Callable[[dict], memoryview]
#: ``write(data) -> ref``
BlobWriter = Callable[[bytes], dict]


# --------------------------------------------------------------------------- header field checks


def field(spec: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    """``spec[key]`` checked to be of ``kind`` (bool is never an int here)."""
    if not isinstance(spec, dict):
        raise HeaderSchemaError(f"{where}: expected a JSON object, got {type(spec).__name__}")
    if key not in spec:
        raise HeaderSchemaError(f"{where}: missing field '{key}'")
    v = spec[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise HeaderSchemaError(f"{where}: field '{key}' must be {kind}, got {type(v).__name__}")
    return v


def int_field(spec: Any, key: str, lo: int, hi: int, where: str) -> int:
    v = field(spec, key, int, where)
    if not lo <= v <= hi:
        raise SizeCapError(f"{where}: '{key}' = {v} outside [{lo}, {hi}]")
    return v


def int_list(values: list) -> bool:
    """Whether every element of a header list is a plain int (a JSON bool is not)."""
    return set(map(type, values)) <= {int}


def only_keys(spec: dict, keys: set[str], where: str) -> None:
    extra = set(spec) - keys
    if extra:
        raise HeaderSchemaError(f"{where}: unknown field(s) {sorted(extra)}")


def check_dtype_shape(entry: Any, where: str) -> tuple[np.dtype, tuple[int, ...]]:
    name = field(entry, "dtype", str, where)
    if name not in DTYPES:
        raise HeaderSchemaError(f"{where}: dtype '{name}' is not one of {sorted(DTYPES)}")
    shape = field(entry, "shape", list, where)
    if len(shape) > MAX_RANK or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < MAX_ELEMENTS for d in shape
    ):
        raise SizeCapError(f"{where}: shape {shape!r} is not a list of <= {MAX_RANK} sizes")
    if math.prod(shape) >= MAX_ELEMENTS:
        raise SizeCapError(f"{where}: {math.prod(shape)} elements exceed the cap {MAX_ELEMENTS}")
    return DTYPES[name], tuple(shape)


# --------------------------------------------------------------------------- bit packing


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """``values`` as ``bits``-bit unsigned integers, MSB-first, zero-padded to a byte."""
    v = np.asarray(values, np.int64).reshape(-1)
    if bits == 8:
        return v.astype(np.uint8).tobytes()
    out, carry, step = [], np.zeros(0, np.uint8), 1 << 20
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    for i in range(0, v.size, step):
        stream = np.concatenate(
            [carry, ((v[i : i + step, None] >> shifts) & 1).astype(np.uint8).ravel()]
        )
        cut = stream.size - stream.size % 8
        out.append(np.packbits(stream[:cut]).tobytes())
        carry = stream[cut:]
    if carry.size:
        out.append(np.packbits(carry).tobytes())
    return b"".join(out)


def unpack_bits(data: memoryview | bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of ``pack_bits`` (uint16), vectorised through a 32-bit window per value."""
    raw = np.frombuffer(data, np.uint8)
    if raw.size != -(-count * bits // 8):
        raise DecodedLengthError(
            f"{bits}-bit stream of {count} values needs {-(-count * bits // 8)} bytes, has {raw.size}"
        )
    if bits == 8:
        return raw.astype(np.uint16)
    pad = np.zeros(raw.size + 4, np.uint32)
    pad[: raw.size] = raw
    win = pad[:-3] << 24 | pad[1:-2] << 16 | pad[2:-1] << 8 | pad[3:]
    out = np.empty(count, np.uint16)
    step = 1 << 22
    for i in range(0, count, step):
        pos = np.arange(i, min(count, i + step), dtype=np.int64) * bits
        w = win[pos >> 3] << (pos & 7).astype(np.uint32)
        out[i : i + step] = w >> np.uint32(32 - bits)
    return out


# --------------------------------------------------------------------------- index streams


def encode_stream(symbols: np.ndarray, bits: int, use_huffman: bool, write: BlobWriter) -> dict:
    sym = np.asarray(symbols).reshape(-1)
    if use_huffman:
        h = huffman.encode(sym, 1 << bits)
        return {
            "kind": "huffman",
            "alphabet": 1 << bits,
            "count": h.count,
            "chunk": h.chunk,
            "total_bits": h.total_bits,
            "lengths": h.lengths,
            "blob": write(h.blob),
        }
    return {
        "kind": "packed",
        "bits": bits,
        "count": int(sym.size),
        "blob": write(pack_bits(sym, bits)),
    }


def decode_stream(spec: Any, bits: int, count: int, read: BlobReader, where: str) -> np.ndarray:
    """Decodes ``count`` symbols of an index stream whose alphabet must be ``2**bits``."""
    kind = field(spec, "kind", str, where)
    n = int_field(spec, "count", 0, MAX_ELEMENTS - 1, where)
    if n != count:
        raise DecodedLengthError(f"{where}: stream declares {n} symbols, the tensor needs {count}")
    if kind == "packed":
        only_keys(spec, {"kind", "bits", "count", "blob"}, where)
        if int_field(spec, "bits", 1, MAX_INDEX_BITS, where) != bits:
            raise CodebookError(f"{where}: stream is {spec['bits']}-bit, its codec is {bits}-bit")
        return unpack_bits(read(spec["blob"]), bits, count)
    if kind == "huffman":
        only_keys(
            spec, {"kind", "alphabet", "count", "chunk", "total_bits", "lengths", "blob"}, where
        )
        if int_field(spec, "alphabet", 1, 1 << MAX_INDEX_BITS, where) != 1 << bits:
            raise CodebookError(f"{where}: Huffman alphabet {spec['alphabet']} != 2**{bits}")
        lengths = field(spec, "lengths", list, where)
        if not int_list(lengths):
            raise HeaderSchemaError(f"{where}: Huffman 'lengths' must be integers")
        pre = getattr(read, "decoded", {}).get(id(spec))
        if pre is not None and pre.size == count:  # batch-decoded by the container reader
            return pre
        return huffman.decode(
            read(spec["blob"]),
            count=count,
            lengths=lengths,
            alphabet=1 << bits,
            chunk=int_field(spec, "chunk", 1, huffman.MAX_CHUNK, where),
            total_bits=int_field(spec, "total_bits", 0, (1 << 31) - 1, where),
        )
    raise HeaderSchemaError(f"{where}: unknown stream kind '{kind}'")


# --------------------------------------------------------------------------- palettes


def kmeans_codebook(values: np.ndarray, k: int, iters: int = 30) -> np.ndarray:
    """1-D k-means with linear initialisation (Deep Compression section 3.2), float32.

    Tensors with at most ``k`` distinct values get exactly those values. Runs on a sorted
    copy with ``searchsorted`` so each iteration is O(n) after one O(n log n) sort.
    """
    v = np.sort(np.asarray(values, np.float32).reshape(-1))
    uniq = np.unique(v)
    if uniq.size <= k:
        return uniq.astype(np.float32)
    if v.size > 1 << 20:  # a strided sample fits centroids as well as the whole tensor
        v = v[:: v.size >> 20]
    c = np.linspace(v[0], v[-1], k, dtype=np.float64)
    cs = np.concatenate([[0.0], np.cumsum(v, dtype=np.float64)])
    for _ in range(iters):
        edges = np.searchsorted(v, (c[1:] + c[:-1]) / 2)
        lo = np.concatenate([[0], edges])
        hi = np.concatenate([edges, [v.size]])
        cnt = hi - lo
        new = np.where(cnt > 0, (cs[hi] - cs[lo]) / np.maximum(cnt, 1), c)
        if np.allclose(new, c, rtol=0, atol=1e-9):
            break
        c = np.sort(new)
    return np.unique(c.astype(np.float32))


def assign(values: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Index of the nearest codebook entry for each value (codebook sorted ascending)."""
    v = np.asarray(values, np.float32).reshape(-1)
    if codebook.size == 1:
        return np.zeros(v.size, np.int64)
    mid = (codebook[1:] + codebook[:-1]) / 2
    return np.searchsorted(mid, v, side="left")


def encode_palette(
    values: np.ndarray,
    bits: int,
    use_huffman: bool,
    write: BlobWriter,
    *,
    codebook: np.ndarray | None = None,
) -> dict:
    """Palette codec of ``values`` (any shape): k-means ``codebook`` unless given."""
    if codebook is None:
        codebook = kmeans_codebook(values, 1 << bits)
    codebook = np.sort(np.asarray(codebook, np.float32))
    idx = assign(values, codebook)
    return {
        "kind": "palette",
        "bits": bits,
        "codebook": {
            "entries": int(codebook.size),
            "blob": write(codebook.astype("<f4").tobytes()),
        },
        "indices": encode_stream(idx, bits, use_huffman, write),
    }


def decode_palette(
    spec: dict, count: int, dtype: np.dtype, read: BlobReader, where: str
) -> np.ndarray:
    only_keys(spec, {"kind", "bits", "codebook", "indices"}, where)
    if dtype.kind != "f":
        raise CodebookError(f"{where}: a palette needs a float tensor, not {dtype}")
    bits = int_field(spec, "bits", 1, MAX_PALETTE_BITS, where)
    cb = field(spec, "codebook", dict, where)
    only_keys(cb, {"entries", "blob"}, where + ".codebook")
    k = int_field(cb, "entries", 1, 1 << MAX_PALETTE_BITS, where + ".codebook")
    if k > 1 << bits:
        raise CodebookError(f"{where}: {k} codebook entries do not fit {bits}-bit indices")
    raw = read(cb["blob"])
    if len(raw) != 4 * k:
        raise CodebookError(f"{where}: codebook blob is {len(raw)} bytes, {k} float32 need {4 * k}")
    codebook = np.frombuffer(raw, "<f4").astype(dtype)
    idx = decode_stream(spec.get("indices"), bits, count, read, where + ".indices")
    if idx.size and int(idx.max()) >= k:
        raise CodebookError(f"{where}: index {int(idx.max())} beyond the {k}-entry codebook")
    return codebook[idx]


# --------------------------------------------------------------------------- sparse positions


def relative_positions(flat_nonzero: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """(gap - 1 symbols, entry positions) with filler entries for gaps over ``2**index_bits``."""
    pos = np.asarray(flat_nonzero, np.int64)
    span = 1 << index_bits
    gaps = np.diff(pos, prepend=-1)
    extra = (gaps - 1) // span  # fillers before each real entry
    total = pos.size + int(extra.sum())
    out_pos = np.empty(total, np.int64)
    real = np.arange(pos.size) + np.cumsum(extra)
    out_pos[real] = pos
    if total > pos.size:
        is_filler = np.ones(total, bool)
        is_filler[real] = False
        # filler j before real entry i sits at prev + span * (j + 1)
        fill = np.flatnonzero(is_filler)
        owner = np.searchsorted(real, fill)  # the real entry each filler precedes
        prev = np.where(owner > 0, pos[np.maximum(owner - 1, 0)], -1)
        rank = fill - (real[owner] - extra[owner])
        out_pos[fill] = prev + span * (rank + 1)
    sym = np.diff(out_pos, prepend=-1) - 1
    return sym, out_pos


def best_index_bits(
    flat_nonzero: np.ndarray,
    value_bits: float,
    lo: int = 2,
    hi: int = 8,
    *,
    entropy_coded: bool = False,
) -> int:
    """The relative-index width minimising the stored bits of positions and values.

    Fixed width: (entries incl. fillers) * (index + value bits). Entropy coded (Huffman on
    both streams): the index stream costs its empirical entropy, so wide indices (few
    fillers) win unless the gaps are short; each filler still costs an index and a value.
    """
    gaps = np.diff(np.asarray(flat_nonzero, np.int64), prepend=-1)
    best, cost = hi, math.inf
    hist = np.bincount(gaps - 1) if entropy_coded and gaps.size else None
    for b in range(lo, hi + 1):
        fillers = int(((gaps - 1) >> b).sum())
        entries = gaps.size + fillers
        if hist is not None:
            # symbols: gap - 1 mod 2**b for real entries, 2**b - 1 for each filler
            span = 1 << b
            sym = np.bincount(np.arange(hist.size) & (span - 1), weights=hist, minlength=span)
            sym[span - 1] += fillers
            q = sym[sym > 0] / entries
            c = entries * float(-(q * np.log2(q)).sum()) + fillers * value_bits
        else:
            c = entries * (b + value_bits)
        if c < cost:
            best, cost = b, c
    return best


def encode_sparse(
    x: np.ndarray,
    *,
    index_bits: int | None,
    values: Callable[[np.ndarray], dict],
    use_huffman: bool,
    write: BlobWriter,
    value_bits: float = 32,
) -> dict:
    """Sparse codec of ``x``: relative positions of its non-zeros + ``values(entries)``.

    Filler entries carry the value 0.0, so ``values`` must encode exact zeros (a palette
    built over ``entries`` then has 0.0 in its codebook).
    """
    flat = np.ascontiguousarray(x).reshape(-1)
    nz = np.flatnonzero(flat)
    if index_bits is None:
        index_bits = best_index_bits(nz, value_bits)
    sym, pos = relative_positions(nz, index_bits)
    entries = flat[pos]
    return {
        "kind": "sparse",
        "index_bits": index_bits,
        "entries": int(pos.size),
        "positions": encode_stream(sym, index_bits, use_huffman, write),
        "values": values(entries),
    }


def decode_sparse_parts(
    spec: dict, shape: tuple[int, ...], dtype: np.dtype, read: BlobReader, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """(flat positions, values) of the real (non-filler) entries, positions increasing."""
    only_keys(spec, {"kind", "index_bits", "entries", "positions", "values"}, where)
    size = math.prod(shape)
    bits = int_field(spec, "index_bits", 1, MAX_INDEX_BITS, where)
    m = int_field(spec, "entries", 0, MAX_ELEMENTS - 1, where)
    if m > size:
        raise SparseIndexError(f"{where}: {m} entries in a tensor of {size} elements")
    sym = decode_stream(spec.get("positions"), bits, m, read, where + ".positions")
    pos = np.cumsum(sym.astype(np.int64) + 1) - 1
    if m and pos[-1] >= size:
        raise SparseIndexError(f"{where}: relative indices reach {int(pos[-1])}, tensor has {size}")
    vspec = field(spec, "values", dict, where)
    vkind = field(vspec, "kind", str, where + ".values")
    if vkind == "sparse":
        raise HeaderSchemaError(f"{where}: sparse values cannot themselves be sparse")
    vals = decode_codec(vspec, (m,), dtype, read, where + ".values")
    keep = vals != 0
    return pos[keep], vals[keep]


# --------------------------------------------------------------------------- dispatch


def decode_codec(
    spec: Any, shape: tuple[int, ...], dtype: np.dtype, read: BlobReader, where: str
) -> np.ndarray:
    """Decodes a dense array of ``shape``/``dtype`` from a codec spec."""
    count = math.prod(shape)
    kind = field(spec, "kind", str, where)
    if kind == "raw":
        only_keys(spec, {"kind", "blob"}, where)
        raw = read(spec["blob"])
        if len(raw) != count * dtype.itemsize:
            raise DecodedLengthError(
                f"{where}: {len(raw)} bytes for {count} {dtype} elements ({count * dtype.itemsize})"
            )
        return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    if kind == "float16":
        only_keys(spec, {"kind", "blob"}, where)
        if dtype.kind != "f":
            raise HeaderSchemaError(f"{where}: float16 storage of a {dtype} tensor")
        raw = read(spec["blob"])
        if len(raw) != 2 * count:
            raise DecodedLengthError(f"{where}: {len(raw)} bytes for {count} float16 elements")
        return np.frombuffer(raw, "<f2").astype(dtype).reshape(shape)
    if kind == "affine_int8":
        only_keys(spec, {"kind", "scale", "zero_point", "blob"}, where)
        if dtype.kind != "f":
            raise HeaderSchemaError(f"{where}: affine_int8 storage of a {dtype} tensor")
        scale = field(spec, "scale", (int, float), where)
        if not math.isfinite(scale) or scale <= 0:
            raise HeaderSchemaError(f"{where}: affine_int8 scale must be finite and positive")
        zp = int_field(spec, "zero_point", -128, 127, where)
        raw = read(spec["blob"])
        if len(raw) != count:
            raise DecodedLengthError(f"{where}: {len(raw)} bytes for {count} int8 elements")
        q = np.frombuffer(raw, np.int8).astype(np.float32)
        return ((q - np.float32(zp)) * np.float32(scale)).astype(dtype).reshape(shape)
    if kind == "palette":
        return decode_palette(spec, count, dtype, read, where).reshape(shape)
    if kind == "sparse":
        pos, vals = decode_sparse_parts(spec, shape, dtype, read, where)
        out = np.zeros(count, dtype)
        out[pos] = vals
        return out.reshape(shape)
    raise HeaderSchemaError(f"{where}: unknown codec kind '{kind}'")


def encode_raw(x: np.ndarray, write: BlobWriter) -> dict:
    return {
        "kind": "raw",
        "blob": write(np.ascontiguousarray(x).astype(x.dtype.newbyteorder("<")).tobytes()),
    }


def encode_float16(x: np.ndarray, write: BlobWriter) -> dict:
    return {"kind": "float16", "blob": write(np.asarray(x, "<f2").tobytes())}


def encode_affine_int8(
    x: np.ndarray, write: BlobWriter, *, scale: float | None = None, zero_point: int | None = None
) -> dict:
    """Per-tensor asymmetric int8: the range [min(x, 0), max(x, 0)] maps onto [-128, 127]."""
    v = np.asarray(x, np.float32)
    if scale is None or zero_point is None:
        lo, hi = min(float(v.min(initial=0.0)), 0.0), max(float(v.max(initial=0.0)), 0.0)
        scale = (hi - lo) / 255.0 or 1.0
        zero_point = int(np.clip(round(-128 - lo / scale), -128, 127))
    q = np.clip(np.round(v / np.float32(scale)) + zero_point, -128, 127).astype(np.int8)
    return {
        "kind": "affine_int8",
        "scale": float(scale),
        "zero_point": int(zero_point),
        "blob": write(q.tobytes()),
    }


@dataclass(frozen=True)
class Chain:
    """What one tensor's codec chain is: ``describe`` gives e.g. ``sparse(5)+palette5+huffman``."""

    spec: dict

    def describe(self) -> str:
        return describe(self.spec)


def describe(spec: dict) -> str:
    kind = spec.get("kind")
    if kind == "palette":
        s = f"palette{spec.get('bits')}"
        if spec.get("indices", {}).get("kind") == "huffman":
            s += "+huffman"
        return s
    if kind == "sparse":
        pos = "+huffman" if spec.get("positions", {}).get("kind") == "huffman" else ""
        return f"sparse(idx{spec.get('index_bits')}{pos})+{describe(spec.get('values', {}))}"
    return str(kind)
