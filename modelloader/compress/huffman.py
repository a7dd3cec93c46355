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
#: the encoder's code-length limit where the alphabet allows: a 2**11-entry decode table per
#: stream (8 KiB) stays in cache while every stream's chunks decode together; the cost is a
#: fraction of a percent of size (``code_lengths``)
TABLE_BITS = 11
#: chunks decoded in lock-step; fewer, longer chunks mean more Python steps per symbol
TARGET_CHUNKS = 32768
#: each chunk costs a u32 offset: 1024-symbol chunks keep that at 1/32 bit per symbol
#: (64-symbol chunks cost 0.5 bit, ~10 % of a pruned layer). The container decodes all
#: tensors' chunks together (``decode_many``), so short streams still run in parallel.
MIN_CHUNK = 1024
SHORT, SHORT_CHUNK = 16384, 64
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


def _integral(values: list[int] | np.ndarray) -> bool:
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "iu"
    return all(issubclass(t, (int, np.integer)) for t in set(map(type, values)))


def check_lengths(lengths: list[int] | np.ndarray, alphabet: int) -> np.ndarray:
    """Validates a code-length table: entries in [0, MAX_CODE_BITS], Kraft sum exactly 1
    (complete and prefix-free), or a single symbol of length 1.

    Raises ``HuffmanTableError``.
    """
    try:
        lens = np.asarray(lengths, np.int64)
    except (TypeError, ValueError, OverflowError):
        lens = None
    if (
        lens is None
        or lens.ndim != 1
        or not _integral(lengths)
        or (lens.size and (lens.min() < 0 or lens.max() > MAX_CODE_BITS))
    ):
        raise HuffmanTableError(f"Huffman code lengths must be integers in [0, {MAX_CODE_BITS}]")
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
    counts = np.bincount(sym, minlength=alphabet)
    # short codes keep the decoder's look-up tables (2**longest entries each) in cache
    limit = max(TABLE_BITS, (int(np.count_nonzero(counts)) - 1).bit_length())
    lens = code_lengths(counts, min(limit, MAX_CODE_BITS))
    codes = canonical_codes(lens)
    if chunk is None:
        # short streams (< SHORT symbols, < 1 KiB of offsets) keep short chunks: decoded
        # alone they then take few lock-step passes
        chunk = SHORT_CHUNK if n < SHORT else max(MIN_CHUNK, -(-n // TARGET_CHUNKS))
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
    """``symbol << 8 | length`` for every ``bits``-bit window of a complete code.

    Canonical codes are consecutive in (length, symbol) order, so the table is each
    symbol's entry repeated over the ``2**(bits - length)`` windows its code prefixes."""
    bits = int(lens.max()) if lens.size else 0
    used = np.flatnonzero(lens)
    used = used[np.lexsort((used, lens[used]))]
    ln = lens[used].astype(np.int64)
    table = np.repeat((used << 8 | ln).astype(np.uint32), 1 << (bits - ln))
    if table.size != 1 << bits:  # only complete codes reach here (check_lengths)
        raise HuffmanTableError("Huffman code lengths do not fill the code space")
    return table, bits


@dataclass
class _Prepared:
    """One validated stream, ready for the lock-step pass (``result`` set when trivial)."""

    count: int
    raw: np.ndarray | None = None
    starts: np.ndarray | None = None
    ends: np.ndarray | None = None
    sizes: np.ndarray | None = None
    table: np.ndarray | None = None
    bits: int = 0
    result: np.ndarray | None = None


def _prepare(
    blob: bytes | memoryview,
    *,
    count: int,
    lengths: list[int],
    alphabet: int,
    chunk: int,
    total_bits: int,
) -> _Prepared:
    """Every header check of ``decode``; the bitstream itself is read by ``_lockstep``."""
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
        return _Prepared(0, result=np.zeros(0, np.uint16))
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
        return _Prepared(count, result=np.full(count, used[0], np.uint16))
    table, bits = decode_table(lens)
    raw = np.frombuffer(data[head:], np.uint8)
    return _Prepared(count, raw, starts, ends, sizes, table, bits)


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
    return decode_many(
        [
            dict(
                blob=blob,
                count=count,
                lengths=lengths,
                alphabet=alphabet,
                chunk=chunk,
                total_bits=total_bits,
            )
        ]
    )[0]


def decode_many(streams: list[dict]) -> list[np.ndarray]:
    """Decodes several streams (each ``decode``'s keyword arguments) in one lock-step pass.

    The chunks of all streams advance together: one Python step per symbol of the longest
    chunk, not per stream, so a model's hundred small tensors cost one pass of ~``chunk``
    NumPy steps. Same checks and errors as ``decode``.
    """
    prep = [_prepare(**s) for s in streams]
    _lockstep([p for p in prep if p.result is None])
    return [p.result for p in prep]  # type: ignore[misc]


def _lockstep(prep: list[_Prepared]) -> None:
    if not prep:
        return
    # one byte buffer for all streams; chunk offsets, table bases, window shifts per chunk
    byte_base = np.cumsum([0] + [p.raw.size for p in prep])  # type: ignore[union-attr]
    tab_base = np.cumsum([0] + [p.table.size for p in prep])  # type: ignore[union-attr]
    out_base = np.cumsum([0] + [p.count for p in prep])
    maxchunk = max(int(p.sizes.max()) for p in prep)  # type: ignore[union-attr]
    # One bit buffer for all streams as aligned 64-bit words (most significant bit first):
    # the window at bit p is word p >> 6 shifted left by p & 63, topped up from the next
    # word, so one pair of gathers serves ``per`` codes. A corrupt chunk can run at most
    # chunk * MAX_CODE_BITS bits past its start: pad for it.
    nbytes = -(-(int(byte_base[-1]) + 2 * maxchunk + 16) // 8) * 8
    buf = np.zeros(nbytes, np.uint8)
    for p, b in zip(prep, byte_base):
        buf[b : b + p.raw.size] = p.raw  # type: ignore[union-attr]
    words = buf.view(">u8").astype(np.uint64)
    del buf
    per = max(1, 64 // max(p.bits for p in prep))
    table = np.concatenate([p.table for p in prep])  # type: ignore[misc]
    sizes = np.concatenate([p.sizes for p in prep])  # type: ignore[misc]
    starts = np.concatenate([p.starts + 8 * b for p, b in zip(prep, byte_base)])  # type: ignore[operator]
    ends = np.concatenate([p.ends + 8 * b for p, b in zip(prep, byte_base)])  # type: ignore[operator]
    nch = [p.sizes.size for p in prep]  # type: ignore[union-attr]
    shift = np.repeat(np.array([64 - p.bits for p in prep], np.uint64), nch)
    tbase = np.repeat(tab_base[:-1].astype(np.int64), nch)
    outoff = np.concatenate(
        [
            o + np.arange(p.sizes.size, dtype=np.int64) * int(p.sizes[0])  # type: ignore[union-attr]
            for p, o in zip(prep, out_base)
        ]
    )
    # longest chunks first, so the chunks still running at step t are a prefix
    order = np.argsort(-sizes, kind="stable")
    sizes, shift, tbase, outoff = sizes[order], shift[order], tbase[order], outoff[order]
    pos = starts[order].astype(np.int64)
    active = np.searchsorted(-sizes, -np.arange(maxchunk), side="left")  # sizes > t
    n0 = sizes.size
    w = np.empty(n0, np.uint64)
    lo = np.empty(n0, np.uint64)
    used = np.zeros(n0, np.uint64)  # bits of the current window consumed so far
    code = np.empty(n0, np.uint64)
    slot = np.empty(n0, np.int64)
    entry = np.empty(n0, np.uint32)
    idx = np.empty(n0, np.int64)
    total = int(out_base[-1])
    # near-uniform chunk sizes (the usual case): rows of a (step, chunk) array, written
    # contiguously; otherwise scatter each step's symbols to their flat output slots
    grid = maxchunk * n0 <= 2 * total + 4096
    out = np.empty((maxchunk, n0) if grid else total, np.uint16)
    six, low6, sixty4 = np.int64(6), np.uint64(63), np.uint64(64)
    # lock-step over all chunks: per window two word gathers, per code one table look-up.
    # Every code is complete (checked), so every window decodes to some symbol.
    for t0 in range(0, maxchunk, per):
        n = int(active[t0])
        pn, wn, ln, un, cn, sn = pos[:n], w[:n], lo[:n], used[:n], code[:n], slot[:n]
        np.right_shift(pn, six, out=sn)
        np.take(words, sn, out=wn)
        sn += 1
        np.take(words, sn, out=ln)
        np.bitwise_and(pn.view(np.uint64), low6, out=cn)
        np.left_shift(wn, cn, out=wn)
        np.subtract(sixty4, cn, out=cn)
        np.right_shift(ln, cn, out=ln)  # a shift by 64 gives 0
        np.bitwise_or(wn, ln, out=wn)
        un.fill(0)
        for t in range(t0, min(t0 + per, maxchunk)):
            m = int(active[t])
            c, e = cn[:m], entry[:m]
            np.left_shift(wn[:m], un[:m], out=c)
            np.right_shift(c, shift[:m], out=c)
            np.add(c.view(np.int64), tbase[:m], out=sn[:m])
            np.take(table, sn[:m], out=e)
            if grid:
                np.right_shift(e, 8, out=out[t, :m], casting="unsafe")
            else:
                np.add(outoff[:m], t, out=idx[:m])
                out[idx[:m]] = e >> 8
            np.bitwise_and(e, 0xFF, out=e)
            un[:m] += e
        pn += un.view(np.int64)
    got = np.empty(n0, np.int64)
    got[order] = pos
    if not np.array_equal(got, ends):
        bad = int(np.flatnonzero(got != ends)[0])
        raise DecodedLengthError(
            f"Huffman chunk {bad} decoded {int(got[bad] - starts[bad])} bits, "
            f"its offsets span {int(ends[bad] - starts[bad])}"
        )
    if not grid:
        for p, o in zip(prep, out_base):
            p.result = out[o : o + p.count]
        return
    rows = np.empty((n0, maxchunk), np.uint16)
    rows[order] = out.T  # chunk j's symbols in row j, chunks back in stream order
    del out
    c0 = 0
    for p in prep:
        c1 = c0 + p.sizes.size  # type: ignore[union-attr]
        ch, last = int(p.sizes[0]), int(p.sizes[-1])  # type: ignore[index]
        if ch == maxchunk and last == ch:
            p.result = rows[c0:c1].reshape(-1)
        else:
            p.result = np.concatenate([rows[c0 : c1 - 1, :ch].reshape(-1), rows[c1 - 1, :last]])
        c0 = c1
