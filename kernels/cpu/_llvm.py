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
_fns: dict[tuple[str, bool, bool], Callable[..., None]] = {}
_engine: list = []  # the execution engine owning the machine code (kept alive)

_TYPES = {
    np.dtype(np.float32): ("float", ctypes.c_float),
    np.dtype(np.float64): ("double", ctypes.c_double),
}

# lines = N*M*L output lines of `width` elements; line l belongs to channel (l / L) mod M
# (bias) and reads `width` elements of the source at l * stride: the output itself (in
# place, stride = width) or, with {src}, a product with junk columns past each line
_IR = """
define void @{name}({t}* noalias nocapture %dst, {t}* noalias nocapture readonly %src,
                    {t}* noalias nocapture readonly %b, {t}* noalias nocapture readonly %z,
                    i64 %lines, i64 %per_row, i64 %m, i64 %width, i64 %stride,
                    {t} %lo, {t} %hi) {{
entry:
  %none = icmp eq i64 %lines, 0
  %empty = icmp eq i64 %width, 0
  %skip = or i1 %none, %empty
  br i1 %skip, label %exit, label %line
line:
  %l = phi i64 [0, %entry], [%l1, %lineend]
  %r = udiv i64 %l, %per_row
  %c = urem i64 %r, %m
  %bp = getelementptr inbounds {t}, {t}* %b, i64 %c
  %bias = load {t}, {t}* %bp
  %start = mul i64 %l, %width
  %sstart = mul i64 %l, %stride
  br label %loop
loop:
  %i = phi i64 [0, %line], [%i1, %loop]
  %k = add i64 %start, %i
  %p = getelementptr inbounds {t}, {t}* %dst, i64 %k
  %ks = add i64 %sstart, %i
  %q = getelementptr inbounds {t}, {t}* {load_from}, i64 {load_at}
  %v = load {t}, {t}* %q
  %s = fadd {t} %v, %bias
{residual}
  %lt = fcmp olt {t} {acc}, %lo
  %s2 = select i1 %lt, {t} %lo, {t} {acc}
  %gt = fcmp ogt {t} %s2, %hi
  %s3 = select i1 %gt, {t} %hi, {t} %s2
  store {t} %s3, {t}* %p
  %i1 = add nuw i64 %i, 1
  %more = icmp ult i64 %i1, %width
  br i1 %more, label %loop, label %lineend
lineend:
  %l1 = add nuw i64 %l, 1
  %lmore = icmp ult i64 %l1, %lines
  br i1 %lmore, label %line, label %exit
exit:
  ret void
}}
"""
_RESIDUAL = """  %zp = getelementptr inbounds {t}, {t}* %z, i64 %k
  %zv = load {t}, {t}* %zp
  %s1 = fadd {t} %s, %zv"""

_VARIANTS = [(residual, source) for residual in (False, True) for source in (False, True)]


def _name(t: str, residual: bool, source: bool) -> str:
    return f"epilogue_{t}{'_z' if residual else ''}{'_src' if source else ''}"


def _compile() -> None:
    """Compiles the eight loops (float/double, with/without residual, in place or from a
    source) into one module."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    parts = []
    for t, _ in _TYPES.values():
        for residual, source in _VARIANTS:
            parts.append(
                _IR.format(
                    name=_name(t, residual, source),
                    t=t,
                    src="src",
                    residual=_RESIDUAL.format(t=t) if residual else "",
                    acc="%s1" if residual else "%s",
                    load_from="%src" if source else "%dst",
                    load_at="%ks" if source else "%k",
                )  # fmt: skip
            )
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
        proto = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 4), *([ctypes.c_int64] * 5), ct, ct)
        for residual, source in _VARIANTS:
            fn = proto(engine.get_function_address(_name(t, residual, source)))
            _fns[(dt.str, residual, source)] = fn


def loaded() -> bool:
    """Whether the loops are compiled in this process."""
    return bool(_fns)


def _kernel(dtype: np.dtype, residual: bool, source: bool) -> Callable[..., None]:
    if not _fns:
        with _lock:
            if not _fns:
                _compile()
    return _fns[(dtype.str, residual, source)]


def epilogue_fn(
    b: np.ndarray | None, m: int, dtype: np.dtype, lo: float, hi: float
) -> Callable[..., np.ndarray]:
    """``fn(dst, z=None, src=None) -> dst``: dst[:, c] = clamp(src[:, c] + b[c] + z[:, c],
    lo, hi) for dst (N, M, ...) C-contiguous of ``dtype`` (float32/float64), z, if given, of
    dst's dtype and size, and src dst itself (None: in place) or an (N, M, L, W) view of
    dst's shape whose lines are W elements of a C-contiguous (N, M, L, W') buffer (the
    cropped product of a conv with junk columns). A missing b adds 0, as in
    ``_jit.epilogue``."""
    dt = np.dtype(dtype)
    if dt not in _TYPES:
        raise TypeError(f"compiled epilogue: float32 or float64, got {dt}")
    ct = _TYPES[dt][1]
    bias = np.zeros(m, dt) if b is None else np.ascontiguousarray(b, dt).reshape(m)
    bounds = (ct(lo), ct(hi))
    item = dt.itemsize

    def run(
        dst: np.ndarray, z: np.ndarray | None = None, src: np.ndarray | None = None
    ) -> np.ndarray:
        # the loop does not check bounds: anything but matching operands stops here
        if dst.dtype != dt or not dst.flags.c_contiguous or dst.ndim < 2 or dst.shape[1] != m:
            raise ValueError(
                f"conv epilogue: output {dst.shape} {dst.dtype}, expected (N, {m}, ...) {dt}"
            )
        if z is not None and (z.size != dst.size or z.dtype != dt):
            raise ValueError(
                f"conv epilogue: residual {z.shape} {z.dtype} for output {dst.shape} {dt}"
            )
        rows = dst.shape[0] * m
        per_row, width, stride = 1, (dst.size // rows if rows else 0), 0
        if src is not None:
            st = src.strides
            lined = (
                src.ndim == 4 and src.shape == dst.shape and src.dtype == dt
                and st[3] == item and st[2] >= src.shape[3] * item and st[2] % item == 0
                and st[1] == src.shape[2] * st[2] and st[0] == m * st[1]
            )  # fmt: skip
            if not lined:
                np.copyto(dst, src)
                src = None
            else:
                per_row, width, stride = dst.shape[2], dst.shape[3], st[2] // item
        zz = None if z is None else np.ascontiguousarray(z)
        _kernel(dt, zz is not None, src is not None)(
            dst.ctypes.data, None if src is None else src.ctypes.data, bias.ctypes.data,
            None if zz is None else zz.ctypes.data, rows * per_row, per_row, m, width,
            stride, *bounds,
        )  # fmt: skip
        return dst

    return run
