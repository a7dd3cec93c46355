"""Shape, layout, indexing and casting MIL ops."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloader.errors import ModelFormatError
from modelloader.importers.coreml.mlprogram import MILContext, mil_op
from modelloader.ir.builder import onnx_dtype

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min
_CAST = {
    "fp16": np.float32,  # float16 computes in float32 (see mlprogram's docstring)
    "fp32": np.float32,
    "fp64": np.float64,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "int64": np.int64,
    "bool": np.bool_,
}


def _ints(v: Any) -> list[int]:
    return [int(x) for x in np.asarray(v).reshape(-1)]


def _as_int64(op: Any, ctx: MILContext, key: str) -> str:
    v = ctx.const(op, key)
    if v is not None:
        return ctx.int64(v)
    return ctx.cast(ctx.arg(op, key), np.int64)


@mil_op("cast")
def cast(op: Any, ctx: MILContext) -> None:
    dt = str(ctx.need(op, "dtype"))
    if dt not in _CAST:
        raise ModelFormatError(f"MIL cast to {dt!r} is not supported")
    ctx.node("Cast", [ctx.arg(op, "x")], [ctx.out(op)], to=onnx_dtype(_CAST[dt]))


@mil_op("reshape")
def reshape(op: Any, ctx: MILContext) -> None:
    ctx.node("Reshape", [ctx.arg(op, "x"), _as_int64(op, ctx, "shape")], [ctx.out(op)])


@mil_op("reshape_like")
def reshape_like(op: Any, ctx: MILContext) -> None:
    shape = ctx.shape_of(ctx.out(op))
    if shape is None or not all(isinstance(d, int) for d in shape):
        raise ModelFormatError("MIL reshape_like needs a static output shape")
    ctx.node("Reshape", [ctx.arg(op, "x"), ctx.int64(shape)], [ctx.out(op)])


@mil_op("transpose")
def transpose(op: Any, ctx: MILContext) -> None:
    ctx.node("Transpose", [ctx.arg(op, "x")], [ctx.out(op)], perm=_ints(ctx.need(op, "perm")))


@mil_op("concat")
def concat(op: Any, ctx: MILContext) -> None:
    if bool(ctx.const(op, "interleave", False)):
        raise ModelFormatError("MIL concat with interleave=True is not supported")
    ins = [i for i in ctx.args(op, "values")]
    ctx.node("Concat", ins, [ctx.out(op)], axis=int(ctx.need(op, "axis")))


@mil_op("split")
def split(op: Any, ctx: MILContext) -> None:
    axis = int(ctx.need(op, "axis"))
    outs = [o.name for o in op.outputs]
    sizes = ctx.const(op, "split_sizes")
    if sizes is None:
        shapes = [ctx.shape_of(o) for o in outs]
        if all(s is not None and isinstance(s[axis], int) for s in shapes):
            sizes = [s[axis] for s in shapes]  # type: ignore[index]
    if sizes is not None:
        ctx.node("Split", [ctx.arg(op, "x"), ctx.int64(sizes)], outs, axis=axis)
    else:
        ctx.node("Split", [ctx.arg(op, "x")], outs, axis=axis, num_outputs=len(outs))


@mil_op("slice_by_index")
def slice_by_index(op: Any, ctx: MILContext) -> None:
    rank = ctx.in_rank(op)
    begin, end = ctx.const(op, "begin"), ctx.const(op, "end")
    stride = _ints(ctx.const(op, "stride", [1] * rank))
    bmask = [bool(b) for b in np.asarray(ctx.const(op, "begin_mask", [False] * rank)).reshape(-1)]
    emask = [bool(b) for b in np.asarray(ctx.const(op, "end_mask", [False] * rank)).reshape(-1)]
    smask = [bool(b) for b in np.asarray(ctx.const(op, "squeeze_mask", [False] * rank)).reshape(-1)]
    full_b = [_INT64_MAX if s < 0 else 0 for s in stride]
    full_e = [_INT64_MIN if s < 0 else _INT64_MAX for s in stride]
    x = ctx.arg(op, "x")
    if begin is not None:
        starts = ctx.int64([fb if m else int(b) for b, m, fb in zip(_ints(begin), bmask, full_b)])
    else:
        starts = ctx.tmp(
            "Where",
            [
                ctx.constant(np.asarray(bmask)),
                ctx.int64(full_b),
                ctx.cast(ctx.arg(op, "begin"), np.int64),
            ],
        )
    if end is not None:
        ends_l = [fe if m else int(e) for e, m, fe in zip(_ints(end), emask, full_e)]
        for i, sq in enumerate(smask):
            if sq and not emask[i] and begin is not None:
                ends_l[i] = _ints(begin)[i] + 1 if _ints(begin)[i] != -1 else _INT64_MAX
        ends = ctx.int64(ends_l)
    else:
        ends = ctx.tmp(
            "Where",
            [
                ctx.constant(np.asarray(emask)),
                ctx.int64(full_e),
                ctx.cast(ctx.arg(op, "end"), np.int64),
            ],
        )
        if any(smask):
            raise ModelFormatError("MIL slice_by_index with squeeze_mask needs a constant end")
    axes = ctx.int64(list(range(rank)))
    sq = [i for i, m in enumerate(smask) if m]
    y = ctx.out(op) if not sq else ctx.fresh("slice")
    ctx.node("Slice", [x, starts, ends, axes, ctx.int64(stride)], [y])
    if sq:
        ctx.node("Squeeze", [y, ctx.int64(sq)], [ctx.out(op)])


@mil_op("slice_by_size")
def slice_by_size(op: Any, ctx: MILContext) -> None:
    rank = ctx.in_rank(op)
    begin, size = _ints(ctx.need(op, "begin")), _ints(ctx.need(op, "size"))
    ends = [_INT64_MAX if s == -1 else b + s for b, s in zip(begin, size)]
    ctx.node(
        "Slice",
        [ctx.arg(op, "x"), ctx.int64(begin), ctx.int64(ends), ctx.int64(list(range(rank)))],
        [ctx.out(op)],
    )


@mil_op("gather")
def gather(op: Any, ctx: MILContext) -> None:
    if int(ctx.const(op, "batch_dims", 0)) != 0:
        raise ModelFormatError("MIL gather with batch_dims != 0 is not supported")
    ctx.node(
        "Gather",
        [ctx.arg(op, "x"), ctx.arg(op, "indices")],
        [ctx.out(op)],
        axis=int(ctx.const(op, "axis", 0)),
    )


@mil_op("gather_along_axis")
def gather_along_axis(op: Any, ctx: MILContext) -> None:
    ctx.node(
        "GatherElements",
        [ctx.arg(op, "x"), ctx.arg(op, "indices")],
        [ctx.out(op)],
        axis=int(ctx.const(op, "axis", 0)),
    )


@mil_op("gather_nd")
def gather_nd(op: Any, ctx: MILContext) -> None:
    ctx.node(
        "GatherND", [ctx.arg(op, "x"), ctx.cast(ctx.arg(op, "indices"), np.int64)], [ctx.out(op)]
    )


@mil_op("squeeze")
def squeeze(op: Any, ctx: MILContext) -> None:
    axes = ctx.const(op, "axes")
    ins = [ctx.arg(op, "x")]
    if axes is not None:
        ins.append(ctx.int64(axes))
    ctx.node("Squeeze", ins, [ctx.out(op)])


@mil_op("expand_dims")
def expand_dims(op: Any, ctx: MILContext) -> None:
    ctx.node("Unsqueeze", [ctx.arg(op, "x"), ctx.int64(ctx.need(op, "axes"))], [ctx.out(op)])


@mil_op("tile")
def tile(op: Any, ctx: MILContext) -> None:
    ctx.node("Tile", [ctx.arg(op, "x"), _as_int64(op, ctx, "reps")], [ctx.out(op)])


@mil_op("shape")
def shape(op: Any, ctx: MILContext) -> None:
    s = ctx.tmp("Shape", [ctx.arg(op, "x")])
    ctx.node("Cast", [s], [ctx.out(op)], to=onnx_dtype(np.int32))


@mil_op("fill")
def fill(op: Any, ctx: MILContext) -> None:
    dt = ctx.dtype_of(ctx.out(op)) or np.dtype(np.float32)
    ctx.node(
        "ConstantOfShape",
        [_as_int64(op, ctx, "shape")],
        [ctx.out(op)],
        value=np.asarray([ctx.const(op, "value", 0.0)], dt),
    )


@mil_op("fill_like")
def fill_like(op: Any, ctx: MILContext) -> None:
    dt = ctx.dtype_of(ctx.out(op)) or np.dtype(np.float32)
    s = ctx.tmp("Shape", [ctx.arg(op, "ref_tensor")])
    ctx.node(
        "ConstantOfShape", [s], [ctx.out(op)], value=np.asarray([ctx.const(op, "value", 0.0)], dt)
    )


@mil_op("range_1d")
def range_1d(op: Any, ctx: MILContext) -> None:
    ctx.node(
        "Range",
        [ctx.arg(op, "start"), ctx.arg(op, "end"), ctx.arg(op, "step")],
        [ctx.out(op)],
    )


@mil_op("stack")
def stack(op: Any, ctx: MILContext) -> None:
    axis = int(ctx.need(op, "axis"))
    ins = [ctx.tmp("Unsqueeze", [v, ctx.int64([axis])]) for v in ctx.args(op, "values")]
    ctx.node("Concat", ins, [ctx.out(op)], axis=axis)


@mil_op("flatten2d")
def flatten2d(op: Any, ctx: MILContext) -> None:
    ctx.node("Flatten", [ctx.arg(op, "x")], [ctx.out(op)], axis=int(ctx.const(op, "axis", 1)))


@mil_op("reverse")
def reverse(op: Any, ctx: MILContext) -> None:
    rank = ctx.in_rank(op)
    axes = [a % rank for a in _ints(ctx.const(op, "axes", list(range(rank))))]
    n = len(axes)
    ctx.node(
        "Slice",
        [
            ctx.arg(op, "x"),
            ctx.int64([-1] * n),
            ctx.int64([_INT64_MIN] * n),
            ctx.int64(axes),
            ctx.int64([-1] * n),
        ],
        [ctx.out(op)],
    )


@mil_op("topk")
def topk(op: Any, ctx: MILContext) -> None:
    k = ctx.int64([int(ctx.const(op, "k", 1))])
    vals, idx = ctx.out(op, 0), ctx.out(op, 1)
    i64 = ctx.fresh("idx")
    ctx.node(
        "TopK",
        [ctx.arg(op, "x"), k],
        [vals, i64],
        axis=int(ctx.const(op, "axis", -1)),
        largest=int(not bool(ctx.const(op, "ascending", False))),
    )
    ctx.node("Cast", [i64], [idx], to=onnx_dtype(np.int32))


@mil_op("cumsum")
def cumsum(op: Any, ctx: MILContext) -> None:
    ctx.node(
        "CumSum",
        [ctx.arg(op, "x"), ctx.constant(np.int64(ctx.const(op, "axis", 0)))],
        [ctx.out(op)],
        exclusive=int(bool(ctx.const(op, "exclusive", False))),
        reverse=int(bool(ctx.const(op, "reverse", False))),
    )


@mil_op("band_part")
def band_part(op: Any, ctx: MILContext) -> None:
    lower, upper = int(ctx.const(op, "lower", -1)), int(ctx.const(op, "upper", -1))
    x = ctx.arg(op, "x")
    if lower < 0 and upper >= 0:
        ctx.node("Trilu", [x, ctx.constant(np.int64(upper))], [ctx.out(op)], upper=0)
    elif upper < 0 and lower >= 0:
        ctx.node("Trilu", [x, ctx.constant(np.int64(-lower))], [ctx.out(op)], upper=1)
    elif lower < 0 and upper < 0:
        ctx.node("Identity", [x], [ctx.out(op)])
    else:
        t = ctx.tmp("Trilu", [x, ctx.constant(np.int64(upper))], upper=0)
        ctx.node("Trilu", [t, ctx.constant(np.int64(-lower))], [ctx.out(op)], upper=1)


@mil_op("pixel_shuffle")
def pixel_shuffle(op: Any, ctx: MILContext) -> None:
    ctx.node(
        "DepthToSpace",
        [ctx.arg(op, "x")],
        [ctx.out(op)],
        blocksize=int(ctx.need(op, "upscale_factor")),
        mode="CRD",
    )


@mil_op("argsort")
def argsort(op: Any, ctx: MILContext) -> None:
    shape = ctx.shape_of(ctx.out(op))
    axis = int(ctx.const(op, "axis", -1))
    if shape is None or not isinstance(shape[axis], int):
        raise ModelFormatError("MIL argsort needs a static size along its axis")
    _, idx = ctx.fresh("v"), ctx.fresh("i")
    ctx.node(
        "TopK",
        [ctx.arg(op, "x"), ctx.int64([shape[axis]])],
        [_, idx],
        axis=axis,
        largest=int(not bool(ctx.const(op, "ascending", False))),
    )
    ctx.node("Cast", [idx], [ctx.out(op)], to=onnx_dtype(np.int32))


@mil_op("classify")
def classify(op: Any, ctx: MILContext) -> None:
    """CoreML classifier head: (class label, {label: probability}) -> label + prob array."""
    classes = ctx.need(op, "classes")
    labels = [
        c.item() if isinstance(c, np.generic) else c
        for c in np.asarray(classes, object).reshape(-1)
    ]
    labels = [str(c) if isinstance(c, (str, bytes)) else int(c) for c in labels]
    ctx.class_labels = labels
    label_out, prob_out = ctx.out(op, 0), ctx.out(op, 1)
    flat = ctx.tmp("Reshape", [ctx.arg(op, "probabilities"), ctx.int64([-1])])
    ctx.node("Identity", [flat], [prob_out])
    idx = ctx.tmp("ArgMax", [flat], axis=0, keepdims=1)
    table = np.asarray(labels, dtype=object if isinstance(labels[0], str) else np.int64)
    ctx.node("Gather", [ctx.constant(table), idx], [label_out], axis=0)
