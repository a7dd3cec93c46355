"""Turning whatever the caller passed to ``load`` into the model file's bytes.

``open_source`` accepts a local path (``str``/``os.PathLike``/``file://`` URL), a
bytes-like object, a binary file object, or an ``http(s)://`` URL. Local files are
memory-mapped; URLs are downloaded once into a cache directory and memory-mapped
from there. Every failure is a typed ``ModelLoaderError``.

Cache invariant: a file appears under its final name in the cache only after the
whole body arrived, fitted under the size cap and (when ``sha256`` was given)
matched the checksum. Downloads go to a temporary file in the cache directory that
is removed on every error path (including ``KeyboardInterrupt``) and ``os.replace``d
into place on success, so concurrent or interrupted downloads never expose a
partial file.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import os
import pathlib
import re
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse, IncompleteRead
from typing import IO, Any

import platformdirs

from modelloader.errors import (
    ChecksumError,
    FetchError,
    FetchTimeoutError,
    InvalidSourceError,
    ModelFormatError,
    ModelLoaderError,
    ModelNotFoundError,
    SizeLimitError,
)

__all__ = ["DEFAULT_MAX_BYTES", "ModelSource", "default_cache_dir", "open_source"]

#: Size cap for downloads and file objects when the caller gives none.
DEFAULT_MAX_BYTES = 4 << 30
#: Environment variable that overrides the default cache directory.
CACHE_ENV = "MODELLOADER_CACHE"

_CHUNK = 1 << 20
#: Downloads at least this large (or of unknown size) show progress on a TTY stderr.
_PROGRESS_MIN_BYTES = 16 << 20
_PROGRESS_INTERVAL_S = 0.25
_USER_AGENT = "modelloader/0.1 (+python-urllib)"
_TEMP_PREFIX = ".download-"
_TEMP_SUFFIX = ".part"

# Indirection so tests can wrap the response stream (e.g. to interrupt a download).
urlopen: Callable[..., HTTPResponse] = urllib.request.urlopen

Bytes = bytes | memoryview | mmap.mmap


@dataclass(frozen=True)
class ModelSource:
    """The model file's bytes plus where they came from.

    ``data`` is memory-mapped (read-only) for local and cached files, ``bytes`` or a
    byte-format ``memoryview`` otherwise. ``path`` is the local file (for URLs: the
    cached copy), beside which external data files resolve; ``None`` for bytes and
    file objects. ``name`` is for error messages (path, URL or ``<bytes>``).
    """

    data: Bytes
    path: pathlib.Path | None
    name: str


def default_cache_dir() -> pathlib.Path:
    """``$MODELLOADER_CACHE`` if set and non-empty, else the platform's user cache dir."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path(platformdirs.user_cache_dir("modelloader"))


def open_source(
    src: Any,
    *,
    sha256: str | None = None,
    timeout: float = 60.0,
    max_bytes: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ModelSource:
    """Resolves ``src`` to the model file's bytes.

    ``src``: ``str``/``os.PathLike`` path (``~`` expanded), ``file://`` URL,
    ``http://``/``https://`` URL, ``bytes``/``bytearray``/``memoryview``, or a binary
    file object (anything with ``read`` returning bytes; read to EOF, not closed).

    ``sha256`` (hex digest, optionally prefixed ``sha256:``) is checked for every
    kind of source; a mismatch raises ``ChecksumError``. ``timeout`` is the
    connect/inactivity timeout in seconds for URLs (not a cap on total download
    time). ``max_bytes`` caps downloads and file objects (default 4 GiB) and, when
    given explicitly, local files and bytes too; exceeding it raises
    ``SizeLimitError``. ``cache_dir`` defaults to ``default_cache_dir()``.

    Raises ``ModelNotFoundError`` (missing path), ``ModelFormatError`` (directory or
    empty file), ``InvalidSourceError`` (unsupported ``src`` type, text-mode file),
    ``FetchError``/``FetchTimeoutError``/``ChecksumError``/``SizeLimitError``.
    """
    expected = _normalise_sha256(sha256)
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")

    if isinstance(src, (bytes, bytearray, memoryview)):
        data = _bytes_like(src)
        source = ModelSource(data=data, path=None, name="<bytes>")
        _check_size(len(data), max_bytes, source.name)
    elif isinstance(src, str) and _is_url(src):
        scheme = urllib.parse.urlsplit(src).scheme.lower()
        if scheme == "file":
            source = _open_path(_file_url_to_path(src), max_bytes)
        elif scheme in ("http", "https"):
            return _open_url(src, expected, timeout, max_bytes, cache_dir)
        else:
            raise InvalidSourceError(
                f"unsupported URL scheme {scheme!r} in {src!r}; use http://, https:// or file://"
            )
    elif isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        source = _open_path(pathlib.Path(path).expanduser(), max_bytes)
    elif callable(getattr(src, "read", None)):
        source = _read_file_object(src, DEFAULT_MAX_BYTES if max_bytes is None else max_bytes)
    else:
        raise InvalidSourceError(
            f"cannot load a model from {type(src).__name__}: pass a path, URL, bytes or a "
            "binary file object"
        )

    if not len(source.data):
        raise ModelFormatError(f"model file {source.name} is empty (0 bytes)")
    if expected is not None:
        actual = _sha256_of(source.data)
        if actual != expected:
            if isinstance(source.data, mmap.mmap):
                source.data.close()
            raise ChecksumError(
                f"sha256 mismatch for {source.name}: expected {expected}, got {actual}"
            )
    return source


# --- local sources -------------------------------------------------------------------


def _is_url(s: str) -> bool:
    # Requiring "://" keeps Windows drive paths ("C:\\m.onnx") out.
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", s) is not None


def _file_url_to_path(url: str) -> pathlib.Path:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise InvalidSourceError(f"file URL {url!r} names a remote host; only local files work")
    return pathlib.Path(urllib.request.url2pathname(parts.path))


def _open_path(path: pathlib.Path, max_bytes: int | None) -> ModelSource:
    """Memory-maps a local file read-only (empty files give ``b""``)."""
    name = str(path)
    if path.is_dir() and (path / "Manifest.json").is_file():
        # a CoreML .mlpackage: the importer reads the package; data is its manifest
        return ModelSource(data=(path / "Manifest.json").read_bytes(), path=path, name=name)
    if path.is_dir():
        raise ModelFormatError(
            f"{name} is a directory; pass the model file inside it (e.g. model.onnx)"
        )
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            _check_size(size, max_bytes, name)
            if size == 0:
                return ModelSource(data=b"", path=path, name=name)
            # The mapping stays valid after the file object is closed.
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise ModelNotFoundError(f"model file not found: {name}") from None
    except IsADirectoryError:  # pragma: no cover - raced with is_dir()
        raise ModelFormatError(f"{name} is a directory") from None
    except PermissionError as e:
        raise ModelLoaderError(f"cannot read {name}: permission denied") from e
    except (OSError, ValueError) as e:
        if isinstance(e, ModelLoaderError):
            raise
        raise ModelLoaderError(f"cannot read {name}: {e}") from e
    return ModelSource(data=data, path=path, name=name)


def _bytes_like(src: bytes | bytearray | memoryview) -> bytes | memoryview:
    if isinstance(src, bytes):
        return src
    if isinstance(src, bytearray):
        return bytes(src)  # a snapshot: later mutation by the caller cannot change the model
    if not src.c_contiguous:
        return src.tobytes()
    return src if src.format == "B" and src.ndim == 1 else src.cast("B")


def _read_file_object(f: IO[Any], max_bytes: int) -> ModelSource:
    """Reads a binary file object to EOF (without closing it), capped at ``max_bytes``."""
    name = getattr(f, "name", None)
    name = f"<file {name}>" if isinstance(name, str) else "<file object>"
    if isinstance(f, io.TextIOBase):
        raise InvalidSourceError(
            f"{name} is opened in text mode; open it with mode 'rb' (binary) instead"
        )
    buf = bytearray()
    while True:
        try:
            chunk = f.read(_CHUNK)
        except OSError as e:
            raise ModelLoaderError(f"cannot read {name}: {e}") from e
        if not chunk:
            break
        if isinstance(chunk, str):
            raise InvalidSourceError(
                f"{name} returned str, not bytes; open it with mode 'rb' (binary) instead"
            )
        buf += chunk
        _check_size(len(buf), max_bytes, name)
    return ModelSource(data=bytes(buf), path=None, name=name)


def _check_size(size: int, max_bytes: int | None, name: str) -> None:
    if max_bytes is not None and size > max_bytes:
        raise SizeLimitError(
            f"{name} is larger than the size cap: {_human(size)} > max_bytes={max_bytes} "
            f"({_human(max_bytes)}); pass a larger max_bytes to load it"
        )


# --- checksums -----------------------------------------------------------------------


def _normalise_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    digest = sha256.strip().lower()
    digest = digest.removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    return digest


def _sha256_of(data: Bytes) -> str:
    h = hashlib.sha256()
    view = memoryview(data)
    try:
        for start in range(0, len(view), _CHUNK):
            h.update(view[start : start + _CHUNK])
    finally:
        view.release()  # an exported view would keep an mmap from closing
    return h.hexdigest()


def _file_sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --- URLs ----------------------------------------------------------------------------


def cache_path_for(url: str, cache_dir: pathlib.Path) -> pathlib.Path:
    """The cache file for ``url``: 16 hex digits of sha256(url), then its readable basename."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    base = urllib.parse.unquote(pathlib.PurePosixPath(urllib.parse.urlsplit(url).path).name)
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")[:100] or "model"
    return cache_dir / f"{key}-{base}"


def _open_url(
    url: str,
    expected: str | None,
    timeout: float,
    max_bytes: int | None,
    cache_dir: str | os.PathLike[str] | None,
) -> ModelSource:
    cap = DEFAULT_MAX_BYTES if max_bytes is None else max_bytes
    directory = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else None
    directory = directory or default_cache_dir()
    target = cache_path_for(url, directory)

    # A cached copy that fails the requested checksum is stale (the file behind the URL
    # changed): download again, and replace it only if the new body passes.
    if not (target.is_file() and (expected is None or _file_sha256(target) == expected)):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise FetchError(f"cannot create cache directory {directory}: {e}") from e
        _download(url, target, expected, timeout, cap)

    source = _open_path(target, None)
    _check_size(len(source.data), max_bytes, url)
    if not len(source.data):
        raise ModelFormatError(f"model downloaded from {url} is empty (0 bytes)")
    return ModelSource(data=source.data, path=target, name=url)


def _download(
    url: str, target: pathlib.Path, expected: str | None, timeout: float, cap: int
) -> None:
    """Streams ``url`` into ``target`` atomically; see the module docstring's invariant."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=target.parent)
    except OSError as e:
        raise FetchError(f"cannot write to cache directory {target.parent}: {e}") from e
    tmp = pathlib.Path(tmp_name)
    try:
        try:
            with os.fdopen(fd, "wb") as out:
                actual = _stream(url, out, timeout, cap)
            if expected is not None and actual != expected:
                raise ChecksumError(
                    f"sha256 mismatch for {url}: expected {expected}, got {actual}; "
                    "the download was discarded, not cached"
                )
            os.replace(tmp, target)
        except OSError as e:
            if isinstance(e, ModelLoaderError):
                raise
            # Local trouble (disk full, permissions), not the server's.
            raise FetchError(f"cannot save the download of {url} to {target}: {e}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _stream(url: str, out: IO[bytes], timeout: float, cap: int) -> str:
    """Writes the body of ``url`` to ``out``; returns its sha256 hex digest."""
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    try:
        response = urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        raise FetchError(f"HTTP {e.code} {e.reason} for {url}") from None
    except urllib.error.URLError as e:
        raise _connection_error(url, e.reason, timeout) from e
    except (OSError, HTTPException) as e:
        raise _connection_error(url, e, timeout) from e

    with response:
        status = getattr(response, "status", 200)
        if status is not None and not 200 <= status < 300:
            raise FetchError(f"HTTP {status} {getattr(response, 'reason', '')} for {url}")
        length_header = response.headers.get("Content-Length")
        try:
            length = int(length_header) if length_header is not None else None
        except ValueError:
            length = None
        if length is not None and length > cap:
            raise SizeLimitError(
                f"{url} is {_human(length)} (Content-Length), larger than "
                f"max_bytes={cap} ({_human(cap)}); pass a larger max_bytes to download it"
            )

        progress = _Progress(url, length)
        h = hashlib.sha256()
        received = 0
        try:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except IncompleteRead as e:
                    received += len(e.partial)
                    raise _truncated(url, received, length) from None
                except TimeoutError as e:
                    raise FetchTimeoutError(
                        f"timed out after {timeout:g}s without data from {url} "
                        f"({_human(received)} received)"
                    ) from e
                except (OSError, HTTPException) as e:
                    raise FetchError(
                        f"connection to {url} failed after {_human(received)}: {e}"
                    ) from e
                if not chunk:
                    break
                received += len(chunk)
                if received > cap:
                    raise SizeLimitError(
                        f"{url} is larger than max_bytes={cap} ({_human(cap)}); stopped after "
                        f"{_human(received)}; pass a larger max_bytes to download it"
                    )
                h.update(chunk)
                out.write(chunk)
                progress.update(received)
        finally:
            progress.close()
        if length is not None and received < length:
            raise _truncated(url, received, length)
    return h.hexdigest()


def _truncated(url: str, received: int, length: int | None) -> FetchError:
    of = f" of {length}" if length is not None else ""
    return FetchError(
        f"connection to {url} closed before the download finished ({received}{of} bytes)"
    )


def _connection_error(url: str, reason: object, timeout: float) -> FetchError:
    if isinstance(reason, TimeoutError):
        return FetchTimeoutError(f"timed out after {timeout:g}s connecting to {url}")
    if isinstance(reason, ConnectionRefusedError):
        return FetchError(f"connection refused by {url}; is the server running?")
    if isinstance(reason, socket.gaierror):
        host = urllib.parse.urlsplit(url).hostname
        return FetchError(f"cannot resolve host {host!r} in {url}: {reason.strerror}")
    return FetchError(f"cannot fetch {url}: {reason}")


class _Progress:
    """A one-line progress meter on stderr, shown only for large downloads on a TTY."""

    def __init__(self, url: str, total: int | None) -> None:
        self.total = total
        self.label = urllib.parse.unquote(
            pathlib.PurePosixPath(urllib.parse.urlsplit(url).path).name or url
        )
        stream = sys.stderr
        self.enabled = (
            stream is not None
            and _isatty(stream)
            and (total is None or total >= _PROGRESS_MIN_BYTES)
        )
        self.shown = False
        self.last = 0.0
        self.received = 0

    def update(self, received: int) -> None:
        self.received = received
        if not self.enabled or (self.total is None and received < _PROGRESS_MIN_BYTES):
            return
        now = time.monotonic()
        if self.shown and now - self.last < _PROGRESS_INTERVAL_S:
            return
        self.last = now
        self._draw()

    def _draw(self) -> None:
        if self.total:
            pct = 100.0 * self.received / self.total
            text = f"{_human(self.received)} / {_human(self.total)} ({pct:.0f}%)"
        else:
            text = _human(self.received)
        sys.stderr.write(f"\rdownloading {self.label}: {text}\x1b[K")
        sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _human(n: int) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
