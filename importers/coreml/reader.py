"""CoreML files -> parsed ``Model`` spec plus bounds-checked access to weight blobs.

Accepted: ``.mlmodel`` protobuf bytes; an ``.mlpackage`` directory (``Manifest.json`` +
``Data/com.apple.CoreML/model.mlmodel`` + ``weights/``); a zip of one package. The spec
is parsed with the protobuf modules ``coremltools`` ships (the ``coreml`` extra).

Weight blobs (ML Program ``blobFileValue``) use coremltools' MIL storage format: a
64-byte file header ``{u32 count, u32 version, u64 reserved[7]}`` and, at each blob's
offset, a 64-byte record ``{u32 sentinel 0xDEADBEEF, u32 dtype, u64 size, u64 data
offset, u64 padding bits, u64 reserved[4]}``; the data lies at ``data offset``.
"""

from __future__ import annotations

import io
import json
import mmap
import pathlib
import posixpath
import struct
import zipfile
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from modelloader.errors import (
    BufferRangeError,
    MissingExtraError,
    ModelFormatError,
    PackageError,
)

_SENTINEL = 0xDEADBEEF
_HEADER = 64
_RECORD = 64
_MODEL_PATH = "@model_path/"


def protos() -> ModuleType:
    """``coremltools.proto`` (imported lazily; raises ``MissingExtraError`` without it)."""
    try:
        import logging

        # coremltools logs about its macOS-only native modules on import; not our concern
        # (set once: every setLevel clears the logging caches)
        quiet = logging.getLogger("coremltools")
        if quiet.level != logging.ERROR:
            quiet.setLevel(logging.ERROR)
        from coremltools import proto
        from coremltools.proto import (  # noqa: F401  (registers the message types)
            FeatureTypes_pb2,
            MIL_pb2,
            Model_pb2,
            NeuralNetwork_pb2,
        )
    except ImportError as e:
        raise MissingExtraError(
            "loading CoreML models needs coremltools' protobuf modules: "
            "pip install 'modelloader[coreml]'"
        ) from e
    return proto


@dataclass
class CoreMLFile:
    """A parsed CoreML spec and where its weight files live.

    ``files`` maps package-relative paths (``weights/weight.bin``) to their bytes
    (memory-mapped for directories, read from the zip otherwise); ``None`` means a bare
    ``.mlmodel`` without a package, whose blob references cannot resolve.
    """

    spec: Any
    name: str
    files: dict[str, Any] | None = None
    base: pathlib.Path | None = None
    _open: dict[str, Any] = field(default_factory=dict)

    def weight_file(self, file_name: str) -> Any:
        rel = file_name.removeprefix(_MODEL_PATH)
        rel = _safe_rel(rel, self.name)
        if rel in self._open:
            return self._open[rel]
        data: Any = None
        if self.files is not None and rel in self.files:
            data = self.files[rel]
        elif self.base is not None:
            path = self.base / rel
            if not path.is_file():
                raise PackageError(f"{self.name}: weight file {rel} is missing from the package")
            with open(path, "rb") as f:
                data = (
                    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                    if path.stat().st_size
                    else b""
                )
        else:
            raise PackageError(
                f"{self.name}: the model refers to weight file {rel}, which is not in the "
                "package (load the .mlpackage, not the bare model.mlmodel)"
            )
        self._open[rel] = data
        return data

    def blob(self, file_name: str, offset: int) -> memoryview:
        """The bytes of the blob whose record starts at ``offset`` (bounds-checked)."""
        data = self.weight_file(file_name)
        size = len(data)
        where = f"{self.name}: blob at offset {offset} of {file_name} ({size} bytes)"
        if offset < _HEADER or offset + _RECORD > size:
            raise BufferRangeError(f"{where} lies outside the weight file")
        sentinel, _dtype, nbytes, start = struct.unpack_from("<IIQQ", data, offset)
        if sentinel != _SENTINEL:
            raise BufferRangeError(f"{where}: no blob record there (bad sentinel {sentinel:#x})")
        if start < offset + _RECORD or start + nbytes > size:
            raise BufferRangeError(
                f"{where}: data range [{start}, {start + nbytes}) lies outside the weight file"
            )
        return memoryview(data)[start : start + nbytes]


def _safe_rel(rel: str, name: str) -> str:
    norm = posixpath.normpath(rel.replace("\\", "/"))
    if norm.startswith("/") or norm == ".." or norm.startswith("../") or ":" in norm:
        raise PackageError(f"{name}: path {rel!r} escapes the package directory")
    return norm


def parse_spec(data: Any, name: str) -> Any:
    """Parses ``Model`` protobuf bytes; ``ModelFormatError`` when they are not one."""
    proto = protos()
    spec = proto.Model_pb2.Model()
    try:
        spec.ParseFromString(bytes(data))
    except Exception as e:  # noqa: BLE001  protobuf's DecodeError and friends
        raise ModelFormatError(f"{name}: not a valid CoreML model protobuf ({e})") from None
    if spec.WhichOneof("Type") is None:
        raise ModelFormatError(f"{name}: CoreML model has no model type (empty or malformed)")
    return spec


def _manifest_model_path(manifest: bytes, name: str) -> str:
    try:
        info = json.loads(manifest)
        entries = info["itemInfoEntries"]
        root = entries[info["rootModelIdentifier"]]
        path = root["path"]
    except (ValueError, KeyError, TypeError) as e:
        raise PackageError(f"{name}: Manifest.json is malformed ({e!r})") from None
    return "Data/" + _safe_rel(str(path), name)


def open_package_dir(path: pathlib.Path) -> CoreMLFile:
    name = str(path)
    manifest = path / "Manifest.json"
    if not manifest.is_file():
        raise PackageError(f"{name}: not an .mlpackage (Manifest.json is missing)")
    model_rel = _manifest_model_path(manifest.read_bytes(), name)
    model_path = path / model_rel
    if not model_path.is_file():
        raise PackageError(f"{name}: the manifest's model {model_rel} is missing")
    spec = parse_spec(model_path.read_bytes(), name)
    return CoreMLFile(spec, name, base=model_path.parent)


def open_package_zip(data: Any, name: str) -> CoreMLFile:
    try:
        zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
        infos = zf.infolist()
    except zipfile.BadZipFile as e:
        raise ModelFormatError(f"{name}: not a valid zip ({e})") from None
    members: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        if info.is_dir():
            continue
        rel = _safe_rel(info.filename, name)
        members[rel] = info
    manifests = [m for m in members if posixpath.basename(m) == "Manifest.json"]
    if not manifests:
        raise PackageError(f"{name}: zip holds no .mlpackage (Manifest.json is missing)")
    root = posixpath.dirname(min(manifests, key=len))
    model_rel = posixpath.join(
        root, _manifest_model_path(zf.read(members[posixpath.join(root, "Manifest.json")]), name)
    )
    if model_rel not in members:
        raise PackageError(f"{name}: the manifest's model {model_rel} is missing from the zip")
    spec = parse_spec(zf.read(members[model_rel]), name)
    model_dir = posixpath.dirname(model_rel)
    files = {
        posixpath.relpath(m, model_dir): zf.read(info)
        for m, info in members.items()
        if m.startswith(model_dir + "/") and m != model_rel
    }
    return CoreMLFile(spec, name, files=files)


def is_zip(data: Any) -> bool:
    return bytes(data[:4]) == b"PK\x03\x04"


def open_coreml(data: Any, path: pathlib.Path | None, name: str) -> CoreMLFile:
    """Opens a CoreML model from a package directory, a zip of one or ``.mlmodel`` bytes."""
    if path is not None and path.is_dir():
        return open_package_dir(path)
    if is_zip(data):
        return open_package_zip(data, name)
    base = path.parent if path is not None and (path.parent / "weights").is_dir() else None
    return CoreMLFile(parse_spec(data, name), name, base=base)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def looks_like_coreml(data: Any) -> bool:
    """Whether ``data`` is a CoreML ``Model`` protobuf (without needing coremltools).

    A CoreML spec's model type is a top-level field numbered 200 or more; ONNX's
    ModelProto has no field beyond 25, so walking the top-level fields tells them apart.
    """
    view = memoryview(data)
    pos, end, seen = 0, len(view), 0
    try:
        while pos < end and seen < 64:
            key, pos = _varint(view, pos)  # type: ignore[arg-type]
            field_no, wtype = key >> 3, key & 7
            if field_no == 0:
                return False
            if wtype == 0:
                _, pos = _varint(view, pos)  # type: ignore[arg-type]
            elif wtype == 1:
                pos += 8
            elif wtype == 5:
                pos += 4
            elif wtype == 2:
                length, pos = _varint(view, pos)  # type: ignore[arg-type]
                if field_no >= 200:
                    return pos + length <= end
                pos += length
            else:
                return False
            seen += 1
    except ValueError:
        return False
    return False
