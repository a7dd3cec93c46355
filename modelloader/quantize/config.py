"""``QuantConfig``: every choice of a quantization run, typed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Mode = Literal["dynamic", "static", "float16"]
Method = Literal["minmax", "percentile", "entropy"]


@dataclass(frozen=True)
class QuantConfig:
    """How ``modelloader.quantize`` shrinks a model and when it refuses the result.

    * ``mode``: ``"static"`` (calibrated int8 activations and weights, written as ONNX QDQ),
      ``"dynamic"`` (int8 weights, activations quantized at run time with
      DynamicQuantizeLinear + MatMulInteger/ConvInteger) or ``"float16"``.
    * ``method``: activation range estimate for static mode: ``"minmax"``, ``"percentile"``
      (``percentile`` of the values, per tail) or ``"entropy"`` (KL divergence, TensorRT style).
    * ``per_channel``: one weight scale per output channel (default) or one per tensor.
    * ``symmetric``: int8 activations with zero point 0 (default: uint8, asymmetric).
      Weights are symmetric 8-bit: ``weight_type`` ``"uint8"`` (zero point 128, the default:
      onnxruntime's AVX2 u8s8 kernels saturate int16 pair sums, u8u8 ones do not) or ``"int8"``.
    * ``exclude``: ``fnmatch`` patterns on a layer's name, first output name or op type; matching
      layers stay in float.
    * ``max_drop``: the accuracy gate, in percentage points of top-1 (accuracy against labels
      when the evaluation data has them, else agreement with the float model). ``None``: no gate.
    * ``auto_exclude``: when the gate is missed, keep the layer with the lowest SNR in float and
      retry, one layer at a time, until it passes.
    * ``eval_split``: fraction of the calibration samples held out for the report when no
      evaluation data is given.
    * ``float16_compute``: float16 mode computes in float16 (else only weights are stored as
      float16 and cast back at load). ``keep_io_types``: float32 inputs/outputs in float16 mode.
    """

    mode: Mode = "static"
    method: Method = "minmax"
    per_channel: bool = True
    symmetric: bool = False
    exclude: tuple[str, ...] = ()
    max_drop: float | None = None
    auto_exclude: bool = False
    eval_split: float = 0.2
    percentile: float = 99.999
    num_bins: int = 2048
    batch_size: int = 64
    weight_type: Literal["int8", "uint8"] = "uint8"
    float16_compute: bool = False
    keep_io_types: bool = True
    layer_report_samples: int = 512

    def __post_init__(self) -> None:
        if self.mode not in ("dynamic", "static", "float16"):
            raise ValueError(f"mode must be dynamic, static or float16, not {self.mode!r}")
        if self.method not in ("minmax", "percentile", "entropy"):
            raise ValueError(f"method must be minmax, percentile or entropy, not {self.method!r}")
        if not 0.0 <= self.eval_split < 1.0:
            raise ValueError("eval_split must be in [0, 1)")
        if self.max_drop is not None and self.max_drop < 0:
            raise ValueError("max_drop must be >= 0")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError("percentile must be in (50, 100]")
        if isinstance(self.exclude, str):
            object.__setattr__(self, "exclude", (self.exclude,))
        else:
            object.__setattr__(self, "exclude", tuple(self.exclude))
