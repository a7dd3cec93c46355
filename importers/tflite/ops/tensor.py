"""Shape, layout and indexing rows (exact on raw integers, so quantized tensors pass through)."""

from __future__ import annotations

import numpy as np

from modelloader.importers.tflite.reader import TFLOperator
from modelloader.importers.tflite.table import TFL, TFLContext, tfl_op
from modelloader.ir.builder import onnx_dtype

_I64_MAX = np.iinfo(np.int64).max


def _out(op: TFLOperator, ctx: TFLContext, k: int = 0) -> str:
    return ctx.name(op.outputs[k])


@tfl_op("RESHAPE", raw_int=True)
def reshape(op: TFLOperator, ctx: TFLContext) -> None:
    x = ctx.name(op.inputs[0])
    if (
        len(op.inputs) > 1
        and op.inputs[1] >= 0
        and ctx.rank(op.inputs[1]) == 1
        and (ctx.const(op.inputs[1]) is None or ctx.const(op.inputs[1]).size)
    ):
        shape = ctx.as_int64(op.inputs[1])
    elif op.options.get("NewShape"):
        shape = ctx.int64(op.options["NewShape"])
    else:
        t = ctx.tensor(op.outputs[0])
        sig = t.shape_signature or t.shape
        shape = ctx.int64([-1 if d < 0 else d for d in sig])
    ctx.node("Reshape", [x, shape], [_out(op, ctx)], allowzero=1)


@tfl_op("SQUEEZE", raw_int=True)
def squeeze(op: TFLOperator, ctx: TFLContext) -> None:
    dims = op.options.get("SqueezeDims") or []
    ins = [ctx.name(op.inputs[0])]
    if dims:
        ins.append(ctx.int64(dims))
    ctx.node("Squeeze", ins, [_out(op, ctx)])


@tfl_op("EXPAND_DIMS", raw_int=True)
def expand_dims(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node("Unsqueeze", [ctx.name(op.inputs[0]), ctx.as_int64(op.inputs[1])], [_out(op, ctx)])


@tfl_op("CONCATENATION", raw_int=True)
def concatenation(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node(
        "Concat",
        [ctx.name(i) for i in op.inputs],
        [_out(op, ctx)],
        axis=int(op.options.get("Axis", 0)),
    )


def _pads(ctx: TFLContext, i: int) -> str:
    c = ctx.const(i)
    if c is not None:
        return ctx.int64(np.asarray(c).reshape(-1, 2).T.reshape(-1))
    t = ctx.tmp("Transpose", [ctx.as_int64(i)], perm=[1, 0])
    return ctx.tmp("Reshape", [t, ctx.int64([-1])])


@tfl_op("PAD", "PADV2", raw_int=True)
def pad(op: TFLOperator, ctx: TFLContext) -> None:
    ins = [ctx.name(op.inputs[0]), _pads(ctx, op.inputs[1])]
    q = ctx.quant(op.outputs[0])
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        ins.append(ctx.name(op.inputs[2]))
    elif q is not None:  # TFLite pads quantized tensors with the zero point
        ins.append(ctx.constant(np.asarray(q.zero_point[0], ctx.dtype(op.inputs[0]))))
    ctx.node("Pad", ins, [_out(op, ctx)])


@tfl_op("MIRROR_PAD", raw_int=True)
def mirror_pad(op: TFLOperator, ctx: TFLContext) -> None:
    mode = "symmetric" if op.options.get("Mode", 0) == 1 else "reflect"
    ctx.node(
        "MirrorPad",
        [ctx.name(op.inputs[0]), ctx.as_int64(op.inputs[1])],
        [_out(op, ctx)],
        TFL,
        mode=mode,
    )


@tfl_op("SPLIT", raw_int=True)
def split(op: TFLOperator, ctx: TFLContext) -> None:
    (axis,) = ctx.ints(op.inputs[0]) or [0]
    outs = [ctx.name(o) for o in op.outputs]
    ctx.node("Split", [ctx.name(op.inputs[1])], outs, axis=axis, num_outputs=len(outs))


@tfl_op("SPLIT_V", raw_int=True)
def split_v(op: TFLOperator, ctx: TFLContext) -> None:
    (axis,) = ctx.ints(op.inputs[2]) or [0]
    sizes = ctx.ints(op.inputs[1]) or []
    if -1 in sizes:
        dim = ctx.shape(op.inputs[0])[axis]
        sizes[sizes.index(-1)] = dim - (sum(sizes) + 1)
    outs = [ctx.name(o) for o in op.outputs]
    ctx.node("Split", [ctx.name(op.inputs[0]), ctx.int64(sizes)], outs, axis=axis)


@tfl_op("STRIDED_SLICE", raw_int=True)
def strided_slice(op: TFLOperator, ctx: TFLContext) -> None:
    o = op.options
    ctx.node(
        "StridedSlice",
        [ctx.name(i) for i in op.inputs[:4]],
        [_out(op, ctx)],
        TFL,
        begin_mask=int(o.get("BeginMask", 0)),
        end_mask=int(o.get("EndMask", 0)),
        ellipsis_mask=int(o.get("EllipsisMask", 0)),
        new_axis_mask=int(o.get("NewAxisMask", 0)),
        shrink_axis_mask=int(o.get("ShrinkAxisMask", 0)),
        offset=int(bool(o.get("Offset", False))),
    )


@tfl_op("SLICE", raw_int=True)
def slice_(op: TFLOperator, ctx: TFLContext) -> None:
    begin, size = ctx.ints(op.inputs[1]), ctx.ints(op.inputs[2])
    x = ctx.name(op.inputs[0])
    if begin is not None and size is not None:
        ends = [_I64_MAX if s < 0 else b + s for b, s in zip(begin, size)]
        ctx.node("Slice", [x, ctx.int64(begin), ctx.int64(ends)], [_out(op, ctx)])
    else:
        ctx.node(
            "TFLSlice", [x, ctx.name(op.inputs[1]), ctx.name(op.inputs[2])], [_out(op, ctx)], TFL
        )


@tfl_op("TRANSPOSE", raw_int=True)
def transpose(op: TFLOperator, ctx: TFLContext) -> None:
    perm = ctx.ints(op.inputs[1])
    if perm is None:
        ctx.node(
            "DynTranspose", [ctx.name(op.inputs[0]), ctx.name(op.inputs[1])], [_out(op, ctx)], TFL
        )
    else:
        ctx.node("Transpose", [ctx.name(op.inputs[0])], [_out(op, ctx)], perm=perm)


@tfl_op("GATHER", raw_int=True)
def gather(op: TFLOperator, ctx: TFLContext) -> None:
    axis, batch = int(op.options.get("Axis", 0)), int(op.options.get("BatchDims", 0))
    if batch:
        ctx.node(
            "BatchGather",
            [ctx.name(op.inputs[0]), ctx.name(op.inputs[1])],
            [_out(op, ctx)],
            TFL,
            axis=axis,
            batch_dims=batch,
        )
    else:
        ctx.node(
            "Gather", [ctx.name(op.inputs[0]), ctx.name(op.inputs[1])], [_out(op, ctx)], axis=axis
        )


@tfl_op("EMBEDDING_LOOKUP", raw_int=True)
def embedding_lookup(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node(
        "Gather", [ctx.float_const(op.inputs[1]), ctx.name(op.inputs[0])], [_out(op, ctx)], axis=0
    )


@tfl_op("GATHER_ND", raw_int=True)
def gather_nd(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node("GatherND", [ctx.name(op.inputs[0]), ctx.as_int64(op.inputs[1])], [_out(op, ctx)])


@tfl_op("SHAPE", raw_int=True)
def shape(op: TFLOperator, ctx: TFLContext) -> None:
    s = ctx.tmp("Shape", [ctx.name(op.inputs[0])])
    ctx.node("Cast", [s], [_out(op, ctx)], to=onnx_dtype(ctx.dtype(op.outputs[0])))


@tfl_op("RANK", raw_int=True)
def rank(op: TFLOperator, ctx: TFLContext) -> None:
    s = ctx.tmp("Size", [ctx.tmp("Shape", [ctx.name(op.inputs[0])])])
    ctx.node("Cast", [s], [_out(op, ctx)], to=onnx_dtype(ctx.dtype(op.outputs[0])))


@tfl_op("PACK", raw_int=True)
def pack(op: TFLOperator, ctx: TFLContext) -> None:
    axis = int(op.options.get("Axis", 0))
    ax = ctx.int64([axis])
    parts = [ctx.tmp("Unsqueeze", [ctx.name(i), ax]) for i in op.inputs]
    rank = ctx.rank(op.inputs[0]) + 1
    ctx.node("Concat", parts, [_out(op, ctx)], axis=axis % rank)


@tfl_op("UNPACK", raw_int=True)
def unpack(op: TFLOperator, ctx: TFLContext) -> None:
    axis = int(op.options.get("Axis", 0))
    parts = [ctx.fresh("unpack") for _ in op.outputs]
    ctx.node("Split", [ctx.name(op.inputs[0])], parts, axis=axis, num_outputs=len(parts))
    ax = ctx.int64([axis])
    for p, o in zip(parts, op.outputs):
        ctx.node("Squeeze", [p, ax], [ctx.name(o)])


@tfl_op("TILE", raw_int=True)
def tile(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node("Tile", [ctx.name(op.inputs[0]), ctx.as_int64(op.inputs[1])], [_out(op, ctx)])


@tfl_op("ONE_HOT", raw_int=True)
def one_hot(op: TFLOperator, ctx: TFLContext) -> None:
    """ONE_HOT(indices, depth, on_value, off_value; axis) as OneHot(indices, depth, [off, on]).

    ONNX OneHot counts a negative index from the end; TFLite gives it an all-off row, so
    negative indices are first moved out of range (to ``depth``). Indices and depth go in as
    int64 and the values as float32 or int64 (then cast to the output type): the type
    combinations runtimes implement."""
    idx = ctx.tmp("Cast", [ctx.name(op.inputs[0])], to=onnx_dtype(np.dtype(np.int64)))
    depth = ctx.tmp("Cast", [ctx.name(op.inputs[1])], to=onnx_dtype(np.dtype(np.int64)))
    idx = ctx.tmp("Where", [ctx.tmp("Less", [idx, ctx.int64(0)]), depth, idx])
    out_dt = np.dtype(ctx.dtype(op.outputs[0]))
    work = np.dtype(np.float32) if out_dt.kind == "f" else np.dtype(np.int64)
    on, off = (
        ctx.tmp("Cast", [ctx.tmp("Reshape", [ctx.name(op.inputs[k]), ctx.int64([1])])],
                to=onnx_dtype(work))
        for k in (2, 3)
    )  # fmt: skip
    values = ctx.tmp("Concat", [off, on], axis=0)
    axis = int(op.options.get("Axis", -1))
    if work == out_dt:
        ctx.node("OneHot", [idx, depth, values], [_out(op, ctx)], axis=axis)
    else:
        hot = ctx.tmp("OneHot", [idx, depth, values], axis=axis)
        ctx.node("Cast", [hot], [_out(op, ctx)], to=onnx_dtype(out_dt))


@tfl_op("BROADCAST_TO", raw_int=True)
def broadcast_to(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node("Expand", [ctx.name(op.inputs[0]), ctx.as_int64(op.inputs[1])], [_out(op, ctx)])


@tfl_op("FILL")
def fill(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node("Expand", [ctx.name(op.inputs[1]), ctx.as_int64(op.inputs[0])], [_out(op, ctx)])


@tfl_op("ZEROS_LIKE", "ONES_LIKE")
def zeros_like(op: TFLOperator, ctx: TFLContext) -> None:
    v = 0 if op.name == "ZEROS_LIKE" else 1
    s = ctx.tmp("Shape", [ctx.name(op.inputs[0])])
    c = ctx.constant(np.asarray(v, ctx.dtype(op.inputs[0])))
    ctx.node("Expand", [c, s], [_out(op, ctx)])


@tfl_op("RANGE")
def range_(op: TFLOperator, ctx: TFLContext) -> None:
    ins = [ctx.tmp("Squeeze", [ctx.name(i)]) if ctx.rank(i) else ctx.name(i) for i in op.inputs]
    ctx.node("Range", ins, [_out(op, ctx)])


@tfl_op("DEPTH_TO_SPACE", "SPACE_TO_DEPTH", raw_int=True)
def depth_space(op: TFLOperator, ctx: TFLContext) -> None:
    kind = "DepthToSpace" if op.name == "DEPTH_TO_SPACE" else "SpaceToDepth"
    x = ctx.tmp("Transpose", [ctx.name(op.inputs[0])], perm=[0, 3, 1, 2])
    kw = {"mode": "DCR"} if kind == "DepthToSpace" else {}
    y = ctx.tmp(kind, [x], blocksize=int(op.options["BlockSize"]), **kw)
    ctx.node("Transpose", [y], [_out(op, ctx)], perm=[0, 2, 3, 1])


@tfl_op("REVERSE_V2", raw_int=True)
def reverse(op: TFLOperator, ctx: TFLContext) -> None:
    ctx.node("Reverse", [ctx.name(op.inputs[0]), ctx.name(op.inputs[1])], [_out(op, ctx)], TFL)


@tfl_op("DENSIFY", raw_int=True)
def densify(op: TFLOperator, ctx: TFLContext) -> None:
    """The sparse input was densified at load; this is an identity."""
    ctx.node("Identity", [ctx.name(op.inputs[0])], [_out(op, ctx)])


@tfl_op("BATCH_TO_SPACE_ND", "SPACE_TO_BATCH_ND", raw_int=True)
def batch_space(op: TFLOperator, ctx: TFLContext) -> None:
    kind = "BatchToSpaceND" if op.name == "BATCH_TO_SPACE_ND" else "SpaceToBatchND"
    ctx.node(kind, [ctx.name(i) for i in op.inputs], [_out(op, ctx)], TFL)
