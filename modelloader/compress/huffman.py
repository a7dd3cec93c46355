"""Canonical Huffman coding of small-alphabet integer streams, with a vectorised decoder.

Deep Compression (Han et al., ICLR 2016, section 4) Huffman-codes the palette indices and
the relative sparse positions. Codes here are canonical (RFC 1951 section 3.2.2): only the
code length of each symbol is stored, codes are assigned in (length, symbol) order and
written MSB-first. Lengths are capped at ``MAX_CODE_BITS``.

The stream is cut into ``chunk``-symbol chunks whose starting bit offsets are recorded, so
the decoder advances every chunk by one symbol per step with NumPy (one gather into a
32-bit window, one table look-up) instead of looping over symbols in Python.

Blob layout: ``nchunks`` little-endian u32 bit offsets, then the packed bitstream.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from modelloader.errors import DecodedLengthError, HuffmanTableError

#: longest code; 16 keeps the decode table at 64 Ki entries (L2-resident)
MAX_CODE_BITS = 16
#: chunks decoded in lock-step; fewer, longer chunks mean more Python steps per symbol
TARGET_CHUNKS = 32768
MIN_CHUNK = 64
MAX_CHUNK = 1 << 24
MAX_SYMBOLS = 1 << 31


@dataclass(frozen=True)
class HuffmanStream:
    """An encoded stream: ``lengths[s]`` is symbol ``s``'s code length (0 = unused)."""

    count: int
    lengths: list[int]
    chunk: int
    total_bits: int
    blob: bytes

    @property
    def nchunks(self) -> int:
        return -(-self.count // self.chunk) if self.count else 0


def code_lengths(freqs: np.ndarray, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Huffman code lengths for ``freqs`` (0 for absent symbols), at most ``max_bits`` long.

    Over-long codes are avoided by halving the frequencies (keeping used symbols >= 1)
    and rebuilding, which costs a fraction of a percent in size at most.
    """
    freqs = np.asarray(freqs, np.int64)
    used = np.flatnonzero(freqs)
    lengths = np.zeros(freqs.size, np.int64)
    if used.size == 0:
        return lengths
    if used.size == 1:
        lengths[used[0]] = 1
        return lengths
    f = freqs[used].copy()
    while True:
        heap = [(int(w), i, (i,)) for i, w in enumerate(f)]
        heapq.heapify(heap)
        depth = np.zeros(used.size, np.int64)
        tie = used.size
        while len(heap) > 1:
            w1, _, a = heapq.heappop(heap)
            w2, _, b = heapq.heappop(heap)
            for s in a + b:
                depth[s] += 1
            heapq.heappush(heap, (w1 + w2, tie, a + b))
            tie += 1
        if depth.max() <= max_bits:
            lengths[used] = depth
            return lengths
        f = np.maximum(f >> 1, 1)


def check_lengths(lengths: list[int] | np.ndarray, alphabet: int) -> np.ndarray:
    """Validates a code-length table: entries in [0, MAX_CODE_BITS], Kraft sum exactly 1
    (complete and prefix-free), or a single symbol of length 1.

    Raises ``HuffmanTableError``.
    """
    if not all(isinstance(x, (int, np.integer)) and 0 <= x <= MAX_CODE_BITS for x in lengths):
        raise HuffmanTableError(f"Huffman code lengths must be integers in [0, {MAX_CODE_BITS}]")
    lens = np.asarray(lengths, np.int64)
    if lens.ndim != 1 or lens.size != alphabet:
        raise HuffmanTableError(f"Huffman table has {lens.size} code lengths, expected {alphabet}")
    if lens.size and (lens.min() < 0 or lens.max() > MAX_CODE_BITS):
        raise HuffmanTableError(f"Huffman code lengths must lie in [0, {MAX_CODE_BITS}]")
    used = lens[lens > 0]
    if used.size == 0:
        return lens
    if used.size == 1:
        if used[0] != 1:
            raise HuffmanTableError("a one-symbol Huffman code must have length 1")
        return lens
    kraft = int(np.sum(1 << (MAX_CODE_BITS - used)))
    if kraft > 1 << MAX_CODE_BITS:
        raise HuffmanTableError(
            "Huffman code lengths oversubscribe the code space (not prefix-free)"
        )
    if kraft < 1 << MAX_CODE_BITS:
        raise HuffmanTableError("Huffman code lengths leave bit patterns undecodable (incomplete)")
    return lens


def canonical_codes(lens: np.ndarray) -> np.ndarray:
    """Canonical code of each symbol (RFC 1951 3.2.2), as integers of ``lens[s]`` bits."""
    codes = np.zeros(lens.size, np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lens).tolist(), key=lambda s: (lens[s], s)):
        code <<= int(lens[s]) - prev
        prev = int(lens[s])
        codes[s] = code
        code += 1
    return codes


def encode(symbols: np.ndarray, alphabet: int, chunk: int | None = None) -> HuffmanStream:
    """Huffman-codes non-negative integer ``symbols`` (< ``alphabet``)."""
    sym = np.ascontiguousarray(symbols).reshape(-1).astype(np.int64)
    n = sym.size
    if n and (sym.min() < 0 or sym.max() >= alphabet):
        raise ValueError(f"symbols must lie in [0, {alphabet})")
    lens = code_lengths(np.bincount(sym, minlength=alphabet))
    codes = canonical_codes(lens)
    if chunk is None:
        chunk = max(MIN_CHUNK, -(-n // TARGET_CHUNKS))
    sym_len = lens[sym]
    ends = np.cumsum(sym_len)
    total = int(ends[-1]) if n else 0
    starts = ends - sym_len
    offsets = starts[::chunk].astype("<u4")
    if total >= 1 << 31:
        raise ValueError("Huffman stream over 2 Gibit; split the tensor")
    # one row per symbol, one column per bit of the longest code; masked row-major = stream
    parts, carry, step = [], np.zeros(0, np.uint8), 1 << 20
    maxlen = int(lens.max()) if n else 0
    shifts = np.arange(maxlen - 1, -1, -1, dtype=np.int64)
    for i in range(0, n, step):
        ln = sym_len[i : i + step, None]
        cd = codes[sym[i : i + step], None]
        bits = (cd << (maxlen - ln)) >> shifts & 1
        mask = np.arange(maxlen) < ln
        stream = np.concatenate([carry, bits[mask].astype(np.uint8)])
        cut = stream.size - stream.size % 8
        parts.append(np.packbits(stream[:cut]))
        carry = stream[cut:]
    if carry.size:
        parts.append(np.packbits(carry))
    blob = offsets.tobytes() + b"".join(p.tobytes() for p in parts)
    return HuffmanStream(n, lens.tolist(), int(chunk), total, blob)


def decode_table(lens: np.ndarray) -> tuple[np.ndarray, int]:
    """``symbol << 8 | length`` for every ``bits``-bit window of a complete code."""
    bits = int(lens.max()) if lens.size else 0
    codes = canonical_codes(lens)
    table = np.zeros(1 << bits, np.uint32)
    for s in np.flatnonzero(lens).tolist():
        lo = int(codes[s]) << (bits - int(lens[s]))
        hi = (int(codes[s]) + 1) << (bits - int(lens[s]))
        table[lo:hi] = s << 8 | int(lens[s])
    return table, bits


def decode(
    blob: bytes | memoryview,
    *,
    count: int,
    lengths: list[int],
    alphabet: int,
    chunk: int,
    total_bits: int,
) -> np.ndarray:
    """Decodes ``count`` symbols (uint16) from a blob written by ``encode``.

    Every header field is checked first; afterwards each chunk must have consumed exactly
    the bits up to the next chunk's offset (the last one: ``total_bits``).
    Raises ``HuffmanTableError`` or ``DecodedLengthError``.
    """
    lens = check_lengths(lengths, alphabet)
    if not 1 <= chunk <= MAX_CHUNK or not 0 <= count <= MAX_SYMBOLS or total_bits >= 1 << 31:
        raise DecodedLengthError(f"Huffman chunk size {chunk} / count {count} out of range")
    nchunks = -(-count // chunk) if count else 0
    head = 4 * nchunks
    data = memoryview(blob)
    if len(data) < head or len(data) - head != -(-total_bits // 8):
        raise DecodedLengthError(
            f"Huffman blob holds {len(data)} bytes; {nchunks} chunk offsets and "
            f"{total_bits} bits need {head + -(-total_bits // 8)}"
        )
    if count == 0:
        if total_bits:
            raise DecodedLengthError("an empty Huffman stream must have no bits")
        return np.zeros(0, np.uint16)
    if not lens.any():
        raise HuffmanTableError("a non-empty Huffman stream has no codes")
    starts = np.frombuffer(data[:head], "<u4").astype(np.int64)
    ends = np.append(starts[1:], total_bits)
    sizes = np.full(nchunks, chunk, np.int64)
    sizes[-1] = count - chunk * (nchunks - 1)
    if (
        starts[0] != 0
        or np.any(ends < starts)
        or np.any(ends - starts < sizes * lens[lens > 0].min())
    ):
        raise DecodedLengthError("Huffman chunk offsets are not increasing or too close together")
    if np.any(ends - starts > sizes * MAX_CODE_BITS):
        raise DecodedLengthError("Huffman chunk holds more bits than its symbols can use")
    used = np.flatnonzero(lens)
    if used.size == 1:
        # one symbol, code "0": the stream is ``count`` zero bits
        if total_bits != count or any(data[head:]):
            raise DecodedLengthError("a one-symbol Huffman stream must be `count` zero bits")
        return np.full(count, used[0], np.uint16)
    table, bits = decode_table(lens)
    raw = np.frombuffer(data[head:], np.uint8)
    # w[i] = bytes i..i+3 big-endian: any code starts within the 32-bit window at pos >> 3.
    # A corrupt chunk can run at most chunk * MAX_CODE_BITS bits past its start: pad for it.
    pad = np.zeros(raw.size + 2 * chunk + 8, np.uint32)
    pad[: raw.size] = raw
    win = pad[:-3] << 24 | pad[1:-2] << 16 | pad[2:-1] << 8 | pad[3:]
    out = np.empty((chunk, nchunks), np.uint16)
    pos = starts.astype(np.uint32)
    full = nchunks if sizes[-1] == chunk else nchunks - 1
    shift = np.uint32(32 - bits)
    w = np.empty(nchunks, np.uint32)
    a = np.empty(nchunks, np.uint32)
    # lock-step over all chunks: one gather into the stream + one table look-up per step.
    # The code is complete (checked), so every window decodes to some symbol.
    for t in range(chunk):
        n = nchunks if t < sizes[-1] else full
        p, wn, an = pos[:n], w[:n], a[:n]
        np.take(win, p >> 3, out=wn)
        np.bitwise_and(p, 7, out=an)
        np.left_shift(wn, an, out=wn)
        np.right_shift(wn, shift, out=wn)
        np.take(table, wn, out=an)
        np.right_shift(an, 8, out=out[t, :n], casting="unsafe")
        np.bitwise_and(an, 0xFF, out=an)
        p += an
    pos = pos.astype(np.int64)
    if not np.array_equal(pos, ends):
        bad = int(np.flatnonzero(pos != ends)[0])
        raise DecodedLengthError(
            f"Huffman chunk {bad} decoded {int(pos[bad] - starts[bad])} bits, "
            f"its offsets span {int(ends[bad] - starts[bad])}"
        )
    flat = out.T.reshape(-1)
    return (
        flat[:count]
        if full == nchunks
        else np.concatenate([out[:, :full].T.reshape(-1), out[: sizes[-1], full]])
    )
