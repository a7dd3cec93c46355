"""Just enough of the protobuf wire format to keep weights out of the parsed model.

``strip_weights`` re-serialises a ModelProto without the ``raw_data`` of the main
graph's initializers and reports where each of those byte ranges lies in the file,
so the weights can be used straight from the memory-mapped file (or copied once
when misaligned) instead of living in the protobuf arena *and* in NumPy.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelloader.errors import ModelFormatError

_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_NAME = 8
_TENSOR_RAW_DATA = 9
_LEN = 2


@dataclass(frozen=True)
class Span:
    offset: int
    length: int


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ModelFormatError("truncated or malformed protobuf varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _fields(buf: memoryview, pos: int, end: int):  # noqa: ANN202  (generator of tuples)
    """Yields (field number, wire type, field start, payload start, payload end)."""
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        field, wtype = key >> 3, key & 7
        if wtype == 0:
            _, pos = _varint(buf, pos, end)
            yield field, wtype, start, pos, pos
            continue
        if wtype == 1:
            payload, pos = pos, pos + 8
        elif wtype == 5:
            payload, pos = pos, pos + 4
        elif wtype == _LEN:
            n, payload = _varint(buf, pos, end)
            pos = payload + n
        else:
            raise ModelFormatError(f"unsupported protobuf wire type {wtype}")
        if pos > end:
            raise ModelFormatError("protobuf field runs past the end of the file (truncated?)")
        yield field, wtype, start, payload, pos


def _len_field(field: int, payload: bytes) -> bytes:
    return _encode_varint(field << 3 | _LEN) + _encode_varint(len(payload)) + payload


#: raw_data smaller than this stays in place: shape inference reads small constants.
MIN_STRIP_BYTES = 1024


def strip_weights(data: memoryview) -> tuple[bytes, dict[str, Span]]:
    """(model bytes without main-graph initializer raw_data, name -> raw_data span).

    Only raw_data of at least ``MIN_STRIP_BYTES`` is stripped.
    """
    buf = memoryview(data).cast("B")
    spans: dict[str, Span] = {}
    out = bytearray()
    for field, wtype, start, p0, p1 in _fields(buf, 0, len(buf)):
        if field == _MODEL_GRAPH and wtype == _LEN:
            out += _len_field(field, _strip_graph(buf, p0, p1, spans))
        else:
            out += buf[start:p1]
    return bytes(out), spans


def _strip_graph(buf: memoryview, pos: int, end: int, spans: dict[str, Span]) -> bytes:
    out = bytearray()
    for field, wtype, start, p0, p1 in _fields(buf, pos, end):
        if field != _GRAPH_INITIALIZER or wtype != _LEN:
            out += buf[start:p1]
            continue
        tensor = bytearray()
        name, raw = None, None
        for f, w, s, q0, q1 in _fields(buf, p0, p1):
            if f == _TENSOR_RAW_DATA and w == _LEN and q1 - q0 >= MIN_STRIP_BYTES:
                raw = Span(q0, q1 - q0)
                continue
            if f == _TENSOR_NAME and w == _LEN:
                name = bytes(buf[q0:q1]).decode("utf-8", errors="surrogateescape")
            tensor += buf[s:q1]
        if name is not None and raw is not None and name not in spans:
            spans[name] = raw
            out += _len_field(field, bytes(tensor))
        else:  # unnamed or duplicate: keep it whole, the parser handles it
            out += buf[start:p1]
    return bytes(out)
