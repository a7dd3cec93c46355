"""Channels-last float32 convolution loops for chains of pointwise and depthwise convs
(MobileNet's inverted-residual blocks), compiled through llvmlite with ``_llvm``'s loops.

A chain runs as one call: ``chain(program, n)`` walks ``n`` descriptors (``FIELDS`` int64
each, see ``Program``) and runs each layer on channels-last (pixels, channels) buffers, so
vectors run along channels (multiples of 8) whatever the map's size, and no layer pays
Python's per-step costs. Layers:

* pointwise: dst (P, M) = clamp(x (P, C) @ W (C, M) + b (+ z), lo, hi): register tiles of 4
  pixels x 16 channels (eight 8-lane accumulators; a last block of 8 channels where M % 16
  is 8), a pixel at a time past the last multiple of 4; one FMA per term, over C in order.
* depthwise 3x3 at stride 1 or 2 with pads 0/1 on top/left (bottom/right follow from the
  output size): per output pixel and 16 (or 8) channels, three chains of three FMAs (one
  per kernel row, the bias starting the first) then their sum; a tap outside the input
  reads a row of zeros.

Results differ from NumPy's (pairwise sums, BLAS blocking) only by the order of float
additions. Shapes, strides and pointers are not checked here: ``Program`` and its callers
check them before anything runs.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence

import numpy as np

__all__ = ["FIELDS", "Program", "bind", "ir"]

#: int64 fields per layer descriptor
FIELDS = 20
PW, PW_RESIDUAL, DW_S1, DW_S2 = 0, 1, 2, 3

_DECLS = "declare <8 x float> @llvm.fma.v8f32(<8 x float>, <8 x float>, <8 x float>)"
_SPLAT = """  %{o}.0 = insertelement <8 x {t}> poison, {t} {v}, i64 0
  %{o} = shufflevector <8 x {t}> %{o}.0, <8 x {t}> poison, <8 x i32> zeroinitializer"""


def _clamp_store(p: str, acc: str, ptr: str) -> list[str]:
    """clamp(acc, lo, hi) as ``v < lo ? lo : v`` then ``v > hi ? hi : v``, stored at ptr."""
    return [
        f"  {p}.lt = fcmp olt <8 x float> {acc}, %lov",
        f"  {p}.c1 = select <8 x i1> {p}.lt, <8 x float> %lov, <8 x float> {acc}",
        f"  {p}.gt = fcmp ogt <8 x float> {p}.c1, %hiv",
        f"  {p}.c2 = select <8 x i1> {p}.gt, <8 x float> %hiv, <8 x float> {p}.c1",
        f"  store <8 x float> {p}.c2, ptr {ptr}, align 4",
    ]


def _vload(out: str, base: str, index: str) -> list[str]:
    return [
        f"  {out}.p = getelementptr inbounds float, ptr {base}, i64 {index}",
        f"  {out} = load <8 x float>, ptr {out}.p, align 4",
    ]


# --------------------------------------------------------------------------- pointwise


def _pw_tile(tag: str, rows: int, nv: int, residual: bool, p: str, mo: str) -> list[str]:
    """Pixels p .. p+rows x channels mo .. mo+8*nv, from {tag}.pre to a branch to {tag}.done."""
    out = [f"{tag}.pre:", f"  br label %{tag}.k", f"{tag}.k:"]
    out.append(f"  %{tag}.kk = phi i64 [0, %{tag}.pre], [%{tag}.k1, %{tag}.k]")
    for r in range(rows):
        for v in range(nv):
            out.append(
                f"  %{tag}.a{r}{v} = phi <8 x float> [zeroinitializer, %{tag}.pre], "
                f"[%{tag}.n{r}{v}, %{tag}.k]"
            )
    out += [f"  %{tag}.wr = mul i64 %{tag}.kk, %m", f"  %{tag}.wo = add i64 %{tag}.wr, {mo}"]
    for v in range(nv):
        out.append(f"  %{tag}.wi{v} = add i64 %{tag}.wo, {8 * v}")
        out += _vload(f"%{tag}.w{v}", "%w", f"%{tag}.wi{v}")
    for r in range(rows):
        out += [
            f"  %{tag}.px{r} = add i64 {p}, {r}",
            f"  %{tag}.xr{r} = mul i64 %{tag}.px{r}, %c",
            f"  %{tag}.xi{r} = add i64 %{tag}.xr{r}, %{tag}.kk",
            f"  %{tag}.xp{r} = getelementptr inbounds float, ptr %x, i64 %{tag}.xi{r}",
            f"  %{tag}.xs{r} = load float, ptr %{tag}.xp{r}, align 4",
            _SPLAT.format(o=f"{tag}.xv{r}", t="float", v=f"%{tag}.xs{r}"),
        ]
        for v in range(nv):
            out.append(
                f"  %{tag}.n{r}{v} = call <8 x float> @llvm.fma.v8f32(<8 x float> %{tag}.xv{r}, "
                f"<8 x float> %{tag}.w{v}, <8 x float> %{tag}.a{r}{v})"
            )
    out += [
        f"  %{tag}.k1 = add nuw i64 %{tag}.kk, 1",
        f"  %{tag}.km = icmp ult i64 %{tag}.k1, %c",
        f"  br i1 %{tag}.km, label %{tag}.k, label %{tag}.e",
        f"{tag}.e:",
    ]
    for v in range(nv):
        out.append(f"  %{tag}.bi{v} = add i64 {mo}, {8 * v}")
        out += _vload(f"%{tag}.b{v}", "%b", f"%{tag}.bi{v}")
    for r in range(rows):
        out += [f"  %{tag}.or{r} = mul i64 %{tag}.px{r}, %m", f"  %{tag}.om{r} = add i64 %{tag}.or{r}, {mo}"]  # fmt: skip
        for v in range(nv):
            q = f"%{tag}.{r}{v}"
            out += [f"  {q}.o = add i64 %{tag}.om{r}, {8 * v}", f"  {q}.s = fadd <8 x float> %{tag}.n{r}{v}, %{tag}.b{v}"]  # fmt: skip
            acc = f"{q}.s"
            if residual:
                out += _vload(f"{q}.z", "%z", f"{q}.o")
                out.append(f"  {q}.sz = fadd <8 x float> {q}.s, {q}.z")
                acc = f"{q}.sz"
            out.append(f"  {q}.dp = getelementptr inbounds float, ptr %dst, i64 {q}.o")
            out += _clamp_store(q, acc, f"{q}.dp")
    out.append(f"  br label %{tag}.done")
    return out


def _pw_pixels(tag: str, nv: int, residual: bool, mo: str, then: str) -> list[str]:
    """Every pixel for the channels at mo: blocks of 4, then one at a time; from {tag}.ph
    (entered from {tag}.in) to a branch to ``then``."""
    p, q = f"%{tag}.p", f"%{tag}.q"
    return [
        f"{tag}.ph:",
        f"  {p} = phi i64 [0, %{tag}.in], [%{tag}.p4, %{tag}4.done]",
        f"  %{tag}.more4 = icmp ult i64 {p}, %p4",
        f"  br i1 %{tag}.more4, label %{tag}4.pre, label %{tag}.qh",
        *_pw_tile(f"{tag}4", 4, nv, residual, p, mo),
        f"{tag}4.done:",
        f"  %{tag}.p4 = add nuw i64 {p}, 4",
        f"  br label %{tag}.ph",
        f"{tag}.qh:",
        f"  {q} = phi i64 [{p}, %{tag}.ph], [%{tag}.q1, %{tag}1.done]",
        f"  %{tag}.more1 = icmp ult i64 {q}, %np",
        f"  br i1 %{tag}.more1, label %{tag}1.pre, label %{then}",
        *_pw_tile(f"{tag}1", 1, nv, residual, q, mo),
        f"{tag}1.done:",
        f"  %{tag}.q1 = add nuw i64 {q}, 1",
        f"  br label %{tag}.qh",
    ]


def _pointwise_ir(residual: bool) -> str:
    return "\n".join(
        [
            f"define internal void @pw_nhwc{'_z' * residual}(ptr noalias nocapture %dst,",
            "    ptr noalias nocapture readonly %w, ptr noalias nocapture readonly %x,",
            "    ptr noalias nocapture readonly %b, ptr noalias nocapture readonly %z,",
            "    i64 %np, i64 %c, i64 %m, float %lo, float %hi) {",
            "entry:",
            "  %m16 = and i64 %m, -16",
            "  %p4 = and i64 %np, -4",
            _SPLAT.format(o="lov", t="float", v="%lo"),
            _SPLAT.format(o="hiv", t="float", v="%hi"),
            "  br label %mh",
            "mh:",
            "  %mb = phi i64 [0, %entry], [%mb16, %F.next]",
            "  %mmore = icmp ult i64 %mb, %m16",
            "  br i1 %mmore, label %F.in, label %tail",
            "F.in:",
            "  br label %F.ph",
            *_pw_pixels("F", 2, residual, "%mb", "F.next"),
            "F.next:",
            "  %mb16 = add nuw i64 %mb, 16",
            "  br label %mh",
            "tail:",
            "  %tmore = icmp ult i64 %m16, %m",
            "  br i1 %tmore, label %T.in, label %exit",
            "T.in:",
            "  br label %T.ph",
            *_pw_pixels("T", 1, residual, "%m16", "exit"),
            "exit:",
            "  ret void",
            "}",
        ]
    )


# --------------------------------------------------------------------------- depthwise


def _dw_block(tag: str, nv: int, c0: str) -> list[str]:
    """Channels c0 .. c0+8*nv of one output pixel; from {tag}: to a branch to {tag}.done."""
    out = [f"{tag}:"]
    for v in range(nv):
        out += [f"  %{tag}.ci{v} = add i64 {c0}, {8 * v}"]
        out += _vload(f"%{tag}.b{v}", "%b", f"%{tag}.ci{v}")
        sums = []
        for ki in range(3):
            acc = f"%{tag}.b{v}" if ki == 0 else "zeroinitializer"
            for kj in range(3):
                t = 3 * ki + kj
                out += [f"  %{tag}.wi{t}{v} = add i64 %wrow{t}, %{tag}.ci{v}"]
                out += _vload(f"%{tag}.w{t}{v}", "%w", f"%{tag}.wi{t}{v}")
                out += _vload(f"%{tag}.x{t}{v}", f"%tap{t}", f"%{tag}.ci{v}")
                nxt = f"%{tag}.a{t}{v}"
                out.append(
                    f"  {nxt} = call <8 x float> @llvm.fma.v8f32(<8 x float> %{tag}.w{t}{v}, "
                    f"<8 x float> %{tag}.x{t}{v}, <8 x float> {acc})"
                )
                acc = nxt
            sums.append(acc)
        out += [
            f"  %{tag}.s{v} = fadd <8 x float> {sums[0]}, {sums[1]}",
            f"  %{tag}.t{v} = fadd <8 x float> %{tag}.s{v}, {sums[2]}",
            f"  %{tag}.o{v} = add i64 %dpix, %{tag}.ci{v}",
            f"  %{tag}.dp{v} = getelementptr inbounds float, ptr %dst, i64 %{tag}.o{v}",
        ]
        out += _clamp_store(f"%{tag}.{v}", f"%{tag}.t{v}", f"%{tag}.dp{v}")
    out.append(f"  br label %{tag}.done")
    return out


def _depthwise_ir(s: int) -> str:
    taps = []
    for ki in range(3):
        taps += [
            f"  %iy{ki} = add i64 %iyb, {ki}",
            f"  %vin{ki} = icmp ult i64 %iy{ki}, %h",
            f"  %ro{ki} = mul i64 %iy{ki}, %wd",
        ]
    cols = []
    for kj in range(3):
        cols += [f"  %ix{kj} = add i64 %ixb, {kj}", f"  %hin{kj} = icmp ult i64 %ix{kj}, %wd"]
    for ki in range(3):
        for kj in range(3):
            t = 3 * ki + kj
            cols += [
                f"  %ok{t} = and i1 %vin{ki}, %hin{kj}",
                f"  %pi{t} = add i64 %ro{ki}, %ix{kj}",
                f"  %po{t} = mul i64 %pi{t}, %c",
                # out-of-range offsets are computed but never read: the zero row is
                f"  %pp{t} = getelementptr float, ptr %src, i64 %po{t}",
                f"  %tap{t} = select i1 %ok{t}, ptr %pp{t}, ptr %zeros",
            ]
    weights = [f"  %wrow{t} = mul i64 %c, {t}" for t in range(9)]
    return "\n".join(
        [
            f"define internal void @dw_nhwc_s{s}(ptr noalias nocapture %dst,",
            "    ptr noalias nocapture readonly %src, ptr noalias nocapture readonly %w,",
            "    ptr noalias nocapture readonly %b, ptr noalias nocapture readonly %zeros,",
            "    i64 %c, i64 %h, i64 %wd, i64 %oh, i64 %ow, i64 %pt, i64 %pl,",
            "    float %lo, float %hi) {",
            "entry:",
            _SPLAT.format(o="lov", t="float", v="%lo"),
            _SPLAT.format(o="hiv", t="float", v="%hi"),
            *weights,
            "  %c16 = and i64 %c, -16",
            "  %np = mul i64 %oh, %ow",
            "  %none = icmp eq i64 %np, 0",
            "  br i1 %none, label %exit, label %row",
            "row:",
            "  %oy = phi i64 [0, %entry], [%oy1, %row.end]",
            f"  %iya = mul i64 %oy, {s}",
            "  %iyb = sub i64 %iya, %pt",
            *taps,
            "  br label %col",
            "col:",
            "  %ox = phi i64 [0, %row], [%ox1, %col.end]",
            f"  %ixa = mul i64 %ox, {s}",
            "  %ixb = sub i64 %ixa, %pl",
            *cols,
            "  %pix0 = mul i64 %oy, %ow",
            "  %pix = add i64 %pix0, %ox",
            "  %dpix = mul i64 %pix, %c",
            "  br label %ch",
            "ch:",
            "  %c0 = phi i64 [0, %col], [%c1, %B.done]",
            "  %cmore = icmp ult i64 %c0, %c16",
            "  br i1 %cmore, label %B.in, label %tail",
            "B.in:",
            "  br label %B",
            *_dw_block("B", 2, "%c0"),
            "B.done:",
            "  %c1 = add nuw i64 %c0, 16",
            "  br label %ch",
            "tail:",
            "  %tmore = icmp ult i64 %c16, %c",
            "  br i1 %tmore, label %T.in, label %col.end",
            "T.in:",
            "  br label %T",
            *_dw_block("T", 1, "%c16"),
            "T.done:",
            "  br label %col.end",
            "col.end:",
            "  %ox1 = add nuw i64 %ox, 1",
            "  %omore = icmp ult i64 %ox1, %ow",
            "  br i1 %omore, label %col, label %row.end",
            "row.end:",
            "  %oy1 = add nuw i64 %oy, 1",
            "  %rmore = icmp ult i64 %oy1, %oh",
            "  br i1 %rmore, label %row, label %exit",
            "exit:",
            "  ret void",
            "}",
        ]
    )


# --------------------------------------------------------------------------- the chain

#: descriptor fields: kind, dst, weights, src, bias, residual (pointwise) or zero row
#: (depthwise), pixels, in channels, out channels, lo and hi (float32 bits), then for
#: depthwise H, W, OH, OW, top and left pads
_F = dict(kind=0, dst=1, w=2, src=3, b=4, z=5, np=6, c=7, m=8, lo=9, hi=10, h=11, wd=12,
          oh=13, ow=14, pt=15, pl=16)  # fmt: skip


def _chain_ir() -> str:
    load = []
    for name, k in _F.items():
        load += [
            f"  %f{name}.p = getelementptr inbounds i64, ptr %d, i64 {k}",
            f"  %f{name} = load i64, ptr %f{name}.p, align 8",
        ]
    for name in ("dst", "w", "src", "b", "z"):
        load.append(f"  %q{name} = inttoptr i64 %f{name} to ptr")
    for name in ("lo", "hi"):
        load += [f"  %{name}32 = trunc i64 %f{name} to i32", f"  %{name} = bitcast i32 %{name}32 to float"]  # fmt: skip
    pw_args = "ptr %qdst, ptr %qw, ptr %qsrc, ptr %qb, ptr %qz, i64 %fnp, i64 %fc, i64 %fm, float %lo, float %hi"  # noqa: E501
    dw_args = ("ptr %qdst, ptr %qsrc, ptr %qw, ptr %qb, ptr %qz, i64 %fc, i64 %fh, i64 %fwd, "
               "i64 %foh, i64 %fow, i64 %fpt, i64 %fpl, float %lo, float %hi")  # fmt: skip
    return "\n".join(
        [
            "define void @conv_chain(ptr nocapture readonly %prog, i64 %n) {",
            "entry:",
            "  %none = icmp eq i64 %n, 0",
            "  br i1 %none, label %exit, label %layer",
            "layer:",
            "  %i = phi i64 [0, %entry], [%i1, %next]",
            f"  %at = mul i64 %i, {FIELDS}",
            "  %d = getelementptr inbounds i64, ptr %prog, i64 %at",
            *load,
            "  switch i64 %fkind, label %next [",
            f"    i64 {PW}, label %pw",
            f"    i64 {PW_RESIDUAL}, label %pwz",
            f"    i64 {DW_S1}, label %dw1",
            f"    i64 {DW_S2}, label %dw2",
            "  ]",
            "pw:",
            f"  call void @pw_nhwc({pw_args})",
            "  br label %next",
            "pwz:",
            f"  call void @pw_nhwc_z({pw_args})",
            "  br label %next",
            "dw1:",
            f"  call void @dw_nhwc_s1({dw_args})",
            "  br label %next",
            "dw2:",
            f"  call void @dw_nhwc_s2({dw_args})",
            "  br label %next",
            "next:",
            "  %i1 = add nuw i64 %i, 1",
            "  %more = icmp ult i64 %i1, %n",
            "  br i1 %more, label %layer, label %exit",
            "exit:",
            "  ret void",
            "}",
        ]
    )


def ir() -> str:
    """The module text: the kernels (internal) and ``conv_chain``."""
    parts = [_DECLS, _pointwise_ir(False), _pointwise_ir(True), _depthwise_ir(1)]
    return "\n".join([*parts, _depthwise_ir(2), _chain_ir()])


def bind(engine: object, fns: dict) -> None:
    """Enters ``conv_chain`` of a compiled module into ``fns`` (as ``("conv_chain",)``)."""
    address = engine.get_function_address("conv_chain")  # type: ignore[attr-defined]
    fns[("conv_chain",)] = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(address)


def _bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


class Program:
    """A chain's layers over one float32 arena (channels-last buffers at fixed offsets),
    as descriptors for ``conv_chain``; one per thread (the arena is its working memory).

    ``layers`` are dicts: ``kind`` (PW, PW_RESIDUAL, DW_S1, DW_S2), ``dst``/``src``/``z``
    arena offsets (in elements), ``w``, ``b`` float32 arrays laid out for the kernel
    (pointwise (C, M), depthwise (9, C) tap-major; b (M,)), the sizes (pointwise ``np``,
    ``c``, ``m``; depthwise ``c``, ``h``, ``wd``, ``oh``, ``ow``, ``pt``, ``pl``) and the
    clamp ``lo``, ``hi``. The caller checks every offset and size against the arena."""

    def __init__(self, layers: Sequence[dict], arena: int, widest: int) -> None:
        self.arena = np.empty(arena, np.float32)
        self.zeros = np.zeros(widest, np.float32)
        self._keep = [(x["w"], x["b"]) for x in layers]
        base = self.arena.ctypes.data
        prog = np.zeros((len(layers), FIELDS), np.int64)
        for row, x in zip(prog, layers):
            depthwise = x["kind"] in (DW_S1, DW_S2)
            z = self.zeros.ctypes.data if depthwise else base + 4 * x["z"] if x["z"] >= 0 else 0
            fields = dict(x, dst=base + 4 * x["dst"], src=base + 4 * x["src"], z=z,
                          w=x["w"].ctypes.data, b=x["b"].ctypes.data, lo=_bits(x["lo"]),
                          hi=_bits(x["hi"]))  # fmt: skip
            for name, k in _F.items():
                row[k] = int(fields.get(name, 0))
        self.program = prog
        self._args = (prog.ctypes.data, len(layers))

    def run(self, fn: object) -> None:
        """Runs every layer (``fn``: the compiled ``conv_chain``)."""
        fn(*self._args)  # type: ignore[operator]
