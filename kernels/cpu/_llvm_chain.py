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
from typing import NamedTuple

import numpy as np

__all__ = ["FIELDS", "ZEROS", "At", "Program", "bind", "ir"]

#: int64 fields per layer descriptor
FIELDS = 20
PW, PW_RESIDUAL, DW_S1, DW_S2, REQUANT, ADD_TABLE, CONV = 0, 1, 2, 3, 4, 5, 6

_DECLS = """declare <8 x float> @llvm.fma.v8f32(<8 x float>, <8 x float>, <8 x float>)
declare <8 x i32> @llvm.smax.v8i32(<8 x i32>, <8 x i32>)
declare <8 x i32> @llvm.smin.v8i32(<8 x i32>, <8 x i32>)"""
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


def _store_first(o: str, vec: str, ptr: str, count: str) -> list[str]:
    """Stores lanes 0 .. min(count, 8) - 1 of <8 x float> ``vec`` at ``ptr`` one by one, in
    blocks %{o}.* (a masked vector store is microcoded on AMD cores: many times slower)."""
    return [
        f"  br label %{o}.pre",
        f"{o}.pre:",
        f"  %{o}.few = icmp slt i64 {count}, 8",
        f"  %{o}.n = select i1 %{o}.few, i64 {count}, i64 8",
        f"  %{o}.any = icmp sgt i64 %{o}.n, 0",
        f"  br i1 %{o}.any, label %{o}.l, label %{o}.x",
        f"{o}.l:",
        f"  %{o}.i = phi i64 [0, %{o}.pre], [%{o}.i1, %{o}.l]",
        f"  %{o}.e = extractelement <8 x float> {vec}, i64 %{o}.i",
        f"  %{o}.p = getelementptr inbounds float, ptr {ptr}, i64 %{o}.i",
        f"  store float %{o}.e, ptr %{o}.p, align 4",
        f"  %{o}.i1 = add nuw i64 %{o}.i, 1",
        f"  %{o}.m = icmp slt i64 %{o}.i1, %{o}.n",
        f"  br i1 %{o}.m, label %{o}.l, label %{o}.x",
        f"{o}.x:",
    ]


# --------------------------------------------------------------------------- pointwise


def _weights_fma(tag: str, rows: int, nv: int, wo: str, x: list[str], k: str) -> list[str]:
    """One step of a register tile: the weights w[wo .. wo+8*nv] times element k of each
    row's input x[r], into the accumulators %{tag}.a{r}{v} (results %{tag}.n{r}{v})."""
    out = []
    for v in range(nv):
        out.append(f"  %{tag}.wi{v} = add i64 {wo}, {8 * v}")
        out += _vload(f"%{tag}.w{v}", "%w", f"%{tag}.wi{v}")
    for r in range(rows):
        out += [
            f"  %{tag}.xp{r} = getelementptr inbounds float, ptr {x[r]}, i64 {k}",
            f"  %{tag}.xs{r} = load float, ptr %{tag}.xp{r}, align 4",
            _SPLAT.format(o=f"{tag}.xv{r}", t="float", v=f"%{tag}.xs{r}"),
        ]
        for v in range(nv):
            out.append(
                f"  %{tag}.n{r}{v} = call <8 x float> @llvm.fma.v8f32(<8 x float> %{tag}.xv{r}, "
                f"<8 x float> %{tag}.w{v}, <8 x float> %{tag}.a{r}{v})"
            )
    return out


def _tile_store(
    tag: str, rows: int, nv: int, pixel: list[str], mo: str, residual: bool
) -> list[str]:
    """A register tile's epilogue: + bias (+ the residual at the same place), clamp, store
    at pixels pixel[r], channels mo .. mo+8*nv; then a branch to {tag}.done."""
    out = []
    for v in range(nv):
        out.append(f"  %{tag}.bi{v} = add i64 {mo}, {8 * v}")
        out += _vload(f"%{tag}.b{v}", "%b", f"%{tag}.bi{v}")
    for r in range(rows):
        out += [f"  %{tag}.or{r} = mul i64 {pixel[r]}, %m", f"  %{tag}.om{r} = add i64 %{tag}.or{r}, {mo}"]  # fmt: skip
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
    rows_x = []
    for r in range(rows):
        out += [
            f"  %{tag}.px{r} = add i64 {p}, {r}",
            f"  %{tag}.xr{r} = mul i64 %{tag}.px{r}, %c",
            f"  %{tag}.x{r} = getelementptr inbounds float, ptr %x, i64 %{tag}.xr{r}",
        ]
        rows_x.append(f"%{tag}.x{r}")
    out += _weights_fma(tag, rows, nv, f"%{tag}.wo", rows_x, f"%{tag}.kk")
    out += [
        f"  %{tag}.k1 = add nuw i64 %{tag}.kk, 1",
        f"  %{tag}.km = icmp ult i64 %{tag}.k1, %c",
        f"  br i1 %{tag}.km, label %{tag}.k, label %{tag}.e",
        f"{tag}.e:",
    ]
    pixels = [f"%{tag}.px{r}" for r in range(rows)]
    return out + _tile_store(tag, rows, nv, pixels, mo, residual)


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


# the output-row loop's end and the function's, closing the spatial kernels
_ROWS_END = [
    "row.end:",
    "  %oy1 = add nuw i64 %oy, 1",
    "  %rmore = icmp ult i64 %oy1, %oh",
    "  br i1 %rmore, label %row, label %exit",
    "exit:",
    "  ret void",
    "}",
]


def _spatial_head(name: str, more: str, prelude: list[str]) -> list[str]:
    """The signature and entry block the spatial kernels share (channels-last src (H, W, C)
    into dst (OH, OW, M), top/left pads, a clamp; ``more``: their own parameters), down to
    the branch to %row, or %exit for an empty output."""
    return [
        f"define internal void @{name}(ptr noalias nocapture %dst,",
        "    ptr noalias nocapture readonly %src, ptr noalias nocapture readonly %w,",
        "    ptr noalias nocapture readonly %b, ptr noalias nocapture readonly %zeros,",
        "    i64 %c, i64 %h, i64 %wd, i64 %oh, i64 %ow, i64 %pt, i64 %pl,",
        f"    float %lo, float %hi{more}) {{",
        "entry:",
        _SPLAT.format(o="lov", t="float", v="%lo"),
        _SPLAT.format(o="hiv", t="float", v="%hi"),
        *prelude,
        "  %np = mul i64 %oh, %ow",
        "  %none = icmp eq i64 %np, 0",
        "  br i1 %none, label %exit, label %row",
    ]


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
            *_spatial_head(f"dw_nhwc_s{s}", "", [*weights, "  %c16 = and i64 %c, -16"]),
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
            *_ROWS_END,
        ]
    )


# --------------------------------------------------------------------------- general conv


def _conv_tile(tag: str, rows: int, nv: int, mo: str) -> list[str]:
    """Output pixels (oy, ox .. ox+rows) x channels mo .. mo+8*nv of a group-1 conv: taps
    in kernel order, input channels inside; a tap outside the input reads the zero row.
    From {tag}.pre to a branch to {tag}.done."""
    acc = [(r, v) for r in range(rows) for v in range(nv)]
    out = [f"{tag}.pre:", f"  br label %{tag}.t", f"{tag}.t:"]
    out.append(f"  %{tag}.tt = phi i64 [0, %{tag}.pre], [%{tag}.t1, %{tag}.cend]")
    for r, v in acc:
        out.append(f"  %{tag}.u{r}{v} = phi <8 x float> [zeroinitializer, %{tag}.pre], [%{tag}.n{r}{v}, %{tag}.cend]")  # fmt: skip
    out += [
        f"  %{tag}.ki = udiv i64 %{tag}.tt, %kw",
        f"  %{tag}.kj = urem i64 %{tag}.tt, %kw",
        f"  %{tag}.iy = add i64 %iyb, %{tag}.ki",
        f"  %{tag}.rok = icmp ult i64 %{tag}.iy, %h",
        f"  %{tag}.ro = mul i64 %{tag}.iy, %wd",
        f"  %{tag}.wt = mul i64 %{tag}.tt, %cm",
        f"  %{tag}.wb = add i64 %{tag}.wt, {mo}",
    ]
    for r in range(rows):
        out += [
            f"  %{tag}.ox{r} = add i64 %ox, {r}",
            f"  %{tag}.xa{r} = mul i64 %{tag}.ox{r}, %s",
            f"  %{tag}.xb{r} = sub i64 %{tag}.xa{r}, %pl",
            f"  %{tag}.ix{r} = add i64 %{tag}.xb{r}, %{tag}.kj",
            f"  %{tag}.cok{r} = icmp ult i64 %{tag}.ix{r}, %wd",
            f"  %{tag}.ok{r} = and i1 %{tag}.rok, %{tag}.cok{r}",
            f"  %{tag}.pi{r} = add i64 %{tag}.ro, %{tag}.ix{r}",
            f"  %{tag}.po{r} = mul i64 %{tag}.pi{r}, %c",
            f"  %{tag}.pp{r} = getelementptr float, ptr %src, i64 %{tag}.po{r}",
            f"  %{tag}.x{r} = select i1 %{tag}.ok{r}, ptr %{tag}.pp{r}, ptr %zeros",
        ]
    out += [f"  br label %{tag}.c", f"{tag}.c:"]
    out.append(f"  %{tag}.ci = phi i64 [0, %{tag}.t], [%{tag}.ci1, %{tag}.c]")
    for r, v in acc:
        out.append(f"  %{tag}.a{r}{v} = phi <8 x float> [%{tag}.u{r}{v}, %{tag}.t], [%{tag}.n{r}{v}, %{tag}.c]")  # fmt: skip
    out += [f"  %{tag}.wr = mul i64 %{tag}.ci, %m", f"  %{tag}.wo = add i64 %{tag}.wb, %{tag}.wr"]
    out += _weights_fma(
        tag, rows, nv, f"%{tag}.wo", [f"%{tag}.x{r}" for r in range(rows)], f"%{tag}.ci"
    )
    out += [
        f"  %{tag}.ci1 = add nuw i64 %{tag}.ci, 1",
        f"  %{tag}.cm = icmp ult i64 %{tag}.ci1, %c",
        f"  br i1 %{tag}.cm, label %{tag}.c, label %{tag}.cend",
        f"{tag}.cend:",
        f"  %{tag}.t1 = add nuw i64 %{tag}.tt, 1",
        f"  %{tag}.tm = icmp ult i64 %{tag}.t1, %taps",
        f"  br i1 %{tag}.tm, label %{tag}.t, label %{tag}.e",
        f"{tag}.e:",
    ]
    out += [f"  %{tag}.px{r} = add i64 %prow, {r}" for r in range(rows)]
    return out + _tile_store(tag, rows, nv, [f"%{tag}.px{r}" for r in range(rows)], mo, False)


def _conv_pixels(tag: str, rows: int, then: str) -> list[str]:
    """Every channel block of the ``rows`` pixels at (oy, ox): 16 at a time, then a last
    8; from {tag}.in to a branch to ``then``."""
    return [
        f"{tag}.in:",
        "  br label %" + f"{tag}.mh",
        f"{tag}.mh:",
        f"  %{tag}.mb = phi i64 [0, %{tag}.in], [%{tag}.mb16, %{tag}F.done]",
        f"  %{tag}.mm = icmp ult i64 %{tag}.mb, %m16",
        f"  br i1 %{tag}.mm, label %{tag}F.pre, label %{tag}.tail",
        *_conv_tile(f"{tag}F", rows, 2, f"%{tag}.mb"),
        f"{tag}F.done:",
        f"  %{tag}.mb16 = add nuw i64 %{tag}.mb, 16",
        f"  br label %{tag}.mh",
        f"{tag}.tail:",
        f"  %{tag}.tm8 = icmp ult i64 %m16, %m",
        f"  br i1 %{tag}.tm8, label %{tag}T.pre, label %{then}",
        *_conv_tile(f"{tag}T", rows, 1, "%m16"),
        f"{tag}T.done:",
        f"  br label %{then}",
    ]


def _conv_ir() -> str:
    """A group-1 conv, channels last: dst (OH, OW, M) = clamp(conv(src (H, W, C), w (kh,
    kw, C, M)) + b, lo, hi) at stride s with pads top/left pt, pl (bottom/right follow
    from OH, OW); tiles of 4 output pixels of a row (then single ones) x 16 channels."""
    prelude = [
        "  %m16 = and i64 %m, -16",
        "  %ow4 = and i64 %ow, -4",
        "  %taps = mul i64 %kh, %kw",
        "  %cm = mul i64 %c, %m",
    ]
    return "\n".join(
        [
            *_spatial_head("conv_nhwc", ", i64 %m, i64 %kh, i64 %kw, i64 %s", prelude),
            "row:",
            "  %oy = phi i64 [0, %entry], [%oy1, %row.end]",
            "  %iya = mul i64 %oy, %s",
            "  %iyb = sub i64 %iya, %pt",
            "  %prow0 = mul i64 %oy, %ow",
            "  br label %q4",
            "q4:",
            "  %ox = phi i64 [0, %row], [%ox4, %Q.next], [%ox1, %P.next]",
            "  %prow = add i64 %prow0, %ox",
            "  %more4 = icmp ult i64 %ox, %ow4",
            "  br i1 %more4, label %Q.in, label %q1",
            *_conv_pixels("Q", 4, "Q.next"),
            "Q.next:",
            "  %ox4 = add nuw i64 %ox, 4",
            "  br label %q4",
            "q1:",
            "  %more1 = icmp ult i64 %ox, %ow",
            "  br i1 %more1, label %P.in, label %row.end",
            *_conv_pixels("P", 1, "P.next"),
            "P.next:",
            "  %ox1 = add nuw i64 %ox, 1",
            "  br label %q4",
            *_ROWS_END,
        ]
    )  # fmt: skip


# --------------------------------------------------------------------------- integer layers


def _requant_ir() -> str:
    """buf (P, M) float32 accumulators (exact integers) -> float32 (y - zout), y the TFLite
    requantization: v = (acc * q + c1) >> 31 (c1 = bias * q + 2**30), then, per channel,
    (v + off + (v < 0 ? negm : 0)) >> right, + zp, clamped to [lo, hi] (``_TflRequant``)."""
    v8 = "<8 x i32>"
    body = [
        "  %ai = fptosi <8 x float> %acc to <8 x i32>",
        "  %a64 = sext <8 x i32> %ai to <8 x i64>",
        *[x.replace("<8 x float>", "<8 x i64>").replace("align 4", "align 8").replace("float,", "i64,") for x in _vload("%qv", "%q", "%mm")],
        *[x.replace("<8 x float>", "<8 x i64>").replace("align 4", "align 8").replace("float,", "i64,") for x in _vload("%cv", "%c1", "%mm")],
        "  %t0 = mul <8 x i64> %a64, %qv",
        "  %t1 = add <8 x i64> %t0, %cv",
        "  %t2 = ashr <8 x i64> %t1, <i64 31, i64 31, i64 31, i64 31, i64 31, i64 31, i64 31, i64 31>",
        "  %v0 = trunc <8 x i64> %t2 to <8 x i32>",
        *[x.replace("<8 x float>", v8).replace("float,", "i32,") for x in _vload("%rv", "%right", "%mm")],
        *[x.replace("<8 x float>", v8).replace("float,", "i32,") for x in _vload("%nv", "%negm", "%mm")],
        *[x.replace("<8 x float>", v8).replace("float,", "i32,") for x in _vload("%ov", "%off", "%mm")],
        f"  %sg = ashr {v8} %v0, <i32 31, i32 31, i32 31, i32 31, i32 31, i32 31, i32 31, i32 31>",
        f"  %ng = and {v8} %sg, %nv",
        f"  %v1 = add {v8} %v0, %ng",
        f"  %v2 = add {v8} %v1, %ov",
        f"  %v3 = ashr {v8} %v2, %rv",
        f"  %v4 = add {v8} %v3, %zpv",
        f"  %v5 = call {v8} @llvm.smax.v8i32({v8} %v4, {v8} %lov)",
        f"  %v6 = call {v8} @llvm.smin.v8i32({v8} %v5, {v8} %hiv)",
        f"  %v7 = sub {v8} %v6, %zov",
        f"  %y = sitofp {v8} %v7 to <8 x float>",
        "  store <8 x float> %y, ptr %acc.p, align 4",
    ]  # fmt: skip
    splats = [
        _SPLAT.format(o=o, t="i32", v=v)
        for o, v in (("zpv", "%zp"), ("lov", "%lo"), ("hiv", "%hi"), ("zov", "%zout"))
    ]
    return "\n".join(
        [
            "define internal void @requant(ptr noalias nocapture %buf, ptr noalias nocapture readonly %q,",
            "    ptr noalias nocapture readonly %c1, ptr noalias nocapture readonly %right,",
            "    ptr noalias nocapture readonly %negm, ptr noalias nocapture readonly %off,",
            "    i64 %np, i64 %m, i32 %zp, i32 %lo, i32 %hi, i32 %zout) {",
            "entry:",
            *splats,
            "  %n = mul i64 %np, %m",
            "  %none = icmp eq i64 %n, 0",
            "  br i1 %none, label %exit, label %px",
            "px:",
            "  %p = phi i64 [0, %entry], [%p1, %px.end]",
            "  %row = mul i64 %p, %m",
            "  br label %ch",
            "ch:",
            "  %mm = phi i64 [0, %px], [%mm8, %ch]",
            "  %at = add i64 %row, %mm",
            *_vload("%acc", "%buf", "%at"),
            *body,
            "  %mm8 = add nuw i64 %mm, 8",
            "  %cmore = icmp ult i64 %mm8, %m",
            "  br i1 %cmore, label %ch, label %px.end",
            "px.end:",
            "  %p1 = add nuw i64 %p, 1",
            "  %pmore = icmp ult i64 %p1, %np",
            "  br i1 %pmore, label %px, label %exit",
            "exit:",
            "  ret void",
            "}",
        ]
    )  # fmt: skip


def _add_table_ir() -> str:
    """dst[i] = table[byte(a[i] + za) * 256 + byte(b[i] + zb)] - zout for float32 a, b
    holding exact integers (the value minus its zero point) and an int8 table of a binary
    op's every result (``qlinear._pair_table``)."""
    return "\n".join(
        [
            "define internal void @add_table(ptr noalias nocapture %dst, ptr noalias nocapture readonly %a,",
            "    ptr noalias nocapture readonly %b, ptr noalias nocapture readonly %table, i64 %n,",
            "    i32 %za, i32 %zb, i32 %zout) {",
            "entry:",
            "  %none = icmp eq i64 %n, 0",
            "  br i1 %none, label %exit, label %el",
            "el:",
            "  %i = phi i64 [0, %entry], [%i1, %el]",
            "  %ap = getelementptr inbounds float, ptr %a, i64 %i",
            "  %bp = getelementptr inbounds float, ptr %b, i64 %i",
            "  %af = load float, ptr %ap, align 4",
            "  %bf = load float, ptr %bp, align 4",
            "  %ai = fptosi float %af to i32",
            "  %bi = fptosi float %bf to i32",
            "  %av = add i32 %ai, %za",
            "  %bv = add i32 %bi, %zb",
            "  %ab = and i32 %av, 255",
            "  %bb = and i32 %bv, 255",
            "  %hi = shl i32 %ab, 8",
            "  %ix = or i32 %hi, %bb",
            "  %ix64 = zext i32 %ix to i64",
            "  %tp = getelementptr inbounds i8, ptr %table, i64 %ix64",
            "  %y8 = load i8, ptr %tp, align 1",
            "  %y = sext i8 %y8 to i32",
            "  %yz = sub i32 %y, %zout",
            "  %yf = sitofp i32 %yz to float",
            "  %dp = getelementptr inbounds float, ptr %dst, i64 %i",
            "  store float %yf, ptr %dp, align 4",
            "  %i1 = add nuw i64 %i, 1",
            "  %more = icmp ult i64 %i1, %n",
            "  br i1 %more, label %el, label %exit",
            "exit:",
            "  ret void",
            "}",
        ]
    )  # fmt: skip


# --------------------------------------------------------------------------- the chain

#: descriptor fields: kind, dst, weights, src, bias, residual (pointwise) or zero row
#: (depthwise), pixels, in channels, out channels, lo and hi (float32 bits), then for
#: depthwise H, W, OH, OW, top and left pads
_F = dict(kind=0, dst=1, w=2, src=3, b=4, z=5, np=6, c=7, m=8, lo=9, hi=10, h=11, wd=12,
          oh=13, ow=14, pt=15, pl=16, kh=17, kw=18, s=19)  # fmt: skip


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
    for name in ("h",):
        load.append(f"  %q{name} = inttoptr i64 %f{name} to ptr")
    for name in ("c", "m", "oh", "ow", "pt"):
        load.append(f"  %i{name} = trunc i64 %f{name} to i32")
    rq_args = ("ptr %qdst, ptr %qw, ptr %qb, ptr %qsrc, ptr %qz, ptr %qh, i64 %fnp, i64 %fm, "
               "i32 %ic, i32 %ioh, i32 %iow, i32 %ipt")  # fmt: skip
    add_args = "ptr %qdst, ptr %qsrc, ptr %qz, ptr %qw, i64 %fnp, i32 %ic, i32 %im, i32 %ipt"
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
            f"    i64 {REQUANT}, label %rq",
            f"    i64 {ADD_TABLE}, label %add",
            f"    i64 {CONV}, label %conv",
            "  ]",
            "conv:",
            f"  call void @conv_nhwc({dw_args}, i64 %fm, i64 %fkh, i64 %fkw, i64 %fs)",
            "  br label %next",
            "rq:",
            f"  call void @requant({rq_args})",
            "  br label %next",
            "add:",
            f"  call void @add_table({add_args})",
            "  br label %next",
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
    parts += [_depthwise_ir(2), _conv_ir(), _requant_ir(), _add_table_ir()]
    return "\n".join([*parts, _chain_ir()])


def bind(engine: object, fns: dict) -> None:
    """Enters ``conv_chain`` of a compiled module into ``fns`` (as ``("conv_chain",)``)."""
    address = engine.get_function_address("conv_chain")  # type: ignore[attr-defined]
    fns[("conv_chain",)] = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(address)


def _bits(v: float) -> int:
    return struct.unpack("<i", struct.pack("<f", v))[0]


class At(NamedTuple):
    """An arena position (in float32 elements) in a layer's fields."""

    offset: int


#: the depthwise kernels' row of zeros, in a layer's fields
ZEROS = "zeros"


class Program:
    """A chain's layers over one float32 arena, as descriptors for ``conv_chain``; one per
    thread (the arena is its working memory).

    ``layers`` are dicts of descriptor fields (``_F``): ``kind``, then per kind the
    pointers, sizes and constants its loop takes. A field's value is an ``At`` (an arena
    position), ``ZEROS``, an array (its address: the array is kept alive here), a float
    (its float32 bits: the clamp of a float layer) or an int. The caller checks every
    position and size against the arena and the arrays."""

    def __init__(self, layers: Sequence[dict], arena: int, widest: int) -> None:
        self.arena = np.empty(arena, np.float32)
        self.zeros = np.zeros(widest, np.float32)
        base = self.arena.ctypes.data
        self._keep = [v for x in layers for v in x.values() if isinstance(v, np.ndarray)]
        prog = np.zeros((len(layers), FIELDS), np.int64)
        for row, layer in zip(prog, layers):
            for name, v in layer.items():
                if isinstance(v, At):
                    v = base + 4 * v.offset
                elif isinstance(v, str):
                    v = self.zeros.ctypes.data
                elif isinstance(v, np.ndarray):
                    v = v.ctypes.data
                elif isinstance(v, float):
                    v = _bits(v)
                row[_F[name]] = int(v)
        self.program = prog
        self._args = (prog.ctypes.data, len(layers))

    def run(self, fn: object) -> None:
        """Runs every layer (``fn``: the compiled ``conv_chain``)."""
        fn(*self._args)  # type: ignore[operator]
