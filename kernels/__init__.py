"""Kernel providers (installed as ``modelloader.kernels``): ``cpu`` (NumPy) and later ``gpu``."""
