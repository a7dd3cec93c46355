"""CoreML importer: ``.mlmodel`` / ``.mlpackage`` (directory or zip) -> ``modelloader.ir.Graph``.

Model types: ``neuralNetwork`` (+ ``neuralNetworkClassifier``/``Regressor``), ``mlProgram``
and ``pipeline``/``pipelineClassifier``/``pipelineRegressor`` of those.

* Image inputs (``imageType``) take an **RGB** ``uint8`` array of shape ``(H, W, 3)``
  (``(H, W, 1)`` for grayscale); the model's channel order (BGR models get channels
  swapped) and NeuralNetwork preprocessing (``channelScale``, per-colour biases) are
  applied as CoreML applies them to a pixel buffer.
* Classifiers: the class-label output (``classLabel``) is a ``(1,)`` array holding the
  top label (str or int64) and the probabilities output (CoreML's ``{label: prob}``
  dictionary) is a float32 ``(num_classes,)`` array in class-label order; the labels
  are in ``graph.metadata["class_labels"]`` (``Model.metadata["class_labels"]``).
"""

from __future__ import annotations

from modelloader.importers.coreml.importer import import_model
from modelloader.importers.coreml.reader import open_coreml

__all__ = ["import_model", "open_coreml"]
