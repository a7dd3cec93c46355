"""Loops compiled through llvmlite (the LLVM binding numba is built on), for processes that
have not loaded numba: conv epilogues, batch norm with a clamp, 2-D max pooling, and the
channels-last conv chains of ``_llvm_chain`` (compiled into the same module).

A conv's epilogue (crop, bias, residual, clamp) is two to four NumPy passes over its
output, an inference batch norm with ReLU three, a 3x3 stride-2 max pool six; one compiled
pass is 3-8x faster on ResNet's, DenseNet's and SqueezeNet's maps. numba compiles such loops too (``_jit``), but importing numba and
starting its compiler costs ~115 MB of RSS, which a float CNN that needs nothing else
compiled should not pay. This module hands LLVM the loops as IR and calls them through
``ctypes``: ~75 MB and ~0.1 s, paid at the first map large enough to gain from it
(``MIN_SIZE``), never by small models.

Results are those of the NumPy passes they replace: the same float operations in the same
order, without fast-math; clamps are ``v < lo ? lo : v`` then ``v > hi ? hi : v`` (NaN
passes, as in ``np.clip`` and ``_jit``, bit for bit; a ReLU by ``np.maximum`` can differ in
the sign of a zero only), maxima are NumPy's vector ``np.maximum`` (NaN propagates; of two
equal values the second: bit for bit). ``MODELLOADER_JIT=0`` disables this
module with the numba kernels.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
import warnings
from collections.abc import Callable, Sequence

import numpy as np

from modelloader.kernels.cpu import _jit
from modelloader.kernels.cpu import _llvm_chain as _chain
from modelloader.kernels.cpu import _llvm_wino as _wino

__all__ = ["MIN_SIZE", "available", "enabled", "epilogue_fn", "loaded", "max_pool"]

#: outputs of at least this many elements take the compiled pass (and the first one loads it)
MIN_SIZE = 1 << 15

#: whether llvmlite can be used in this process
available: bool = _jit._enabled() and importlib.util.find_spec("llvmlite") is not None

_lock = threading.Lock()
_fns: dict[tuple, Callable[..., None]] = {}
_engine: list = []  # the execution engine owning the machine code (kept alive)

_TYPES = {
    np.dtype(np.float32): ("float", ctypes.c_float),
    np.dtype(np.float64): ("double", ctypes.c_double),
}

# the loop over output lines closing every function below (%l: the line, %lines: their count)
_LINE_END = """lineend:
  %l1 = add nuw i64 %l, 1
  %lmore = icmp ult i64 %l1, %lines
  br i1 %lmore, label %line, label %exit
exit:
  ret void
}"""

# lines = N*M*L output lines of `width` elements; line l belongs to channel (l / L) mod M
# (bias) and reads `width` elements of the source at l * stride: the output itself (in
# place, stride = width) or, in the `_src` variants, a product with junk columns past
# each line
_IR = """
define void @{name}({t}* noalias nocapture %dst, {t}* noalias nocapture readonly %src,
                    {t}* noalias nocapture readonly %b, {t}* noalias nocapture readonly %z,
                    {t}* noalias nocapture readonly %a,
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
{load_scale}
  %start = mul i64 %l, %width
  %sstart = mul i64 %l, %stride
  br label %loop
loop:
  %i = phi i64 [0, %line], [%i1, %loop]
  %k = add i64 %start, %i
  %p = getelementptr inbounds {t}, {t}* %dst, i64 %k
  %ks = add i64 %sstart, %i
  %q = getelementptr inbounds {t}, {t}* {load_from}, i64 {load_at}
  %v0 = load {t}, {t}* %q
{apply_scale}
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
{line_end}"""
_RESIDUAL = """  %zp = getelementptr inbounds {t}, {t}* %z, i64 %k
  %zv = load {t}, {t}* %zp
  %s1 = fadd {t} %s, %zv"""

# (residual, source, scale): the conv epilogues, and batch norm's x * a[c] + b[c]
_VARIANTS = [(z, src, False) for z in (False, True) for src in (False, True)]
_VARIANTS += [(False, src, True) for src in (False, True)]
_SCALE = """  %ap = getelementptr inbounds {t}, {t}* %a, i64 %c
  %scale = load {t}, {t}* %ap"""

# np.maximum(a, b) as NumPy's vector loops compute it: a if a > b or a is NaN, else b (NaN
# propagates from either side; of two equal values, zeros of either sign, b)
_MAX = """  %{o}.ge = fcmp ogt {t} %{a}, %{b}
  %{o}.nan = fcmp uno {t} %{a}, %{a}
  %{o}.keep = or i1 %{o}.ge, %{o}.nan
  %{o} = select i1 %{o}.keep, {t} %{a}, {t} %{b}"""

# 2-D max pool of `planes` (H, W) planes into (OH, OW) ones for a k x k kernel at stride s
# (both constants, undilated), in the order of pool._fold2d's NumPy folds (so bit-identical
# to them): per output line, one pass takes the maximum of the k input rows (a row above or
# below the plane reads `fill`, W elements of -inf) into `row` (-inf where padded), one more
# the maximum of k neighbours along it at stride s into the output line.
_POOL = """
define void @maxpool_{t}_k{k}s{s}({t}* noalias nocapture %dst,
                                   {t}* noalias nocapture readonly %src,
                                   {t}* noalias nocapture %row,
                                   {t}* noalias nocapture readonly %fill, i64 %planes,
                                   i64 %h, i64 %w, i64 %oh, i64 %ow, i64 %ph, i64 %pw) {{
entry:
  %lines = mul i64 %planes, %oh
  %none = icmp eq i64 %lines, 0
  br i1 %none, label %exit, label %line
line:
  %l = phi i64 [0, %entry], [%l1, %lineend]
  %p = udiv i64 %l, %oh
  %oy = urem i64 %l, %oh
  %ybase = mul i64 %oy, {s}
  %ytop = sub i64 %ybase, %ph
  %plane = mul i64 %p, %h
{rows}
  %wpos = icmp ne i64 %w, 0
  br i1 %wpos, label %xs, label %cols0
xs:
  %x = phi i64 [0, %line], [%x1, %xs]
{vertical}
  %rx = add i64 %pw, %x
  %rp = getelementptr inbounds {t}, {t}* %row, i64 %rx
  store {t} %v{k}, {t}* %rp
  %x1 = add nuw i64 %x, 1
  %xmore = icmp ult i64 %x1, %w
  br i1 %xmore, label %xs, label %cols0
cols0:
  %dline = mul i64 %l, %ow
  %owpos = icmp ne i64 %ow, 0
  br i1 %owpos, label %cols, label %lineend
cols:
  %o = phi i64 [0, %cols0], [%o1, %cols]
  %c = mul i64 %o, {s}
{horizontal}
  %di = add i64 %dline, %o
  %dp = getelementptr inbounds {t}, {t}* %dst, i64 %di
  store {t} %h{k}, {t}* %dp
  %o1 = add nuw i64 %o, 1
  %omore = icmp ult i64 %o1, %ow
  br i1 %omore, label %cols, label %lineend
{line_end}"""
# kernel row j's pointer: the source row where it lies in the plane, else the -inf row
_POOL_ROW = """  %y{j} = add i64 %ytop, {j}
  %in{j} = icmp ult i64 %y{j}, %h
  %sr{j} = add i64 %plane, %y{j}
  %so{j} = mul i64 %sr{j}, %w
  %sp{j} = getelementptr inbounds {t}, {t}* %src, i64 %so{j}
  %r{j} = select i1 %in{j}, {t}* %sp{j}, {t}* %fill"""
_POOL_TAP = """  %{o}p{j} = getelementptr inbounds {t}, {t}* %{base}, i64 %{at}
  %{o}x{j} = load {t}, {t}* %{o}p{j}"""
#: (kernel, stride) of the compiled max pools: square, undilated; others run NumPy's folds
POOL_SHAPES = ((3, 2), (3, 1), (2, 2))


def _pool_ir(t: str, k: int, s: int) -> str:
    """IR of the k x k, stride-s max pool: both folds unrolled over the kernel."""
    vertical, horizontal = [], []
    for j in range(k):
        vertical.append(_POOL_TAP.format(o="v", j=j, t=t, base=f"r{j}", at="x"))
        horizontal.append(f"  %c{j} = add i64 %c, {j}")
        horizontal.append(_POOL_TAP.format(o="h", j=j, t=t, base="row", at=f"c{j}"))
        # NumPy's folds: the rows from -inf (np.maximum(-inf, a) is a, bit for bit), the
        # columns from the first
        vertical.append(_MAX.format(o=f"v{j + 1}", a=f"v{j}" if j else "ninf", b=f"vx{j}", t=t))
        if j:
            prev = f"h{j}" if j > 1 else "hx0"
            horizontal.append(_MAX.format(o=f"h{j + 1}", a=prev, b=f"hx{j}", t=t))
    return _POOL.format(
        t=t, k=k, s=s, rows="\n".join(_POOL_ROW.format(j=j, t=t) for j in range(k)),
        vertical="\n".join(vertical).replace("%ninf", "0xFFF0000000000000"),
        horizontal="\n".join(horizontal), line_end=_LINE_END,
    )  # fmt: skip


def _name(t: str, residual: bool, source: bool, scale: bool) -> str:
    return f"epilogue_{t}{'_z' * residual}{'_src' * source}{'_scale' * scale}"


def _base_ir() -> str:
    """The epilogue loops (float/double, with/without residual, in place or from a source,
    scaled) and the max pools (float/double)."""
    parts = []
    for t, _ in _TYPES.values():
        for residual, source, scale in _VARIANTS:
            parts.append(
                _IR.format(
                    name=_name(t, residual, source, scale),
                    load_scale=_SCALE.format(t=t) if scale else "",
                    apply_scale=(
                        f"  %v = fmul {t} %v0, %scale" if scale else f"  %v = fadd {t} %v0, -0.0"
                    ),
                    t=t,
                    residual=_RESIDUAL.format(t=t) if residual else "",
                    acc="%s1" if residual else "%s",
                    load_from="%src" if source else "%dst",
                    line_end=_LINE_END,
                    load_at="%ks" if source else "%k",
                )
            )
        for k, stride in POOL_SHAPES:
            parts.append(_pool_ir(t, k, stride))
    return "\n".join(parts)


def _bind_base(engine: object, fns: dict) -> None:
    get = engine.get_function_address  # type: ignore[attr-defined]
    for dt, (t, ct) in _TYPES.items():
        proto = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 5), *([ctypes.c_int64] * 5), ct, ct)
        for variant in _VARIANTS:
            fns[(dt.str, *variant)] = proto(get(_name(t, *variant)))
        pool = ctypes.CFUNCTYPE(None, *([ctypes.c_void_p] * 4), *([ctypes.c_int64] * 7))
        for k, stride in POOL_SHAPES:
            fns[("maxpool", dt.str, k, stride)] = pool(get(f"maxpool_{t}_k{k}s{stride}"))


#: the separately compiled modules: (IR text, binding of its functions into ``_fns``), so a
#: process pays LLVM only for the loops its models use (``_kernel`` keys name their unit)
_UNITS: dict[str, tuple[Callable[[], str], Callable[[object, dict], None]]] = {
    "base": (_base_ir, _bind_base),
    "chain": (_chain.ir, _chain.bind),
    "wino": (_wino.ir, _wino.bind),
}
_UNIT_OF = {"conv_chain": "chain", "wino_in": "wino", "wino_out": "wino"}
_done: set[str] = set()


def _compile(unit: str) -> None:
    """Compiles one unit's module and enters its functions into ``_fns``."""
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    text, bind = _UNITS[unit]
    module = llvm.parse_assembly(text())
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
    bind(engine, _fns)
    _done.add(unit)


def enabled(size: int) -> bool:
    """Whether a map of ``size`` elements takes the compiled loops: llvmlite is importable,
    not switched off, and the map has at least ``MIN_SIZE`` elements. The first True
    compiles them; if that fails (an llvmlite without the API used here), the module is
    off for the process, with a warning, and the NumPy passes run."""
    return available and size >= MIN_SIZE and _compiled()


def _compiled(unit: str = "base") -> bool:
    """Compiles a unit's loops once (callers may race); False if that failed, which switches
    the module off with a warning."""
    global available
    if unit not in _done:
        with _lock:
            if unit not in _done and available:
                try:
                    _compile(unit)
                except Exception as e:  # noqa: BLE001
                    available = False
                    warnings.warn(
                        f"modelloader: the llvmlite loops could not be compiled ({e!r}); "
                        "NumPy runs them instead",
                        RuntimeWarning,
                        stacklevel=3,
                    )
    return unit in _done


def loaded() -> bool:
    """Whether any of the loops are compiled in this process."""
    return bool(_done)


def _kernel(*key: object) -> Callable[..., None]:
    unit = _UNIT_OF.get(key[0], "base")  # type: ignore[call-overload]
    if not _compiled(unit):
        raise RuntimeError("the llvmlite loops are not available (check enabled() first)")
    return _fns[key]


def epilogue_fn(
    b: np.ndarray | None,
    m: int,
    dtype: np.dtype,
    lo: float,
    hi: float,
    scale: np.ndarray | None = None,
) -> Callable[..., np.ndarray]:
    """``fn(dst, z=None, src=None) -> dst``: dst[:, c] = clamp(src[:, c] + b[c] + z[:, c],
    lo, hi) for dst (N, M, ...) C-contiguous of ``dtype`` (float32/float64), z, if given, of
    dst's dtype and size, and src dst itself (None: in place) or an (N, M, L, W) view of
    dst's shape whose lines are W elements of a C-contiguous (N, M, L, W') buffer (the
    cropped product of a conv with junk columns). A missing b adds 0, as in
    ``_jit.epilogue``. With ``scale`` (M,) (batch norm), src[:, c] is multiplied by
    scale[c] first (rounded, then b added: NumPy's two passes), without z."""
    dt = np.dtype(dtype)
    if dt not in _TYPES:
        raise TypeError(f"compiled epilogue: float32 or float64, got {dt}")
    ct = _TYPES[dt][1]
    bias = np.zeros(m, dt) if b is None else np.ascontiguousarray(b, dt).reshape(m)
    mul = None if scale is None else np.ascontiguousarray(scale, dt).reshape(m)
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
        if mul is not None and zz is not None:
            raise ValueError("scaled epilogue: no residual")
        _kernel(dt.str, zz is not None, src is not None, mul is not None)(
            dst.ctypes.data, None if src is None else src.ctypes.data, bias.ctypes.data,
            None if zz is None else zz.ctypes.data, None if mul is None else mul.ctypes.data,
            rows * per_row, per_row, m, width, stride, *bounds,
        )  # fmt: skip
        return dst

    return run


def max_pool(
    x: np.ndarray,
    k: Sequence[int],
    s: Sequence[int],
    p: Sequence[int],
    out_sp: Sequence[int],
    out: np.ndarray,
) -> np.ndarray:
    """2-D max pool of x (N, C, H, W) C-contiguous float32/float64 into out (N, C, *out_sp)
    C-contiguous of x's dtype, for an undilated square kernel and equal strides in
    ``POOL_SHAPES`` and non-negative pads p [top, left, bottom, right] (padding never wins,
    as -inf); bit-identical to ``pool._fold2d``'s NumPy folds, NaN propagating."""
    n, c, h, w = x.shape
    oh, ow = out_sp
    if x.dtype not in _TYPES or out.dtype != x.dtype or not x.flags.c_contiguous:
        raise ValueError(f"compiled max pool: C-contiguous float32/float64 input, got {x.dtype}")
    if out.shape != (n, c, oh, ow) or not out.flags.c_contiguous or min(p) < 0:
        raise ValueError(f"compiled max pool: output {out.shape} for {(n, c, oh, ow)}, pads {p}")
    if k[0] != k[1] or s[0] != s[1] or (k[0], s[0]) not in POOL_SHAPES:
        raise ValueError(f"compiled max pool: kernel {k}, strides {s} not in {POOL_SHAPES}")
    # the loop reads row[o * s + j] for every output column (ceil mode reads past the pads)
    row = np.full(max(w + p[1] + p[3], (ow - 1) * s[1] + k[1], 1), -np.inf, x.dtype)
    fill = np.full(max(w, 1), -np.inf, x.dtype)
    _kernel("maxpool", x.dtype.str, k[0], s[0])(
        out.ctypes.data, x.ctypes.data, row.ctypes.data, fill.ctypes.data, n * c, h, w, oh,
        ow, p[0], p[1],
    )  # fmt: skip
    return out
