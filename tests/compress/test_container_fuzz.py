"""Mutated containers (flipped bytes, truncations, lying lengths, forged headers) raise only
the typed errors: no crash, no hang, no silently different model."""

from __future__ import annotations

import copy
import hashlib
import json
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import modelloader
from modelloader.compress import compress, read_container
from modelloader.compress.container import ALIGN, CHECKSUM, MAGIC, PREFIX, load_model
from modelloader.errors import (
    BlobOverlapError,
    BlobRangeError,
    CodebookError,
    ContainerChecksumError,
    ContainerError,
    ContainerMagicError,
    ContainerTruncatedError,
    ContainerVersionError,
    DecodedLengthError,
    HeaderSchemaError,
    HeaderSizeError,
    HuffmanTableError,
    ModelLoaderError,
)

MODELS = Path(__file__).resolve().parents[2] / "models"
CASES = 10_000


@pytest.fixture(scope="module")
def container() -> bytes:
    r = compress(MODELS / "digits_mlp.onnx", prune=0.6, palettize_bits=4, huffman=True)
    return r.data


def split(data: bytes) -> tuple[dict, bytes]:
    (hlen,) = struct.unpack_from("<Q", data, len(MAGIC) + 2)
    return json.loads(data[PREFIX : PREFIX + hlen]), data[PREFIX + hlen : -CHECKSUM]


def forge(header: dict, blobs: bytes, version: int = 1) -> bytes:
    """A container with a recomputed checksum around any header (what an attacker can do)."""
    text = json.dumps(header).encode()
    text += b" " * (-(PREFIX + len(text)) % ALIGN)
    body = MAGIC + struct.pack("<HQ", version, len(text)) + text + blobs
    return body + hashlib.sha256(body).digest()


def paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, (*prefix, i))


JUNK = [
    None,
    True,
    -1,
    0,
    1,
    7,
    63,
    64,
    2**31,
    2**63,
    10**30,
    1.5,
    float("nan"),
    "",
    "x",
    "float32",
    [],
    [1],
    {},
    {"offset": 0, "length": 1},
]


def mutate_header(header: dict, rng: np.random.Generator) -> dict:
    h = copy.deepcopy(header)
    all_paths = [p for p in paths(h) if p]
    p = all_paths[rng.integers(len(all_paths))]
    parent = h
    for k in p[:-1]:
        parent = parent[k]
    old = parent[p[-1]]
    r = rng.random()
    if r < 0.15 and isinstance(parent, dict):
        del parent[p[-1]]
    elif r < 0.6 and isinstance(old, int) and not isinstance(old, bool):
        parent[p[-1]] = int(
            old + rng.choice([-65, -64, -8, -1, 1, 2, 8, 64, 1 << 20, -old, 1 << 40])
        )
    elif r < 0.7 and isinstance(old, list) and old:
        del old[rng.integers(len(old))]
    else:
        parent[p[-1]] = JUNK[rng.integers(len(JUNK))]
    return h


def check(data: bytes, original: bytes, forged: bool, full: bool) -> str:
    """Loads ``data``; returns the outcome. Anything but a typed error fails the test."""
    t0 = time.perf_counter()
    try:
        if full:
            m = load_model(data, "fuzz")
            x = np.zeros((2, 64), np.float32)
            try:
                m.predict(x)
            except ModelLoaderError:
                pass
        else:
            read_container(data, "fuzz")
        outcome = "ok"
    except ModelLoaderError as e:
        outcome = type(e).__name__
    assert time.perf_counter() - t0 < 5, "a mutated container took over 5 s (hang?)"
    if outcome == "ok" and not forged:
        # without a forged checksum only an unchanged file may load
        assert data == original
    return outcome


def test_fuzz_mutated_containers(container: bytes) -> None:
    rng = np.random.default_rng(1234)
    header, blobs = split(container)
    outcomes: dict[str, int] = {}
    hend = PREFIX + len(container) - len(blobs) - CHECKSUM - PREFIX
    for i in range(CASES):
        kind = i % 8
        data = bytearray(container)
        forged = False
        if kind == 0:  # flipped bits anywhere, mostly in the header
            for _ in range(rng.integers(1, 4)):
                j = rng.integers(hend) if rng.random() < 0.8 else rng.integers(len(data))
                data[j] ^= 1 << rng.integers(8)
        elif kind == 1:  # truncation
            data = data[: rng.integers(len(data))]
        elif kind == 2:  # lying header length
            struct.pack_into(
                "<Q",
                data,
                len(MAGIC) + 2,
                [0, 1, 63, 64, hend - PREFIX + 64, len(data), 2**40, 2**64 - 1][rng.integers(8)],
            )
        elif kind == 3:  # lying version / magic
            data[rng.integers(len(MAGIC) + 2)] ^= 1 << rng.integers(8)
        elif kind in (4, 5, 6):  # forged header field, checksum recomputed
            data, forged = bytearray(forge(mutate_header(header, rng), blobs)), True
        else:  # forged blob bytes or header text bytes, checksum recomputed
            body = bytearray(container[:-CHECKSUM])
            j = rng.integers(PREFIX, len(body))
            body[j] = rng.integers(256)
            data, forged = bytearray(bytes(body) + hashlib.sha256(body).digest()), True
        out = check(bytes(data), container, forged, full=forged and i % 5 == 0)
        outcomes[out] = outcomes.get(out, 0) + 1
    assert sum(outcomes.values()) == CASES
    # the typed errors do the rejecting (a sample of them must each have fired)
    for err in (
        "ContainerChecksumError",
        "ContainerTruncatedError",
        "HeaderSchemaError",
        "BlobRangeError",
    ):
        assert outcomes.get(err, 0) > 0, (err, outcomes)


def test_each_violation_has_its_type(container: bytes) -> None:
    header, blobs = split(container)

    def raises(err: type, data: bytes) -> None:
        with pytest.raises(err):
            read_container(data, "t")

    raises(ContainerMagicError, b"ONNX" + container[4:])
    raises(ContainerVersionError, forge(header, blobs, version=2))
    raises(ContainerTruncatedError, container[:20])
    raises(ContainerChecksumError, container[:-1] + bytes([container[-1] ^ 1]))
    bad = bytearray(container)
    struct.pack_into("<Q", bad, len(MAGIC) + 2, 1 << 40)
    raises(HeaderSizeError, bytes(bad))
    raises(HeaderSchemaError, forge({**header, "extra": 1}, blobs))

    def with_codec(fn) -> bytes:
        h = copy.deepcopy(header)
        fn(h["graph"]["constants"]["fc1.weight"]["codec"])
        return forge(h, blobs)

    def overlap(c: dict) -> None:
        c["values"]["codebook"]["blob"] = dict(c["positions"]["blob"])

    raises(BlobOverlapError, with_codec(overlap))
    raises(BlobRangeError, with_codec(lambda c: c["positions"]["blob"].update(offset=1 << 20)))
    raises(CodebookError, with_codec(lambda c: c["values"].update(bits=1)))
    raises(HuffmanTableError, with_codec(lambda c: c["positions"]["lengths"].__setitem__(0, 9)))
    raises(
        DecodedLengthError,
        with_codec(lambda c: c["positions"].update(total_bits=c["positions"]["total_bits"] + 8)),
    )
    assert issubclass(ContainerError, modelloader.ModelFormatError)
