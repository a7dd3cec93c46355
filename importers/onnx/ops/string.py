"""Importer rows for string ops."""

from modelloader.importers.onnx.table import passthrough

passthrough("StringConcat", "StringNormalizer", "StringSplit", "RegexFullMatch")
