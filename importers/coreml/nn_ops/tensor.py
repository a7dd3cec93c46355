"""Layout, shape, constant, reduction, matmul/norm and indexing layers (legacy and ND)."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelloader.errors import ModelFormatError
from modelloader.importers.coreml.neuralnetwork import NNContext, nn_layer, weights

_I64_MAX = np.iinfo(np.int64).max
_I64_MIN = np.iinfo(np.int64).min


@nn_layer("concat")
def concat(layer: Any, ctx: NNContext) -> None:
    axis = -5 if layer.concat.sequenceConcat else -3
    ctx.node("Concat", ctx.ins(layer), [ctx.y(layer)], axis=axis)


@nn_layer("concatND")
def concat_nd(layer: Any, ctx: NNContext) -> None:
    if layer.concatND.interleave:
        raise ModelFormatError("concatND with interleave is not supported")
    ctx.node("Concat", ctx.ins(layer), [ctx.y(layer)], axis=int(layer.concatND.axis))


@nn_layer("split")
def split(layer: Any, ctx: NNContext) -> None:
    ctx.node("Split", [ctx.x(layer)], list(layer.output), axis=-3, num_outputs=len(layer.output))


@nn_layer("splitND")
def split_nd(layer: Any, ctx: NNContext) -> None:
    p = layer.splitND
    ins = [ctx.x(layer)]
    attrs: dict[str, Any] = {"axis": int(p.axis)}
    if len(p.splitSizes):
        ins.append(ctx.int64(list(p.splitSizes)))
    else:
        attrs["num_outputs"] = len(layer.output)
    ctx.node("Split", ins, list(layer.output), **attrs)


@nn_layer("flatten")
def flatten(layer: Any, ctx: NNContext) -> None:
    x = ctx.x(layer)
    r = ctx.rank_of(x)
    if layer.flatten.mode == 1:  # CHANNEL_LAST
        x = ctx.tmp("Transpose", [x], perm=list(range(r - 3)) + [r - 2, r - 1, r - 3])
    ctx.node("Reshape", [x, ctx.int64([0] * (r - 3) + [-1, 1, 1])], [ctx.y(layer)])


@nn_layer("flattenTo2D")
def flatten_2d(layer: Any, ctx: NNContext) -> None:
    ctx.node("Flatten", [ctx.x(layer)], [ctx.y(layer)], axis=int(layer.flattenTo2D.axis))
    ctx.rank[ctx.y(layer)] = 2


@nn_layer("reshape")
def reshape(layer: Any, ctx: NNContext) -> None:
    p = layer.reshape
    t = [int(v) for v in p.targetShape]
    x = ctx.x(layer)
    r = ctx.rank_of(x)
    if p.mode == 1:  # CHANNEL_LAST
        x = ctx.tmp("Transpose", [x], perm=list(range(r - 3)) + [r - 2, r - 1, r - 3])
    if len(t) == 3:
        shape = [0] * (r - 3) + t
    else:
        shape = [t[0]] + [0] * (r - 4) + t[1:]
    ctx.node("Reshape", [x, ctx.int64(shape)], [ctx.y(layer)])


@nn_layer("reshapeStatic")
def reshape_static(layer: Any, ctx: NNContext) -> None:
    t = [int(v) for v in layer.reshapeStatic.targetShape]
    ctx.node("Reshape", [ctx.x(layer), ctx.int64(t)], [ctx.y(layer)])
    ctx.rank[ctx.y(layer)] = len(t)


@nn_layer("reshapeDynamic")
def reshape_dynamic(layer: Any, ctx: NNContext) -> None:
    shape = ctx.cast(ctx.name(layer.input[1]), np.int64)
    ctx.node("Reshape", [ctx.x(layer), shape], [ctx.y(layer)])


@nn_layer("permute")
def permute(layer: Any, ctx: NNContext) -> None:
    """axes over (Seq, C, H, W); batch (rank-5 axis 1) stays."""
    a = [int(v) for v in layer.permute.axis]
    m = {0: 0, 1: 2, 2: 3, 3: 4}
    ctx.node(
        "Transpose", [ctx.x(layer)], [ctx.y(layer)], perm=[m[a[0]], 1, m[a[1]], m[a[2]], m[a[3]]]
    )


@nn_layer("transpose")
def transpose(layer: Any, ctx: NNContext) -> None:
    ctx.node(
        "Transpose", [ctx.x(layer)], [ctx.y(layer)], perm=[int(v) for v in layer.transpose.axes]
    )


@nn_layer("loadConstant")
def load_constant(layer: Any, ctx: NNContext) -> None:
    shape = [int(v) for v in layer.loadConstant.shape]
    w = weights(layer.loadConstant.data, shape)
    if ctx.rank5:
        w = w.reshape([1, 1] + shape)
    ctx.constants[ctx.y(layer)] = w
    ctx.rank[ctx.y(layer)] = w.ndim


@nn_layer("loadConstantND")
def load_constant_nd(layer: Any, ctx: NNContext) -> None:
    shape = [int(v) for v in layer.loadConstantND.shape]
    ctx.constants[ctx.y(layer)] = weights(layer.loadConstantND.data, shape)
    ctx.rank[ctx.y(layer)] = len(shape)


_REDUCE = [
    "ReduceSum",
    "ReduceMean",
    "ReduceProd",
    "ReduceLogSum",
    "ReduceSumSquare",
    "ReduceL1",
    "ReduceL2",
    "ReduceMax",
    "ReduceMin",
    "ArgMax",
]


@nn_layer("reduce")
def reduce(layer: Any, ctx: NNContext) -> None:
    """Legacy reduce over CHW/HW/C/H/W, dims kept."""
    p = layer.reduce
    axes = [[-3, -2, -1], [-2, -1], [-3], [-2], [-1]][p.axis]
    op = _REDUCE[p.mode]
    x = ctx.x(layer)
    if op == "ArgMax":
        i = ctx.tmp("ArgMax", [x], axis=axes[0], keepdims=1)
        ctx.node("Cast", [i], [ctx.y(layer)], to=1)
        return
    ctx.node(op, [x, ctx.int64(axes)], [ctx.y(layer)], keepdims=1)


_REDUCE_ND = {
    "reduceSum": "ReduceSum",
    "reduceMean": "ReduceMean",
    "reduceProd": "ReduceProd",
    "reduceMax": "ReduceMax",
    "reduceMin": "ReduceMin",
    "reduceL1": "ReduceL1",
    "reduceL2": "ReduceL2",
    "reduceLogSum": "ReduceLogSum",
    "reduceSumSquare": "ReduceSumSquare",
    "reduceLogSumExp": "ReduceLogSumExp",
}


@nn_layer(*_REDUCE_ND)
def reduce_nd(layer: Any, ctx: NNContext) -> None:
    kind = layer.WhichOneof("layer")
    p = getattr(layer, kind)
    ins = [ctx.x(layer)]
    r = ctx.rank_of(layer.input[0])
    axes = list(range(r)) if p.reduceAll else [int(a) for a in p.axes]
    ins.append(ctx.int64(axes))
    ctx.node(_REDUCE_ND[kind], ins, [ctx.y(layer)], keepdims=int(p.keepDims))
    ctx.rank[ctx.y(layer)] = r if p.keepDims else r - len(axes)


@nn_layer("argMax", "argMin")
def arg_max(layer: Any, ctx: NNContext) -> None:
    kind = layer.WhichOneof("layer")
    p = getattr(layer, kind)
    i = ctx.tmp(
        "ArgMax" if kind == "argMax" else "ArgMin",
        [ctx.x(layer)],
        axis=int(p.axis),
        keepdims=int(not p.removeDim),
    )
    ctx.node("Cast", [i], [ctx.y(layer)], to=1)
    r = ctx.rank_of(layer.input[0])
    ctx.rank[ctx.y(layer)] = r - 1 if p.removeDim and r > 1 else r


@nn_layer("batchedMatmul")
def batched_matmul(layer: Any, ctx: NNContext) -> None:
    p = layer.batchedMatmul
    ins = ctx.ins(layer)
    a = ins[0]
    ra = ctx.rank_of(layer.input[0])
    if p.transposeA:
        a = ctx.tmp("Transpose", [a], perm=list(range(ra - 2)) + [ra - 1, ra - 2])
    if len(ins) > 1:
        b = ins[1]
        rb = ctx.rank_of(layer.input[1])
        if p.transposeB:
            b = ctx.tmp("Transpose", [b], perm=list(range(rb - 2)) + [rb - 1, rb - 2])
        ctx.node("MatMul", [a, b], [ctx.y(layer)])
        ctx.rank[ctx.y(layer)] = max(ra, rb)
        return
    cin, cout = int(p.weightMatrixFirstDimension), int(p.weightMatrixSecondDimension)
    w = ctx.weights(p.weights, (cin, cout))
    y = ctx.tmp("MatMul", [a, w])
    if p.hasBias:
        y = ctx.tmp("Add", [y, ctx.weights(p.bias, (cout,), hint="b")])
    ctx.node("Identity", [y], [ctx.y(layer)])


@nn_layer("layerNormalization")
def layer_norm(layer: Any, ctx: NNContext) -> None:
    p = layer.layerNormalization
    shape = [int(v) for v in p.normalizedShape]
    r = ctx.rank_of(layer.input[0])
    ctx.node(
        "LayerNormalization",
        [ctx.x(layer), ctx.weights(p.gamma, shape), ctx.weights(p.beta, shape, hint="b")],
        [ctx.y(layer)],
        axis=r - len(shape),
        epsilon=float(p.eps),
    )


@nn_layer("mvn")
def mvn(layer: Any, ctx: NNContext) -> None:
    p = layer.mvn
    x = ctx.x(layer)
    axes = ctx.int64([-3, -2, -1] if p.acrossChannels else [-2, -1])
    mean = ctx.tmp("ReduceMean", [x, axes], keepdims=1)
    xc = ctx.tmp("Sub", [x, mean]) if p.normalizeVariance or True else x
    if not p.normalizeVariance:
        ctx.node("Identity", [xc], [ctx.y(layer)])
        return
    var = ctx.tmp("ReduceMean", [ctx.tmp("Mul", [xc, xc]), axes], keepdims=1)
    std = ctx.tmp("Add", [ctx.tmp("Sqrt", [var]), ctx.constant(np.float32(p.epsilon or 1e-9))])
    ctx.node("Div", [xc, std], [ctx.y(layer)])


@nn_layer("gather")
def gather(layer: Any, ctx: NNContext) -> None:
    idx = ctx.cast(ctx.name(layer.input[1]), np.int64)
    ctx.node("Gather", [ctx.x(layer), idx], [ctx.y(layer)], axis=int(layer.gather.axis))
    ctx.rank[ctx.y(layer)] = ctx.rank_of(layer.input[0]) + ctx.rank_of(layer.input[1]) - 1


@nn_layer("embeddingND")
def embedding_nd(layer: Any, ctx: NNContext) -> None:
    """indices [..., 1] -> [..., embeddingSize] via weights [embeddingSize, vocabSize]."""
    p = layer.embeddingND
    w = weights(p.weights, (int(p.embeddingSize), int(p.vocabSize))).T
    idx = ctx.tmp("Squeeze", [ctx.cast(ctx.x(layer), np.int64), ctx.int64([-1])])
    y = ctx.tmp("Gather", [ctx.constant(np.ascontiguousarray(w)), idx], axis=0)
    if p.hasBias:
        y = ctx.tmp("Add", [y, ctx.weights(p.bias, (int(p.embeddingSize),))])
    ctx.node("Identity", [y], [ctx.y(layer)])


@nn_layer("squeeze")
def squeeze(layer: Any, ctx: NNContext) -> None:
    p = layer.squeeze
    ins = [ctx.x(layer)]
    r = ctx.rank_of(layer.input[0])
    if not p.squeezeAll:
        ins.append(ctx.int64(list(p.axes)))
        ctx.rank[ctx.y(layer)] = max(r - len(p.axes), 0)
    ctx.node("Squeeze", ins, [ctx.y(layer)])


@nn_layer("expandDims")
def expand_dims(layer: Any, ctx: NNContext) -> None:
    axes = list(layer.expandDims.axes)
    ctx.node("Unsqueeze", [ctx.x(layer), ctx.int64(axes)], [ctx.y(layer)])
    ctx.rank[ctx.y(layer)] = ctx.rank_of(layer.input[0]) + len(axes)


@nn_layer("sliceStatic")
def slice_static(layer: Any, ctx: NNContext) -> None:
    p = layer.sliceStatic
    r = ctx.rank_of(layer.input[0])
    strides = [int(v) for v in p.strides] or [1] * r
    starts, ends, squeeze = [], [], []
    for i in range(r):
        s = strides[i]
        b = (_I64_MAX if s < 0 else 0) if p.beginMasks[i] else int(p.beginIds[i])
        e = (_I64_MIN if s < 0 else _I64_MAX) if p.endMasks[i] else int(p.endIds[i])
        if len(p.squeezeMasks) > i and p.squeezeMasks[i]:
            squeeze.append(i)
            e = b + 1 if b != -1 else _I64_MAX
        starts.append(b)
        ends.append(e)
    y = ctx.y(layer) if not squeeze else ctx.fresh("slice")
    ctx.node(
        "Slice",
        [
            ctx.x(layer),
            ctx.int64(starts),
            ctx.int64(ends),
            ctx.int64(list(range(r))),
            ctx.int64(strides),
        ],
        [y],
    )
    if squeeze:
        ctx.node("Squeeze", [y, ctx.int64(squeeze)], [ctx.y(layer)])
        ctx.rank[ctx.y(layer)] = r - len(squeeze)


@nn_layer("slice")
def slice_(layer: Any, ctx: NNContext) -> None:
    """Legacy slice along CHANNEL/HEIGHT/WIDTH (axis -3/-2/-1)."""
    p = layer.slice
    axis = [-3, -2, -1][p.axis]
    end = int(p.endIndex)
    end = _I64_MAX if end == -1 else end
    ctx.node(
        "Slice",
        [
            ctx.x(layer),
            ctx.int64([int(p.startIndex)]),
            ctx.int64([end]),
            ctx.int64([axis]),
            ctx.int64([int(p.stride) or 1]),
        ],
        [ctx.y(layer)],
    )


@nn_layer("whereBroadcastable")
def where(layer: Any, ctx: NNContext) -> None:
    ins = ctx.ins(layer)
    ctx.node("Where", [ctx.cast(ins[0], np.bool_), ins[1], ins[2]], [ctx.y(layer)])
    ctx.rank[ctx.y(layer)] = max(ctx.rank_of(n) for n in layer.input)


@nn_layer("getShape")
def get_shape(layer: Any, ctx: NNContext) -> None:
    ctx.node("Cast", [ctx.tmp("Shape", [ctx.x(layer)])], [ctx.y(layer)], to=1)
    ctx.rank[ctx.y(layer)] = 1


@nn_layer("tile")
def tile(layer: Any, ctx: NNContext) -> None:
    ctx.node("Tile", [ctx.x(layer), ctx.int64(list(layer.tile.reps))], [ctx.y(layer)])


@nn_layer("embedding")
def embedding(layer: Any, ctx: NNContext) -> None:
    p = layer.embedding
    w = weights(p.weights, (int(p.outputChannels), int(p.inputDim))).T
    idx = ctx.cast(ctx.x(layer), np.int64)
    y = ctx.tmp("Gather", [ctx.constant(np.ascontiguousarray(w)), idx], axis=0)
    if p.hasBias:
        y = ctx.tmp("Add", [y, ctx.weights(p.bias, (int(p.outputChannels),))])
    ctx.node("Identity", [y], [ctx.y(layer)])
