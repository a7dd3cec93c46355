"""Deep Compression for modelloader: pruning, k-means palettes, Huffman coding, a checked
container (``.mldc``, docs/container.md) and sparse execution."""

from modelloader.compress.container import is_container, load_model, read_container, write_container
from modelloader.compress.pipeline import CompressResult, SizeReport, compress
from modelloader.compress.sparse import SparseTensor

__all__ = [
    "CompressResult",
    "SizeReport",
    "SparseTensor",
    "compress",
    "is_container",
    "load_model",
    "read_container",
    "write_container",
]
