"""The CPU provider's registry and its decorator."""

from modelloader.kernels.registry import Registry

registry = Registry("cpu")
kernel = registry.register
prepares = registry.register_preparer
plan_pass = registry.register_plan_pass
