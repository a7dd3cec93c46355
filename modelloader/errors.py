"""Typed errors. Every failure a user can cause has its own class and a message that
says what to do next."""

from __future__ import annotations


class ModelLoaderError(Exception):
    """Base class of every error modelloader raises on purpose."""


class ModelNotFoundError(ModelLoaderError, FileNotFoundError):
    """The model path or URL names nothing."""


class ModelFormatError(ModelLoaderError, ValueError):
    """The bytes are not a model of any supported format, or the model is malformed."""


class TruncatedModelError(ModelFormatError):
    """The file ends, or an internal offset points, before the structure it describes."""


class FileIdentifierError(ModelFormatError):
    """A FlatBuffer's file identifier is not the one the format requires (TFLite: ``TFL3``)."""


class BufferRangeError(ModelFormatError):
    """A weight buffer's offset/size (or index) lies outside the model file."""


class TensorShapeError(ModelFormatError):
    """A constant tensor's declared shape and dtype disagree with the size of its data."""


class SparsityError(ModelFormatError):
    """A sparse tensor's metadata (traversal order, block map, segments, indices) is invalid."""


class UnsupportedOpError(ModelLoaderError, NotImplementedError):
    """The model uses ops this runtime does not implement; lists every one of them."""

    def __init__(self, ops: list[tuple[str, str, int]]) -> None:
        self.ops = sorted(set(ops))
        listed = ", ".join(
            f"{op} ({dom}, version {ver})"
            if dom.startswith("tflite")
            else f"{op} (domain {dom or 'ai.onnx'}, opset {ver})"
            for op, dom, ver in self.ops
        )
        super().__init__(
            f"model uses {len(self.ops)} unsupported op(s): {listed}. "
            "Convert the model to use supported ops or file an issue naming them."
        )


class InputError(ModelLoaderError, ValueError):
    """Base class of errors about the arrays passed to ``predict``."""


class InputNameError(InputError, KeyError):
    """An input name is unknown to the model, or a required input is missing."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class OutputNameError(InputError, KeyError):
    """``predict(outputs=...)`` named an output the model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class InputDTypeError(InputError, TypeError):
    """An input array has a dtype the model does not accept."""


class InputShapeError(InputError):
    """An input array's rank or a dimension conflicts with the model's declared shape."""


class ExecutionError(ModelLoaderError, RuntimeError):
    """A kernel failed while running a node; names the node and op."""


class FetchError(ModelLoaderError, OSError):
    """Downloading a model failed (HTTP error, connection refused)."""


class FetchTimeoutError(FetchError, TimeoutError):
    """Downloading a model took longer than the timeout."""


class ChecksumError(FetchError):
    """A downloaded model's sha256 does not match the one the caller expected."""


class SizeLimitError(FetchError):
    """A download is larger than the caller's size cap."""


class InvalidSourceError(ModelLoaderError, TypeError):
    """``src`` is not a path, URL, bytes-like or binary file object (e.g. a text-mode file)."""


class ExportError(ModelLoaderError, ValueError):
    """The IR cannot be written as ONNX (ops without an ONNX equivalent, a bad opset);
    ``ops`` lists every op that blocked the export."""

    def __init__(self, message: str, ops: list[str] | None = None) -> None:
        super().__init__(message)
        self.ops = list(ops or [])


class MissingExtraError(ModelLoaderError, ImportError):
    """Loading this format needs an optional dependency; the message names the extra to install."""


class PackageError(ModelFormatError):
    """A model package (CoreML ``.mlpackage`` directory or zip) is incomplete or unsafe:
    missing manifest or weights, or an entry escaping the package directory."""


class ContainerError(ModelFormatError):
    """A modelloader compressed container (``.mldc``, docs/container.md) is malformed."""


class ContainerMagicError(ContainerError):
    """The file does not start with the container magic ``MLDC\\x00\\x01``."""


class ContainerVersionError(ContainerError):
    """The container's format version is newer than this modelloader reads; upgrade."""


class ContainerTruncatedError(ContainerError, TruncatedModelError):
    """The container ends before its header, blobs or checksum."""


class HeaderSizeError(ContainerError):
    """The declared header length exceeds the cap or the file."""


class HeaderSchemaError(ContainerError):
    """The header is not UTF-8 JSON, or a field is missing, of the wrong type or unknown."""


class SizeCapError(ContainerError):
    """A declared size (elements, rank, alphabet, chunk count) exceeds the reader's caps."""


class BlobRangeError(ContainerError, BufferRangeError):
    """A blob's offset/length lies outside the data section, or blobs leave gaps."""


class BlobOverlapError(ContainerError):
    """Two blobs of the container overlap (or one is referenced twice)."""


class ContainerChecksumError(ContainerError):
    """The sha256 at the end of the container does not match its contents (corrupt file)."""


class CodebookError(ContainerError):
    """A palette codebook is inconsistent with its bit width, or an index exceeds it."""


class HuffmanTableError(ContainerError):
    """A Huffman code-length table is incomplete, not prefix-free or has over-long codes."""


class DecodedLengthError(ContainerError):
    """A decoded stream's length (symbols, bits, bytes) differs from what the header declares."""


class SparseIndexError(ContainerError, SparsityError):
    """Relative sparse indices run past the tensor, or their bit width is out of range."""


class CompressionAccuracyError(ModelLoaderError):
    """Compression cost more accuracy than ``max_drop`` allows; try weaker settings."""


class GraphStructureError(ContainerError):
    """A container's header passed every field check but its graph cannot be planned."""
