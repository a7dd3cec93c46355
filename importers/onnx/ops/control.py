"""Control-flow rows. Loop/If/Scan subgraphs are imported by the reader."""

from modelloader.importers.onnx.table import passthrough

passthrough("If", "Loop", "Scan", "SequenceMap")
