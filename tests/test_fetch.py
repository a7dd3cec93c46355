"""modelloader.fetch: local sources, downloads against a local HTTP server, the cache."""

from __future__ import annotations

import hashlib
import http.server
import io
import mmap
import os
import pathlib
import socket
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import platformdirs
import pytest

from modelloader import fetch
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
from modelloader.fetch import ModelSource, default_cache_dir, open_source

MODEL = bytes(range(256)) * 40  # 10 KiB of arbitrary "model" bytes; fetch never parses them
MODEL_SHA = hashlib.sha256(MODEL).hexdigest()
WRONG_SHA = "0" * 64
BIG = 10_000
SLOW_S = 0.3  # client timeout in the slow tests; handlers stall far longer (until teardown)


# --- local HTTP server ---------------------------------------------------------------


@dataclass
class Server:
    base: str
    hits: Counter[str] = field(default_factory=Counter)

    def url(self, path: str) -> str:
        return self.base + path


@pytest.fixture
def server() -> Iterator[Server]:
    """A ThreadingHTTPServer on 127.0.0.1 with one route per failure mode.

    Handlers stall on ``release`` (set at teardown) rather than sleeping, and every
    connection has a socket timeout, so no request outlives the test.
    """
    release = threading.Event()
    hits: Counter[str] = Counter()

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 10  # bounds every read/write on the connection

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes, length: int | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            if length is not None:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            try:
                self.wfile.write(body)
                self.wfile.flush()
            except OSError:
                pass  # the client gave up (size cap); nothing to do

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            hits[path] += 1
            routes: dict[str, Callable[[], None]] = {
                "/model.onnx": lambda: self._send(200, MODEL, len(MODEL)),
                "/dir/other%20name.onnx": lambda: self._send(200, MODEL, len(MODEL)),
                "/missing.onnx": lambda: self._send(404, b"not found", 9),
                "/error.onnx": lambda: self._send(500, b"boom", 4),
                "/slow.onnx": self._slow_headers,
                "/stall.onnx": self._stall_body,
                "/big.onnx": lambda: self._send(200, b"x" * BIG, BIG),
                "/big-nolength.onnx": lambda: self._send(200, b"x" * BIG),
                "/truncated.onnx": self._truncated,
                "/empty.onnx": lambda: self._send(200, b"", 0),
            }
            routes.get(path, lambda: self._send(404, b"", 0))()

        def _slow_headers(self) -> None:
            release.wait(10)
            self._send(200, MODEL, len(MODEL))

        def _stall_body(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(MODEL)))
            self.end_headers()
            self.wfile.write(MODEL[:100])
            self.wfile.flush()
            release.wait(10)

        def _truncated(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(MODEL)))
            self.end_headers()
            self.wfile.write(MODEL[:3000])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_WR)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield Server(base=f"http://127.0.0.1:{httpd.server_address[1]}", hits=hits)
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def cache(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "cache"


def cache_files(cache_dir: pathlib.Path) -> list[str]:
    """Everything in the cache dir, temp files included."""
    return sorted(p.name for p in cache_dir.iterdir()) if cache_dir.exists() else []


def as_bytes(src: ModelSource) -> bytes:
    return bytes(src.data)


# --- downloads -----------------------------------------------------------------------


def test_download_then_cache_hit(server: Server, cache: pathlib.Path) -> None:
    url = server.url("/model.onnx")
    first = open_source(url, cache_dir=cache)
    assert as_bytes(first) == MODEL
    assert isinstance(first.data, mmap.mmap)
    assert first.name == url
    assert first.path is not None and first.path.parent == cache
    assert first.path.name.endswith("-model.onnx")
    assert first.path.name[:16] == hashlib.sha256(url.encode()).hexdigest()[:16]
    assert cache_files(cache) == [first.path.name]

    second = open_source(url, cache_dir=cache)
    assert server.hits["/model.onnx"] == 1  # served from the cache
    assert second.path == first.path
    assert as_bytes(second) == MODEL


def test_cache_name_is_readable_and_sanitised(server: Server, cache: pathlib.Path) -> None:
    src = open_source(server.url("/dir/other%20name.onnx"), cache_dir=cache)
    assert src.path is not None and src.path.name.endswith("-other_name.onnx")
    assert as_bytes(src) == MODEL


def test_query_strings_give_distinct_cache_entries(server: Server, cache: pathlib.Path) -> None:
    a = open_source(server.url("/model.onnx?v=1"), cache_dir=cache)
    b = open_source(server.url("/model.onnx?v=2"), cache_dir=cache)
    assert a.path != b.path
    assert server.hits["/model.onnx"] == 2


def test_sha256_verified_on_download_and_on_reuse(server: Server, cache: pathlib.Path) -> None:
    url = server.url("/model.onnx")
    assert as_bytes(open_source(url, sha256=MODEL_SHA, cache_dir=cache)) == MODEL
    assert as_bytes(open_source(url, sha256=MODEL_SHA.upper(), cache_dir=cache)) == MODEL
    assert as_bytes(open_source(url, sha256="sha256:" + MODEL_SHA, cache_dir=cache)) == MODEL
    assert server.hits["/model.onnx"] == 1


def test_checksum_mismatch_is_not_cached(server: Server, cache: pathlib.Path) -> None:
    url = server.url("/model.onnx")
    with pytest.raises(ChecksumError) as info:
        open_source(url, sha256=WRONG_SHA, cache_dir=cache)
    msg = str(info.value)
    assert WRONG_SHA in msg and MODEL_SHA in msg and "not cached" in msg and url in msg
    assert cache_files(cache) == []


def test_stale_cache_entry_is_redownloaded_when_checksum_differs(
    server: Server, cache: pathlib.Path
) -> None:
    url = server.url("/model.onnx")
    path = open_source(url, cache_dir=cache).path
    assert path is not None
    path.write_bytes(b"stale contents")
    # Without a checksum the cached copy is trusted as is.
    assert as_bytes(open_source(url, cache_dir=cache)) == b"stale contents"
    assert server.hits["/model.onnx"] == 1
    # With one, the mismatching copy is replaced by a fresh, verified download.
    assert as_bytes(open_source(url, sha256=MODEL_SHA, cache_dir=cache)) == MODEL
    assert server.hits["/model.onnx"] == 2
    assert path.read_bytes() == MODEL


def test_cached_copy_and_download_both_mismatch(server: Server, cache: pathlib.Path) -> None:
    url = server.url("/model.onnx")
    open_source(url, cache_dir=cache)
    with pytest.raises(ChecksumError):
        open_source(url, sha256=WRONG_SHA, cache_dir=cache)
    assert server.hits["/model.onnx"] == 2
    assert len(cache_files(cache)) == 1  # the earlier good copy, no temp files


@pytest.mark.parametrize(("path", "status"), [("/missing.onnx", 404), ("/error.onnx", 500)])
def test_http_error_status(server: Server, cache: pathlib.Path, path: str, status: int) -> None:
    url = server.url(path)
    with pytest.raises(FetchError) as info:
        open_source(url, cache_dir=cache)
    assert not isinstance(info.value, FetchTimeoutError)
    assert str(status) in str(info.value) and url in str(info.value)
    assert cache_files(cache) == []


def test_connection_refused(cache: pathlib.Path) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"http://127.0.0.1:{port}/model.onnx"
    with pytest.raises(FetchError) as info:
        open_source(url, cache_dir=cache, timeout=5)
    assert not isinstance(info.value, FetchTimeoutError)
    assert "refused" in str(info.value) and url in str(info.value)
    assert cache_files(cache) == []


def test_timeout_before_headers(server: Server, cache: pathlib.Path) -> None:
    with pytest.raises(FetchTimeoutError) as info:
        open_source(server.url("/slow.onnx"), cache_dir=cache, timeout=SLOW_S)
    assert isinstance(info.value, TimeoutError)
    assert "timed out" in str(info.value)
    assert cache_files(cache) == []


def test_timeout_mid_body(server: Server, cache: pathlib.Path) -> None:
    with pytest.raises(FetchTimeoutError):
        open_source(server.url("/stall.onnx"), cache_dir=cache, timeout=SLOW_S)
    assert cache_files(cache) == []


def test_size_cap_by_content_length(server: Server, cache: pathlib.Path) -> None:
    with pytest.raises(SizeLimitError) as info:
        open_source(server.url("/big.onnx"), cache_dir=cache, max_bytes=1000)
    assert "max_bytes=1000" in str(info.value) and "Content-Length" in str(info.value)
    assert cache_files(cache) == []


def test_size_cap_while_streaming(server: Server, cache: pathlib.Path) -> None:
    with pytest.raises(SizeLimitError) as info:
        open_source(server.url("/big-nolength.onnx"), cache_dir=cache, max_bytes=1000)
    assert "max_bytes=1000" in str(info.value)
    assert cache_files(cache) == []


def test_size_cap_exactly_met(server: Server, cache: pathlib.Path) -> None:
    src = open_source(server.url("/big-nolength.onnx"), cache_dir=cache, max_bytes=BIG)
    assert len(src.data) == BIG


def test_server_closes_mid_body(server: Server, cache: pathlib.Path) -> None:
    with pytest.raises(FetchError) as info:
        open_source(server.url("/truncated.onnx"), cache_dir=cache, timeout=5)
    assert not isinstance(info.value, FetchTimeoutError)
    assert "closed" in str(info.value)
    assert cache_files(cache) == []


def test_empty_download_is_a_format_error(server: Server, cache: pathlib.Path) -> None:
    with pytest.raises(ModelFormatError):
        open_source(server.url("/empty.onnx"), cache_dir=cache)


def test_keyboard_interrupt_leaves_no_partial_file(
    server: Server, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_urlopen = fetch.urlopen

    class Interrupting:
        def __init__(self, response: object) -> None:
            self._r = response
            self.reads = 0

        def __getattr__(self, name: str) -> object:
            return getattr(self._r, name)

        def __enter__(self) -> Interrupting:
            return self

        def __exit__(self, *exc: object) -> None:
            self._r.close()  # type: ignore[attr-defined]

        def read(self, n: int) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise KeyboardInterrupt
            return self._r.read(100)  # type: ignore[attr-defined]

    monkeypatch.setattr(fetch, "urlopen", lambda *a, **k: Interrupting(real_urlopen(*a, **k)))
    with pytest.raises(KeyboardInterrupt):
        open_source(server.url("/model.onnx"), cache_dir=cache)
    assert cache_files(cache) == []


def test_cache_dir_that_is_a_file(server: Server, tmp_path: pathlib.Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(FetchError, match="cache"):
        open_source(server.url("/model.onnx"), cache_dir=not_a_dir)


def test_local_write_failure_is_a_fetch_error_and_cleans_up(
    server: Server, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fetch.os, "replace", no_space)
    with pytest.raises(FetchError, match="No space left"):
        open_source(server.url("/model.onnx"), cache_dir=cache)
    assert cache_files(cache) == []


def test_modelloader_cache_env_override(
    server: Server, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_cache = tmp_path / "env-cache"
    monkeypatch.setenv("MODELLOADER_CACHE", str(env_cache))
    assert default_cache_dir() == env_cache
    src = open_source(server.url("/model.onnx"))
    assert src.path is not None and src.path.parent == env_cache
    assert len(cache_files(env_cache)) == 1


def test_default_cache_dir_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELLOADER_CACHE", raising=False)
    assert default_cache_dir() == pathlib.Path(platformdirs.user_cache_dir("modelloader"))


def test_no_progress_when_stderr_is_not_a_tty(
    server: Server, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(fetch, "_PROGRESS_MIN_BYTES", 1)
    open_source(server.url("/model.onnx"), cache_dir=cache)
    assert capsys.readouterr().err == ""


def test_progress_on_a_tty_for_large_downloads(
    server: Server, cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Tty()
    monkeypatch.setattr(sys, "stderr", err)
    open_source(server.url("/big.onnx"), cache_dir=cache)  # below the threshold: silent
    assert err.getvalue() == ""
    monkeypatch.setattr(fetch, "_PROGRESS_MIN_BYTES", 1000)
    open_source(server.url("/model.onnx"), cache_dir=cache)
    out = err.getvalue()
    assert "downloading model.onnx" in out and "100%" in out and out.endswith("\n")


def test_unresolvable_host(cache: pathlib.Path) -> None:
    with pytest.raises(FetchError):
        open_source("http://nonexistent.invalid/model.onnx", cache_dir=cache, timeout=5)
    assert cache_files(cache) == []


def test_unsupported_url_scheme() -> None:
    with pytest.raises(InvalidSourceError, match="ftp"):
        open_source("ftp://example.com/model.onnx")


# --- local sources -------------------------------------------------------------------


@pytest.fixture
def model_file(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(MODEL)
    return path


def test_local_path_str_and_pathlike(model_file: pathlib.Path) -> None:
    for src in (str(model_file), model_file):
        got = open_source(src)
        assert isinstance(got.data, mmap.mmap)
        assert as_bytes(got) == MODEL
        assert got.path == model_file
        assert got.name == str(model_file)


def test_file_url(model_file: pathlib.Path) -> None:
    got = open_source(model_file.as_uri())
    assert got.path == model_file and as_bytes(got) == MODEL


def test_missing_path(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "nope.onnx"
    for src in (str(missing), missing, missing.as_uri()):
        with pytest.raises(ModelNotFoundError) as info:
            open_source(src)
        assert str(info.value) == f"model file not found: {missing}"
        assert isinstance(info.value, FileNotFoundError)


def test_directory_is_a_format_error(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelFormatError, match="directory"):
        open_source(tmp_path)


def test_empty_file(tmp_path: pathlib.Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="empty"):
        open_source(empty)
    with pytest.raises(ModelFormatError, match="empty"):
        open_source(b"")


def test_bytes_likes() -> None:
    for src in (MODEL, bytearray(MODEL), memoryview(MODEL)):
        got = open_source(src)
        assert got.path is None and got.name == "<bytes>"
        assert as_bytes(got) == MODEL


def test_bytearray_is_snapshotted() -> None:
    buf = bytearray(MODEL)
    got = open_source(buf)
    buf[0] ^= 0xFF
    assert as_bytes(got) == MODEL


def test_non_byte_memoryview() -> None:
    import numpy as np

    arr = np.arange(4, dtype=np.uint32)
    got = open_source(memoryview(arr))
    assert as_bytes(got) == arr.tobytes()
    got = open_source(memoryview(np.arange(8, dtype=np.uint8))[::2])  # non-contiguous
    assert as_bytes(got) == bytes([0, 2, 4, 6])


def test_binary_file_objects(model_file: pathlib.Path) -> None:
    got = open_source(io.BytesIO(MODEL))
    assert got.path is None and as_bytes(got) == MODEL
    with open(model_file, "rb") as f:
        got = open_source(f)
        assert not f.closed
    assert as_bytes(got) == MODEL and str(model_file) in got.name


def test_text_mode_file_rejected(model_file: pathlib.Path) -> None:
    with open(model_file, encoding="latin-1") as f:
        with pytest.raises(InvalidSourceError, match="'rb'") as info:
            open_source(f)
    assert isinstance(info.value, TypeError)
    with pytest.raises(InvalidSourceError, match="'rb'"):
        open_source(io.StringIO("not bytes"))


def test_unsupported_source_type() -> None:
    for bad in (12345, None, 1.5, ["model.onnx"]):
        with pytest.raises(InvalidSourceError):
            open_source(bad)


def test_local_sha256(model_file: pathlib.Path) -> None:
    assert as_bytes(open_source(model_file, sha256=MODEL_SHA)) == MODEL
    assert as_bytes(open_source(MODEL, sha256=MODEL_SHA)) == MODEL
    with pytest.raises(ChecksumError) as info:
        open_source(model_file, sha256=WRONG_SHA)
    assert WRONG_SHA in str(info.value) and MODEL_SHA in str(info.value)
    with pytest.raises(ChecksumError):
        open_source(io.BytesIO(MODEL), sha256=WRONG_SHA)


def test_malformed_sha256_argument(model_file: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="64 hex"):
        open_source(model_file, sha256="abc")


def test_max_bytes_for_local_sources(model_file: pathlib.Path) -> None:
    small = len(MODEL) - 1
    for src in (model_file, MODEL, io.BytesIO(MODEL)):
        with pytest.raises(SizeLimitError):
            open_source(src, max_bytes=small)
    assert len(open_source(model_file, max_bytes=len(MODEL)).data) == len(MODEL)


def test_every_error_is_a_modelloader_error(tmp_path: pathlib.Path) -> None:
    for exc in (
        ChecksumError,
        FetchError,
        FetchTimeoutError,
        InvalidSourceError,
        ModelFormatError,
        ModelNotFoundError,
        SizeLimitError,
    ):
        assert issubclass(exc, ModelLoaderError)


# --- through the public API ----------------------------------------------------------


def test_load_from_url_end_to_end(
    server: Server, cache: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    """``modelloader.load`` accepts a URL and downloads through this module."""
    onnx = pytest.importorskip("onnx")
    np = pytest.importorskip("numpy")
    from onnx import TensorProto, helper

    import modelloader

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    model_bytes = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    served = tmp_path / "relu.onnx"
    onnx.save(model_bytes, served)

    class ModelHandler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: object, **k: object) -> None:
            super().__init__(*a, directory=str(tmp_path), **k)  # type: ignore[misc]

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ModelHandler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/relu.onnx"
        model = modelloader.load(
            url, cache_dir=cache, sha256=hashlib.sha256(served.read_bytes()).hexdigest()
        )
        out = model.predict({"x": np.array([-1.0, 2.0], dtype=np.float32)})
        np.testing.assert_array_equal(out["y"], np.array([0.0, 2.0], dtype=np.float32))
        assert model.size_bytes == os.path.getsize(served)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
