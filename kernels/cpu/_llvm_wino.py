"""Winograd F(2x2, 3x3) transforms for 3x3 stride-1 convs, compiled through llvmlite with
``_llvm``'s loops.

A 3x3 conv of C channels into M computes 36 multiply-adds per 2x2 output block and input
channel; Winograd's minimal filtering computes the block from a 4x4 input patch d and the
transformed filter U = G g G^T (4x4) as A^T [(B^T d B) * U] A: 16 multiplies, which for
all channels are 16 products (M, C) @ (C, tiles) that BLAS runs as it runs any product,
2.25x fewer multiply-adds than the im2col product. The transforms are additions only:

* ``wino_in``: V[k, c, tile] = (B^T d B)[k] for every 4x4 patch at stride 2 of the padded
  input (rows then columns: d0 - d2, d1 + d2, d2 - d1, d1 - d3), eight tiles of a row per
  vector (16-lane loads split into even and odd columns);
* ``wino_out``: out = A^T m A (rows then columns: m0 + m1 + m2, m1 - m2 - m3) of each
  tile's 16 products, + bias (+ a residual), clamped, written as two rows of 2x8 outputs.

Results differ from a direct conv's by the float rounding of the transforms (the filter's
halves and quarters are exact; the sums are not), ~1e-6 relative.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from modelloader.kernels.cpu._llvm_chain import _SPLAT, _store_first, _vload

__all__ = ["bind", "ir"]

_EVEN = ", ".join(f"i32 {2 * i}" for i in range(8))
_ODD = ", ".join(f"i32 {2 * i + 1}" for i in range(8))
_INTERLEAVE = [", ".join(f"i32 {i // 2 + 8 * (i % 2)}" for i in range(8 * h, 8 * h + 8)) for h in (0, 1)]  # fmt: skip
_V = "<8 x float>"


#: Winograd F(2, 3)'s input transform B^T and output transform A^T (rows: outputs)
_BT = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))
_AT = ((1, 1, 1, 0), (0, 1, -1, -1))


def _combine(out: str, terms: list[str], row: Sequence[int]) -> list[str]:
    """``out`` = the terms weighted by ``row``'s +1/-1 (0: left out), as a chain of vector
    additions and subtractions in term order, from the first positive term."""
    picked = [(c, t) for c, t in zip(row, terms) if c]
    first = next(i for i, (c, _) in enumerate(picked) if c > 0)
    acc, rest = picked[first][1], picked[:first] + picked[first + 1 :]
    lines = []
    for n, (c, t) in enumerate(rest):
        name = out if n == len(rest) - 1 else f"{out}.{n}"
        lines.append(f"  {name} = {'fadd' if c > 0 else 'fsub'} {_V} {acc}, {t}")
        acc = name
    return lines


def _in_ir() -> str:
    body = []
    for r in range(4):
        body += [
            f"  %ro{r} = add i64 %row0, {r}",
            f"  %rw{r} = mul i64 %ro{r}, %wp",
            f"  %ri{r} = add i64 %rw{r}, %x2",
            f"  %pa{r} = getelementptr inbounds float, ptr %plane, i64 %ri{r}",
            f"  %la{r} = load <16 x float>, ptr %pa{r}, align 4",
            f"  %pb{r} = getelementptr inbounds float, ptr %pa{r}, i64 2",
            f"  %lb{r} = load <16 x float>, ptr %pb{r}, align 4",
            f"  %d{r}0 = shufflevector <16 x float> %la{r}, <16 x float> poison, <8 x i32> <{_EVEN}>",
            f"  %d{r}1 = shufflevector <16 x float> %la{r}, <16 x float> poison, <8 x i32> <{_ODD}>",
            f"  %d{r}2 = shufflevector <16 x float> %lb{r}, <16 x float> poison, <8 x i32> <{_EVEN}>",
            f"  %d{r}3 = shufflevector <16 x float> %lb{r}, <16 x float> poison, <8 x i32> <{_ODD}>",
        ]
    # B^T d: across the patch's rows; then d B: across its columns
    for j in range(4):
        for i, row in enumerate(_BT):
            body += _combine(f"%t{i}{j}", [f"%d{r}{j}" for r in range(4)], row)
    for i in range(4):
        for j, row in enumerate(_BT):
            body += _combine(f"%v{i}{j}", [f"%t{i}{c}" for c in range(4)], row)
    full, part = [], []
    for i in range(4):
        for j in range(4):
            k = 4 * i + j
            for p, out in (("f", full), ("s", part)):
                out += [
                    f"  %{p}o{k}a = mul i64 %ks, {k}",
                    f"  %{p}o{k} = add i64 %{p}o{k}a, %vat",
                    f"  %{p}q{k} = getelementptr inbounds float, ptr %vout, i64 %{p}o{k}",
                ]
            full.append(f"  store {_V} %v{i}{j}, ptr %fq{k}, align 4")
            part += _store_first(f"st{k}", f"%v{i}{j}", f"%sq{k}", "%left")
    return "\n".join(
        [
            "define void @wino_in(ptr noalias nocapture %vout, ptr noalias nocapture readonly %x,",
            "    i64 %c, i64 %hp, i64 %wp, i64 %th, i64 %tw) {",
            "entry:",
            "  %tt = mul i64 %th, %tw",
            "  %ks = mul i64 %c, %tt",  # the stride between V's 16 planes
            "  %pl = mul i64 %hp, %wp",
            "  %empty = icmp eq i64 %tt, 0",
            "  br i1 %empty, label %exit, label %chan",
            "chan:",
            "  %cc = phi i64 [0, %entry], [%cc1, %chan.end]",
            "  %po = mul i64 %cc, %pl",
            "  %plane = getelementptr inbounds float, ptr %x, i64 %po",
            "  %vc = mul i64 %cc, %tt",
            "  br label %row",
            "row:",
            "  %ty = phi i64 [0, %chan], [%ty1, %row.end]",
            "  %row0 = shl i64 %ty, 1",
            "  %vrow0 = mul i64 %ty, %tw",
            "  %vrow = add i64 %vc, %vrow0",
            "  br label %blk",
            "blk:",
            "  %tx = phi i64 [0, %row], [%tx8, %blk.end]",
            "  %x2 = shl i64 %tx, 1",
            "  %vat = add i64 %vrow, %tx",
            "  %left = sub i64 %tw, %tx",
            *body,
            "  %whole = icmp uge i64 %left, 8",
            "  br i1 %whole, label %full, label %part",
            "full:",
            *full,
            "  br label %blk.end",
            "part:",
            *part,
            "  br label %blk.end",
            "blk.end:",
            "  %tx8 = add nuw i64 %tx, 8",
            "  %bmore = icmp ult i64 %tx8, %tw",
            "  br i1 %bmore, label %blk, label %row.end",
            "row.end:",
            "  %ty1 = add nuw i64 %ty, 1",
            "  %rmore = icmp ult i64 %ty1, %th",
            "  br i1 %rmore, label %row, label %chan.end",
            "chan.end:",
            "  %cc1 = add nuw i64 %cc, 1",
            "  %cmore = icmp ult i64 %cc1, %c",
            "  br i1 %cmore, label %chan, label %exit",
            "exit:",
            "  ret void",
            "}",
        ]
    )  # fmt: skip


def _out_ir(residual: bool) -> str:
    name = f"wino_out{'_z' * residual}"
    loads = []
    for k in range(16):
        loads += [f"  %mo{k}a = mul i64 %ks, {k}", f"  %mo{k} = add i64 %mo{k}a, %mat"]
        loads += _vload(f"%m{k}", "%mm", f"%mo{k}")
    body = []
    # A^T m: across the rows of the 4x4 products; then m A: across their columns, + bias
    for j in range(4):
        for a, row in enumerate(_AT):
            body += _combine(f"%s{a}{j}", [f"%m{4 * r + j}" for r in range(4)], row)
    for a in range(2):
        for b, row in enumerate(_AT):
            body += _combine(f"%o{a}{b}x", [f"%s{a}{c}" for c in range(4)], row)
            body.append(f"  %o{a}{b} = fadd {_V} %o{a}{b}x, %bv")
        for h in range(2):
            body.append(
                f"  %r{a}{h} = shufflevector {_V} %o{a}0, {_V} %o{a}1, <8 x i32> <{_INTERLEAVE[h]}>"
            )
    rows = [_SPLAT.format(o="leftv", t="i64", v="%left")]
    for h in range(2):
        iota = ", ".join(f"i64 {8 * h + i}" for i in range(8))
        rows.append(f"  %zm{h} = icmp slt <8 x i64> <{iota}>, %leftv")
    for a in range(2):
        rows += [f"row{a}:"] if a else []
        rows += [
            f"  %oy{a} = add i64 %y0, {a}",
            f"  %dr{a} = mul i64 %oy{a}, %w",
            f"  %dat{a} = add i64 %dr{a}, %x0",
            f"  %dd{a} = add i64 %dplane, %dat{a}",
        ]
        for h in range(2):
            q = f"%q{a}{h}"
            rows += [f"  {q}.o = add i64 %dd{a}, {8 * h}"]
            acc = f"%r{a}{h}"
            if residual:
                # lanes past the row's end read nothing (the next row, or past the buffer)
                rows += [
                    f"  {q}.zp = getelementptr inbounds float, ptr %z, i64 {q}.o",
                    f"  {q}.z = call {_V} @llvm.masked.load.v8f32.p0(ptr {q}.zp, i32 4, "
                    f"<8 x i1> %zm{h}, {_V} zeroinitializer)",
                ]
                rows.append(f"  {q}.s = fadd {_V} {acc}, {q}.z")
                acc = f"{q}.s"
            rows.append(f"  {q}.lt = fcmp olt {_V} {acc}, %lov")
            rows.append(f"  {q}.c1 = select <8 x i1> {q}.lt, {_V} %lov, {_V} {acc}")
            rows.append(f"  {q}.gt = fcmp ogt {_V} {q}.c1, %hiv")
            rows.append(f"  {q}.v = select <8 x i1> {q}.gt, {_V} %hiv, {_V} {q}.c1")
        rows += [f"  br label %row{a}.st"]
    return _OUT.format(
        name=name, loads="\n".join(loads), body="\n".join(body), rows="\n".join(rows),
        splat_lo=_SPLAT.format(o="lov", t="float", v="%lo"),
        splat_hi=_SPLAT.format(o="hiv", t="float", v="%hi"),
        splat_b=_SPLAT.format(o="bv", t="float", v="%bs"),
        stores=_out_stores(),
    )  # fmt: skip


def _out_stores() -> str:
    """Each output row's two halves: whole (16 columns inside the row), or the first
    ``left`` columns lane by lane; the second row only inside the map."""
    out = []
    for a in range(2):
        out += [f"row{a}.st:", f"  %whole{a} = icmp uge i64 %left, 16"]
        out += [f"  br i1 %whole{a}, label %row{a}.full, label %row{a}.part", f"row{a}.full:"]
        for h in range(2):
            out += [f"  %q{a}{h}.p = getelementptr inbounds float, ptr %dst, i64 %q{a}{h}.o"]
            out += [f"  store {_V} %q{a}{h}.v, ptr %q{a}{h}.p, align 4"]
        out += [f"  br label %row{a}.done", f"row{a}.part:"]
        out += [f"  %pp{a}0 = getelementptr inbounds float, ptr %dst, i64 %q{a}0.o"]
        out += _store_first(f"sa{a}", f"%q{a}0.v", f"%pp{a}0", "%left")
        out += [f"  %left8{a} = sub i64 %left, 8", f"  %pp{a}1 = getelementptr inbounds float, ptr %dst, i64 %q{a}1.o"]  # fmt: skip
        out += _store_first(f"sb{a}", f"%q{a}1.v", f"%pp{a}1", f"%left8{a}")
        out += [f"  br label %row{a}.done", f"row{a}.done:"]
        if a == 0:
            out += [
                "  %second = icmp ult i64 %y1n, %h",
                "  br i1 %second, label %row1, label %blk.end",
            ]
        else:
            out += ["  br label %blk.end"]
    return "\n".join(out)


_OUT = """
define void @{name}(ptr noalias nocapture %dst, ptr noalias nocapture readonly %mm,
    ptr noalias nocapture readonly %b, ptr noalias nocapture readonly %z, i64 %m, i64 %th,
    i64 %tw, i64 %h, i64 %w, float %lo, float %hi) {{
entry:
{splat_lo}
{splat_hi}
  %tt = mul i64 %th, %tw
  %ks = mul i64 %m, %tt
  %hw = mul i64 %h, %w
  %empty = icmp eq i64 %tt, 0
  br i1 %empty, label %exit, label %chan
chan:
  %cc = phi i64 [0, %entry], [%cc1, %chan.end]
  %bp = getelementptr inbounds float, ptr %b, i64 %cc
  %bs = load float, ptr %bp, align 4
{splat_b}
  %mc = mul i64 %cc, %tt
  %dplane = mul i64 %cc, %hw
  br label %row
row:
  %ty = phi i64 [0, %chan], [%ty1, %row.end]
  %y0 = shl i64 %ty, 1
  %y1n = add i64 %y0, 1
  %mrow0 = mul i64 %ty, %tw
  %mrow = add i64 %mc, %mrow0
  br label %blk
blk:
  %tx = phi i64 [0, %row], [%tx8, %blk.end]
  %x0 = shl i64 %tx, 1
  %mat = add i64 %mrow, %tx
  %left = sub i64 %w, %x0
{loads}
{body}
{rows}
{stores}
blk.end:
  %tx8 = add nuw i64 %tx, 8
  %bmore = icmp ult i64 %tx8, %tw
  br i1 %bmore, label %blk, label %row.end
row.end:
  %ty1 = add nuw i64 %ty, 1
  %rmore = icmp ult i64 %ty1, %th
  br i1 %rmore, label %row, label %chan.end
chan.end:
  %cc1 = add nuw i64 %cc, 1
  %cmore = icmp ult i64 %cc1, %m
  br i1 %cmore, label %chan, label %exit
exit:
  ret void
}}"""


_DECLS = "declare <8 x float> @llvm.masked.load.v8f32.p0(ptr, i32, <8 x i1>, <8 x float>)"


def ir() -> str:
    """The module text: ``wino_in``, ``wino_out`` and ``wino_out_z``."""
    return "\n".join([_DECLS, _in_ir(), _out_ir(False), _out_ir(True)])


def bind(engine: object, fns: dict) -> None:
    """Enters the transforms of a compiled module into ``fns``."""
    get = engine.get_function_address  # type: ignore[attr-defined]
    i64, ptr, f32 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float
    fns[("wino_in",)] = ctypes.CFUNCTYPE(None, ptr, ptr, *([i64] * 5))(get("wino_in"))
    out = ctypes.CFUNCTYPE(None, *([ptr] * 4), *([i64] * 5), f32, f32)
    fns[("wino_out", False)] = out(get("wino_out"))
    fns[("wino_out", True)] = out(get("wino_out_z"))
