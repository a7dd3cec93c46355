"""Every codec chain round-trips random tensors bit-exactly (property-based)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelloader.compress import codecs, huffman

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


class Store:
    def __init__(self) -> None:
        self.blobs: list[bytes] = []

    def write(self, data: bytes) -> dict:
        self.blobs.append(bytes(data))
        return {"offset": len(self.blobs) - 1, "length": len(data)}

    def read(self, ref: dict) -> memoryview:
        return memoryview(self.blobs[ref["offset"]])


shapes = st.lists(st.integers(1, 9), min_size=1, max_size=3).map(tuple)


@st.composite
def palettized(draw: st.DrawFn) -> tuple[np.ndarray, int, float]:
    """A float32 tensor with at most 2**bits distinct values, some exact zeros."""
    bits = draw(st.integers(1, 8))
    shape = draw(shapes)
    k = draw(st.integers(1, 1 << bits))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    book = rng.standard_normal(k).astype(np.float32)
    book[0] = 0  # pruned entries are one of the palette's values
    density = draw(st.floats(0.0, 1.0))
    idx = rng.integers(1 if k > 1 else 0, k, shape)
    idx[rng.random(shape) > density] = 0
    x = book[idx]
    return x, bits, density


@settings(max_examples=150, deadline=None)
@given(palettized(), st.booleans(), st.sampled_from([None, 1, 2, 3, 5, 8]))
def test_chains_round_trip_bit_exactly(case, use_huffman: bool, index_bits: int | None) -> None:
    x, bits, _ = case
    s = Store()
    specs = {
        "raw": codecs.encode_raw(x, s.write),
        "float16": codecs.encode_float16(x.astype(np.float16).astype(np.float32), s.write),
        "palette": codecs.encode_palette(x, bits, use_huffman, s.write),
        "sparse+raw": codecs.encode_sparse(
            x,
            index_bits=index_bits,
            values=lambda e: codecs.encode_raw(e, s.write),
            use_huffman=use_huffman,
            write=s.write,
        ),
        "sparse+palette": codecs.encode_sparse(
            x,
            index_bits=index_bits,
            # fillers are zeros: x's own values (zeros included) form the codebook
            values=lambda e: codecs.encode_palette(
                e, 8, use_huffman, s.write, codebook=np.unique(np.append(x, 0))
            ),
            use_huffman=use_huffman,
            write=s.write,
        ),
    }
    for name, spec in specs.items():
        want = x.astype(np.float16).astype(np.float32) if name == "float16" else x
        got = codecs.decode_codec(spec, x.shape, np.dtype(np.float32), s.read, name)
        assert got.dtype == np.float32 and got.shape == x.shape
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=name)


@settings(max_examples=100, deadline=None)
@given(st.integers(-128, 127), st.floats(1e-4, 10.0), shapes, st.integers(0, 2**32 - 1))
def test_affine_int8_round_trips_its_grid(zp: int, scale: float, shape, seed: int) -> None:
    q = np.random.default_rng(seed).integers(-128, 128, shape).astype(np.float32)
    x = (q - np.float32(zp)) * np.float32(scale)
    s = Store()
    spec = codecs.encode_affine_int8(x, s.write, scale=scale, zero_point=zp)
    got = codecs.decode_codec(spec, shape, np.dtype(np.float32), s.read, "int8")
    np.testing.assert_array_equal(got, x)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 16),
    st.integers(0, 5000),
    st.floats(0.01, 4.0),
    st.integers(0, 2**32 - 1),
    st.sampled_from([None, 1, 7, 64]),
)
def test_huffman_and_packed_streams(bits: int, n: int, skew: float, seed: int, chunk) -> None:
    rng = np.random.default_rng(seed)
    sym = np.minimum(rng.geometric(min(1.0, 1 / (1 + skew)), n) - 1, (1 << bits) - 1)
    h = huffman.encode(sym, 1 << bits, chunk=chunk)
    got = huffman.decode(
        h.blob,
        count=n,
        lengths=h.lengths,
        alphabet=1 << bits,
        chunk=h.chunk,
        total_bits=h.total_bits,
    )
    np.testing.assert_array_equal(got, sym)
    np.testing.assert_array_equal(codecs.unpack_bits(codecs.pack_bits(sym, bits), bits, n), sym)


def test_filler_zeros_bridge_wide_gaps() -> None:
    x = np.zeros(1000, np.float32)
    x[[0, 3, 600, 999]] = [1, 2, 3, 4]
    sym, pos = codecs.relative_positions(np.flatnonzero(x), 3)
    assert sym.max() <= 7 and np.all(np.diff(pos, prepend=-1) == sym + 1)
    assert pos.size > 4 and set(np.flatnonzero(x)) <= set(pos.tolist())


def test_huffman_rejects_bad_tables() -> None:
    from modelloader.errors import HuffmanTableError

    for lengths in ([1, 1, 1], [2, 2, 2, 0], [17, 1], [0, 0, 0, 2]):
        with pytest.raises(HuffmanTableError):
            huffman.check_lengths(lengths, len(lengths))


def test_decode_many_matches_single_streams():
    """The container's batched lock-step decode gives each stream's own decode, for
    mixed chunk sizes, alphabets, one-symbol and empty streams."""
    rng = np.random.default_rng(7)
    streams = [
        huffman.encode(rng.integers(0, k, n), k, chunk=c)
        for n, k, c in ((1000, 4, 7), (5000, 256, 64), (70000, 32, 700), (1, 2, 1), (0, 8, 64))
    ]
    streams.append(huffman.encode(np.full(50, 3), 8))
    jobs = [
        dict(
            blob=h.blob,
            count=h.count,
            lengths=h.lengths,
            alphabet=len(h.lengths),
            chunk=h.chunk,
            total_bits=h.total_bits,
        )
        for h in streams
    ]
    for got, job in zip(huffman.decode_many(jobs), jobs):
        np.testing.assert_array_equal(got, huffman.decode(**job))
