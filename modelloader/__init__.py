"""modelloader: load ONNX, TFLite and CoreML models and run them with one API.

>>> import modelloader
>>> m = modelloader.load("model.onnx")
>>> m.predict({"x": x})
"""

from modelloader.api import (
    Model,
    NodeTime,
    TensorInfo,
    get_num_threads,
    load,
    set_num_threads,
)
from modelloader.errors import (
    ChecksumError,
    ExecutionError,
    FetchError,
    FetchTimeoutError,
    InputDTypeError,
    InputError,
    InputNameError,
    InputShapeError,
    InvalidSourceError,
    ModelFormatError,
    ModelLoaderError,
    ModelNotFoundError,
    OutputNameError,
    SizeLimitError,
    UnsupportedOpError,
)
from modelloader.quantize import QuantConfig, quantize

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "ExecutionError",
    "FetchError",
    "FetchTimeoutError",
    "InputDTypeError",
    "InputError",
    "InputNameError",
    "InputShapeError",
    "InvalidSourceError",
    "Model",
    "NodeTime",
    "ModelFormatError",
    "ModelLoaderError",
    "ModelNotFoundError",
    "OutputNameError",
    "QuantConfig",
    "SizeLimitError",
    "TensorInfo",
    "UnsupportedOpError",
    "get_num_threads",
    "load",
    "quantize",
    "set_num_threads",
]
