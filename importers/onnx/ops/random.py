"""Random-generator rows."""

from modelloader.importers.onnx.table import passthrough

passthrough(
    "Bernoulli",
    "RandomUniform",
    "RandomUniformLike",
    "RandomNormal",
    "RandomNormalLike",
    "Multinomial",
)
