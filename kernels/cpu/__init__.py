"""NumPy kernels, one module per op family; importing this package registers them all."""

import importlib
import pkgutil

from modelloader.kernels.cpu._registry import kernel, registry

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_mod.name}")

__all__ = ["kernel", "registry"]
