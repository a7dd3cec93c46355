"""Conv epilogues compiled through llvmlite (the LLVM binding numba is built on), for
processes that have not loaded numba.

A conv's epilogue (bias, residual, clamp) is three NumPy passes over its output; one
compiled pass is 3-8x faster on ResNet's outputs. numba compiles that pass too
(``_jit.epilogue``), but importing numba and starting its compiler costs ~115 MB of RSS,
which a float CNN that needs nothing else compiled should not pay. This module hands LLVM
the one loop as IR and runs it through ``ctypes``: ~75 MB and ~0.1 s, paid on the first
output large enough to gain from it (``MIN_SIZE``), never for small models.

Results are bit-identical to the NumPy passes (and to ``_jit.epilogue``): the same float
additions in the same order, without fast-math, then ``v < lo ? lo : v`` and
``v > hi ? hi : v``, so NaN passes a clamp as in ``np.clip``. ``MODELLOADER_JIT=0``
disables this module with the numba kernels.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from collections.abc import Callable

import numpy as np

from modelloader.kernels.cpu import _jit

__all__ = ["MIN_SIZE", "available", "epilogue_fn", "loaded"]

#: outputs of at least this many elements take the compiled pass (and the first one loads it)
MIN_SIZE = 1 << 15

#: whether llvmlite can be used in this process
available: bool = _jit._enabled() and importlib.util.find_spec("llvmlite") is not None

_lock = threading.Lock()
_fns: dict[tuple[str, bool], Callable[..., None]] = {}
_engine: list = []  # the execution engine owning the machine code (kept alive)

_TYPES = {
    np.dtype(np.float32): ("float", ctypes.c_float),
    np.dtype(np.float64): ("double", ctypes.c_double),
}

# rows = N*M rows of ln elements; row r adds b[r mod M], then (with %z) z's element
_IR = """
define void @{name}({t}* noalias nocapture %dst, {t}* noalias nocapture readonly %b,
                    {t}* noalias nocapture readonly %z, i64 %rows, i64 %m, i64 %ln,
                    {t} %lo, {t} %hi) {{
entry:
  %none = icmp eq i64 %rows, 0
  %empty = icmp eq i64 %ln, 0
  %skip = or i1 %none, %empty
  br i1 %skip, label %exit, label %row
row:
  %r = phi i64 [0, %entry], [%r1, %rowend]
  %c = urem i64 %r, %m
  %bp = getelementptr inbounds {t}, {t}* %b, i64 %c
  %bias = load {t}, {t}* %bp
  %start = mul i64 %r, %ln
  br label %loop
loop:
  %i = phi i64 [0, %row], [%i1, %loop]
  %k = add i64 %start, %i
  %p = getelementptr inbounds {t}, {t}* %dst, i64 %k
  %v = load {t}, {t}* %p
  %s = fadd {t} %v, %bias
{residual}
  %lt = fcmp olt {t} {acc}, %lo
  %s2 = select i1 %lt, {t} %lo, {t} {acc}
  %gt = fcmp ogt {t} %s2, %hi
  %s3 = select i1 %gt, {t} %hi, {t} %s2
  store {t} %s3, {t}* %p
  %i1 = add nuw i64 %i, 1
  %more = icmp ult i64 %i1, %ln
  br i1 %more, label %loop, label %rowend
rowend:
  %r1 = add nuw i64 %r, 1
  %rmore = icmp ult i64 %r1, %rows
  br i1 %rmore, label %row, label %exit
exit:
  ret void
}}
"""
_RESIDUAL = """  %zp = getelementptr inbounds {t}, {t}* %z, i64 %k
  %zv = load {t}, {t}* %zp
  %s1 = fadd {t} %s, %zv"""


def _name(t: str, residual: bool) -> str:
    return f"epilogue_{t}{'_z' if residual else ''}"


def _compile() -> None:
    """Compiles the four loops (float/double, with/without residual) into one module."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    parts = []
    for t, _ in _TYPES.values():
        for residual in (False, True):
            body = _RESIDUAL.format(t=t) if residual else ""
            acc = "%s1" if residual else "%s"
            parts.append(_IR.format(name=_name(t, residual), t=t, residual=body, acc=acc))
    module = llvm.parse_assembly("\n".join(parts))
    module.verify()
    target = llvm.Target.from_default_triple()
    machine = target.create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3
    )
    tuning = llvm.create_pipeline_tuning_options(speed_level=3)
    tuning.loop_vectorization = True
    builder = llvm.create_pass_builder(machine, tuning)
    builder.getModulePassManager().run(module, builder)
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    _engine.append(engine)
    for dt, (t, ct) in _TYPES.items():
        proto = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 3), *([ctypes.c_int64] * 3), ct, ct)
        for residual in (False, True):
            _fns[(dt.str, residual)] = proto(engine.get_function_address(_name(t, residual)))


def loaded() -> bool:
    """Whether the loops are compiled in this process."""
    return bool(_fns)


def _kernel(dtype: np.dtype, residual: bool) -> Callable[..., None]:
    if not _fns:
        with _lock:
            if not _fns:
                _compile()
    return _fns[(dtype.str, residual)]


def epilogue_fn(
    b: np.ndarray | None, m: int, dtype: np.dtype, lo: float, hi: float
) -> Callable[..., np.ndarray]:
    """``_jit.epilogue_fn`` without channel maps or a separate source: ``fn(dst, z=None) ->
    dst`` sets dst[:, c] = clamp(dst[:, c] + b[c] + z[:, c], lo, hi) in place for dst
    (N, M, ...) C-contiguous of ``dtype`` (float32/float64) and z, if given, of dst's dtype
    and size. A missing b adds 0, as in ``_jit.epilogue``."""
    dt = np.dtype(dtype)
    if dt not in _TYPES:
        raise TypeError(f"compiled epilogue: float32 or float64, got {dt}")
    ct = _TYPES[dt][1]
    bias = np.zeros(m, dt) if b is None else np.ascontiguousarray(b, dt).reshape(m)
    bounds = (ct(lo), ct(hi))

    def run(dst: np.ndarray, z: np.ndarray | None = None) -> np.ndarray:
        # the loop does not check bounds: anything but a matching, contiguous pair stops here
        if dst.dtype != dt or not dst.flags.c_contiguous or dst.ndim < 2 or dst.shape[1] != m:
            raise ValueError(
                f"conv epilogue: output {dst.shape} {dst.dtype}, expected (N, {m}, ...) {dt}"
            )
        if z is not None and (z.size != dst.size or z.dtype != dt):
            raise ValueError(
                f"conv epilogue: residual {z.shape} {z.dtype} for output {dst.shape} {dt}"
            )
        zz = None if z is None else np.ascontiguousarray(z)
        rows = dst.shape[0] * m
        _kernel(dt, zz is not None)(
            dst.ctypes.data, bias.ctypes.data, None if zz is None else zz.ctypes.data,
            rows, m, dst.size // rows if rows else 0, *bounds,
        )  # fmt: skip
        return dst

    return run
