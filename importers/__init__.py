"""Format importers (installed as ``modelloader.importers``): file bytes -> ``modelloader.ir``."""
