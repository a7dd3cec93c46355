"""A table row that refuses its op (an attribute value or variant no kernel runs) does not end
the import: the load fails listing every refused op, TFLite, CoreML NeuralNetwork and ML
Program alike, even when later ops needed a refused op's output."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import modelloader
from modelloader.errors import UnsupportedOpError
from modelloader.importers.coreml import mil_ops, mlprogram, neuralnetwork, nn_ops
from modelloader.importers.tflite import table as tfl_table

MODELS = Path(__file__).resolve().parent.parent / "models"
assert mil_ops and nn_ops  # imported for their side effect: the tables are filled now


def _refusing(tag: str):
    def row(*_args: object) -> None:
        raise UnsupportedOpError([(f"{tag} variant", "test", 0)])

    return row


def _listed(err: UnsupportedOpError) -> set[str]:
    return {op for op, _dom, _ver in err.ops}


def test_tflite_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DEPTHWISE_CONV_2D", "ADD"):
        row = tfl_table.TABLE[name]
        monkeypatch.setitem(tfl_table.TABLE, name, dataclasses.replace(row, fn=_refusing(name)))
    with pytest.raises(UnsupportedOpError) as err:
        modelloader.load(MODELS / "tflite" / "mobilenet_v2_f32.tflite")
    assert _listed(err.value) == {"DEPTHWISE_CONV_2D variant", "ADD variant"}


@pytest.mark.parametrize(
    "table, rows, model",
    [
        (neuralnetwork.NN_TABLE, ("convolution", "activation"), "resnet_nn.mlmodel"),
        (mlprogram.MIL_TABLE, ("conv", "relu"), "resnet_mlprogram_fp32.mlpackage"),
    ],
    ids=["neuralnetwork", "mlprogram"],
)
def test_coreml_rows(
    monkeypatch: pytest.MonkeyPatch, table: dict, rows: tuple[str, str], model: str
) -> None:
    for name in rows:
        monkeypatch.setitem(table, name, _refusing(name))
    with pytest.raises(UnsupportedOpError) as err:
        modelloader.load(MODELS / "coreml" / model)
    assert _listed(err.value) == {f"{name} variant" for name in rows}


def test_a_row_error_without_refusals_still_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only after a refusal are later row errors folded into the list: on their own they
    surface as the format error they are."""

    def broken(*_args: object) -> None:
        raise modelloader.errors.ModelFormatError("bad layer")

    monkeypatch.setitem(neuralnetwork.NN_TABLE, "convolution", broken)
    with pytest.raises(modelloader.errors.ModelFormatError, match="bad layer"):
        modelloader.load(MODELS / "coreml" / "resnet_nn.mlmodel")


def test_refusals_reported_merges_a_later_unsupported_op() -> None:
    from modelloader.ir.builder import refusals_reported

    missing = [("A variant", "test", 0)]
    with pytest.raises(UnsupportedOpError) as err, refusals_reported(missing):
        raise UnsupportedOpError([("B variant", "test", 0)])
    assert _listed(err.value) == {"A variant", "B variant"}
    with pytest.raises(KeyError), refusals_reported([]):  # nothing refused: the error stands
        raise KeyError("x")
