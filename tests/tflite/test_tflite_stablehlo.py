"""TFLite STABLEHLO_* builtins beyond the interpreter-checked fixtures (stablehlo_ops_f32,
stablehlo_layout_handmade, stablehlo_window_handmade): the ``builtin_options_2`` reader,
the gather / scatter / reduce_window / pad semantics against loop-by-loop references written
from the StableHLO spec, RNG_BIT_GENERATOR against Random123's known-answer vectors, and the
typed errors of malformed or unsupported variants, on small .tflite files written with the
``tflite`` schema builders (tests/tflite/flatbuf.py).
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tflite
from onnx import TensorProto

import modelloader
from modelloader.errors import (
    ExecutionError,
    ModelFormatError,
    ModelLoaderError,
    UnsupportedOpError,
)
from modelloader.importers.tflite import parse
from modelloader.importers.tflite.table import TABLE
from modelloader.kernels.cpu.tflite_stablehlo import (
    rng_bit_generator,
    stablehlo_reduce_window,
    stablehlo_scatter,
)

sys.path.insert(0, str(Path(__file__).parent))
from flatbuf import SG, Op, T, one_op  # noqa: E402

# --------------------------------------------------------------------------- computation bodies


def body(op: str | None, dtype: Any = np.float32) -> SG:
    """A scalar (a, b) -> op(a, b) subgraph; ``op=None`` returns b."""
    ts = [T([], dtype), T([], dtype)]
    if op is None:
        return SG(ts, [], [0, 1], [1])
    return SG([*ts, T([], dtype)], [Op(op, [0, 1], [2])], [0, 1], [2])


# --------------------------------------------------------------------------- references (spec)


def gather_ref(x, idx, offset_dims, collapsed, start_map, ivd, sizes) -> np.ndarray:
    """stablehlo.gather, element by element, with TFLite's clamped start indices."""
    idx = np.asarray(idx)
    if ivd == idx.ndim:
        idx, ivd = idx[..., None], idx.ndim
    batch = [n for d, n in enumerate(idx.shape) if d != ivd]
    offs = iter([s for d, s in enumerate(sizes) if d not in collapsed])
    bats = iter(batch)
    rank = len(batch) + len(offset_dims)
    shape = [next(offs) if p in offset_dims else next(bats) for p in range(rank)]
    out = np.zeros(shape, x.dtype)
    for o in itertools.product(*map(range, shape)):
        where = [o[p] for p in range(rank) if p not in offset_dims]
        where.insert(ivd, slice(None))
        vec = idx[tuple(where)]
        start = [0] * x.ndim
        for k, d in enumerate(start_map):
            start[d] = min(max(int(vec[k]), 0), x.shape[d] - sizes[d])
        off = iter(o[p] for p in offset_dims)
        full = [start[d] + (0 if d in collapsed else next(off)) for d in range(x.ndim)]
        out[o] = x[tuple(full)]
    return out


def scatter_ref(x, idx, upd, window, inserted, to_operand, ivd, fn) -> np.ndarray:
    """stablehlo.scatter, update by update in row-major order, out-of-bounds skipped."""
    out = x.copy()
    idx = np.asarray(idx)
    if ivd == idx.ndim:
        idx, ivd = idx[..., None], idx.ndim
    for u in itertools.product(*map(range, upd.shape)):
        where: list[Any] = [u[d] for d in range(upd.ndim) if d not in window]
        where.insert(ivd, slice(None))
        vec = idx[tuple(where)]
        w = iter(u[d] for d in window)
        target = [0 if d in inserted else next(w) for d in range(x.ndim)]
        for k, d in enumerate(to_operand):
            target[d] += int(vec[k])
        if all(0 <= t < n for t, n in zip(target, x.shape)):
            out[tuple(target)] = fn(out[tuple(target)], upd[u])
    return out


def reduce_window_ref(x, init, fn, window, strides, base, dil, pad) -> np.ndarray:
    """stablehlo.reduce_window on one operand, window element by window element."""
    init = x.dtype.type(init)
    padded_shape = [
        (n - 1) * b + 1 + pad[2 * d] + pad[2 * d + 1] for d, (n, b) in enumerate(zip(x.shape, base))
    ]
    extent = [(w - 1) * d + 1 for w, d in zip(window, dil)]
    shape = [
        max((n - e) // s + 1, 0) if n >= e else 0 for n, e, s in zip(padded_shape, extent, strides)
    ]

    def value(p: tuple[int, ...]) -> Any:
        src = []
        for d, q in enumerate(p):
            q -= pad[2 * d]
            if q < 0 or q % base[d] or q // base[d] >= x.shape[d]:
                return init
            src.append(q // base[d])
        return x[tuple(src)]

    out = np.zeros(shape, x.dtype)
    with np.errstate(over="ignore"):
        for o in itertools.product(*map(range, shape)):
            acc = init
            for w in itertools.product(*map(range, window)):
                acc = fn(
                    acc, value(tuple(oi * s + wi * d for oi, s, wi, d in zip(o, strides, w, dil)))
                )
            out[o] = acc
    return out


# --------------------------------------------------------------------------- reader


def _gather_model(xs, idx_shape, idx_dtype=np.int32, *, idx_sig=None, **fields) -> bytes:
    out_shape = fields.pop("out_shape")
    return one_op(
        [T(xs), T(idx_shape, idx_dtype, signature=idx_sig), T(out_shape)],
        Op("STABLEHLO_GATHER", [0, 1], [2], "StablehloGatherOptions", fields),
        [0, 1],
        [2],
    )


def _row_gather_model() -> bytes:
    """A STABLEHLO_GATHER of whole rows of a (4, 3) tensor at (2, 1) indices, its
    BuiltinOptions2 fields set."""
    return _gather_model(
        [4, 3],
        [2, 1],
        OffsetDims=[1],
        CollapsedSliceDims=[0],
        StartIndexMap=[0],
        IndexVectorDim=1,
        SliceSizes=[1, 3],
        out_shape=[2, 3],
    )


def test_builtin_options_2_are_read() -> None:
    data = _row_gather_model()
    op = parse(data).subgraphs[0].operators[0]
    assert op.name == "STABLEHLO_GATHER"
    assert op.options["OffsetDims"] == [1] and op.options["SliceSizes"] == [1, 3]
    assert op.options["IndexVectorDim"] == 1 and op.options["IndicesAreSorted"] is False


def test_damaged_options_2_raise_typed_errors() -> None:
    data = _row_gather_model()
    op = tflite.Model.GetRootAs(data, 0).Subgraphs(0).Operators(0)
    table = op.BuiltinOptions2()
    opts = tflite.StablehloGatherOptions()
    opts.Init(table.Bytes, table.Pos)
    length_at = opts._tab.Vector(opts._tab.Offset(12)) - 4  # SliceSizes' element count
    bad = bytearray(data)
    bad[length_at : length_at + 4] = (1 << 30).to_bytes(4, "little")
    with pytest.raises(ModelFormatError, match="corrupt or truncated"):
        parse(bytes(bad))
    rng = np.random.default_rng(7)
    for _ in range(150):  # random damage: typed errors only
        d = bytearray(data)
        for _ in range(3):
            d[int(rng.integers(8, len(d)))] = int(rng.integers(0, 256))
        try:
            modelloader.load(bytes(d)).predict(
                {"t0": np.zeros([4, 3], np.float32), "t1": np.zeros([2, 1], np.int32)}
            )
        except ModelLoaderError:
            pass


def test_rows_are_exactly_the_ops_the_interpreter_runs() -> None:
    rows = {k for k in TABLE if k.startswith("STABLEHLO_")}
    assert rows == {
        f"STABLEHLO_{n}"
        for n in ("ADD", "MULTIPLY", "MAXIMUM", "MINIMUM", "AND", "SHIFT_LEFT", "PAD", "GATHER",
                  "SCATTER", "REDUCE_WINDOW", "RNG_BIT_GENERATOR", "COMPOSITE")
    }  # fmt: skip
    data = one_op([T([3]), T([3])], Op("STABLEHLO_LOGISTIC", [0], [1]), [0], [1])
    with pytest.raises(UnsupportedOpError, match="STABLEHLO_LOGISTIC"):
        modelloader.load(data)


# --------------------------------------------------------------------------- gather


GATHERS = [  # operand shape, indices shape, attributes, output shape
    ([5, 4], [3, 1], dict(OffsetDims=[1], CollapsedSliceDims=[0], StartIndexMap=[0],
                          IndexVectorDim=1, SliceSizes=[1, 4]), [3, 4]),
    ([3, 4, 5], [2, 2, 3], dict(OffsetDims=[0, 3], CollapsedSliceDims=[1],
                                StartIndexMap=[1, 0], IndexVectorDim=1,
                                SliceSizes=[2, 1, 5]), [2, 2, 3, 5]),
    ([3, 4, 5], [2, 3, 2], dict(OffsetDims=[0, 3, 4], CollapsedSliceDims=[],
                                StartIndexMap=[2, 1], IndexVectorDim=0,
                                SliceSizes=[3, 1, 2]), [3, 3, 2, 1, 2]),
    ([6, 2], [4], dict(OffsetDims=[1], CollapsedSliceDims=[0], StartIndexMap=[0],
                       IndexVectorDim=1, SliceSizes=[1, 2]), [4, 2]),  # implicit vector
    ([4, 5], [2], dict(OffsetDims=[0, 1], CollapsedSliceDims=[], StartIndexMap=[0, 1],
                       IndexVectorDim=0, SliceSizes=[2, 3]), [2, 3]),  # no batch dims
]  # fmt: skip


@pytest.mark.parametrize("xs,ish,attrs,out_shape", GATHERS)
def test_gather_matches_the_spec(xs, ish, attrs, out_shape) -> None:
    rng = np.random.default_rng(len(xs) * 10 + len(ish))
    x = rng.standard_normal(xs).astype(np.float32)
    idx = rng.integers(-3, 8, ish).astype(np.int64)
    m = modelloader.load(_gather_model(xs, ish, np.int64, out_shape=out_shape, **attrs))
    got = m.predict({"t0": x, "t1": idx})["t2"]
    keys = ("OffsetDims", "CollapsedSliceDims", "StartIndexMap", "IndexVectorDim", "SliceSizes")
    ref = gather_ref(x, idx, *(attrs[k] for k in keys))
    np.testing.assert_array_equal(got, ref)


def test_gather_implicit_index_vector_equals_the_explicit_form() -> None:
    """TFLite's kernel crashes on index_vector_dim == rank(indices), the converter's form of
    tf.gather; the spec reads it as a trailing vector of one index."""
    attrs = dict(OffsetDims=[1], CollapsedSliceDims=[0], StartIndexMap=[0], SliceSizes=[1, 3])
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    i = np.array([3, 0, 9, -1], np.int32)
    implicit = modelloader.load(
        _gather_model([4, 3], [4], IndexVectorDim=1, out_shape=[4, 3], **attrs)
    )
    explicit = modelloader.load(
        _gather_model([4, 3], [4, 1], IndexVectorDim=1, out_shape=[4, 3], **attrs)
    )
    a = implicit.predict({"t0": x, "t1": i})["t2"]
    b = explicit.predict({"t0": x, "t1": i[:, None]})["t2"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, x[[3, 0, 3, 0]])  # clamped into [0, 3]


def test_gather_with_a_dynamic_batch() -> None:
    attrs = dict(
        OffsetDims=[1],
        CollapsedSliceDims=[0],
        StartIndexMap=[0],
        IndexVectorDim=1,
        SliceSizes=[1, 3],
    )
    m = modelloader.load(_gather_model([4, 3], [1, 1], idx_sig=[-1, 1], out_shape=[1, 3], **attrs))
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    for n in (1, 5):
        i = np.arange(n, dtype=np.int32)[:, None] % 4
        np.testing.assert_array_equal(m.predict({"t0": x, "t1": i})["t2"], x[i[:, 0]])


@pytest.mark.parametrize(
    "attrs",
    [
        dict(OffsetDims=[1], CollapsedSliceDims=[0], StartIndexMap=[0, 1], IndexVectorDim=1,
             SliceSizes=[1, 3]),  # index vectors of 1 for a map of 2
        dict(OffsetDims=[1], CollapsedSliceDims=[1], StartIndexMap=[0], IndexVectorDim=1,
             SliceSizes=[1, 3]),  # collapsing a dim of slice size 3
        dict(OffsetDims=[1], CollapsedSliceDims=[0], StartIndexMap=[0], IndexVectorDim=1,
             SliceSizes=[1, 9]),  # slice larger than the operand
        dict(OffsetDims=[1], CollapsedSliceDims=[0], StartIndexMap=[0], IndexVectorDim=5,
             SliceSizes=[1, 3]),
    ],
)  # fmt: skip
def test_gather_inconsistent_attributes_are_format_errors(attrs) -> None:
    with pytest.raises(ModelFormatError, match="STABLEHLO_GATHER"):
        modelloader.load(_gather_model([4, 3], [2, 1], out_shape=[2, 3], **attrs))


# --------------------------------------------------------------------------- pad


def _pad_model(xs, dtype, value, low, high, interior, out_shape, sig=None) -> bytes:
    return one_op(
        [T(xs, dtype, signature=sig), T([], dtype, value), T(out_shape, dtype)],
        Op(
            "STABLEHLO_PAD",
            [0, 1],
            [2],
            "StablehloPadOptions",
            dict(EdgePaddingLow=low, EdgePaddingHigh=high, InteriorPadding=interior),
        ),
        [0],
        [2],
    )


def test_pad_interior_and_negative_edges() -> None:
    x = np.arange(1, 7, dtype=np.int32).reshape(2, 3)
    m = modelloader.load(_pad_model([2, 3], np.int32, 0, [-1, 1], [2, -2], [1, 2], [4, 6]))
    want = np.array(
        [[0, 0, 0, 0, 0, 0], [0, 4, 0, 0, 5, 0], [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]
    )  # rows [1 0 4] cropped by one, two zeros added; columns 1 0 0 2 0 0 3 -> 0 + [..] - 2
    np.testing.assert_array_equal(m.predict({"t0": x})["t2"], want)


def test_pad_interior_along_a_dynamic_axis_is_unsupported() -> None:
    data = _pad_model([2, 3], np.float32, 0.0, [0, 0], [0, 0], [1, 0], [3, 3], sig=[-1, 3])
    with pytest.raises(UnsupportedOpError, match="interior padding along a dynamic axis"):
        modelloader.load(data)


def test_pad_to_a_negative_size_is_a_format_error() -> None:
    data = _pad_model([2, 3], np.float32, 0.0, [0, -3], [0, -1], [0, 0], [2, 0])
    with pytest.raises(ModelFormatError, match="negative size"):
        modelloader.load(data)


@pytest.mark.parametrize(
    "interior,out,match",
    [
        ([0, 1 << 31], [2, -1], "elements"),  # a hostile interior padding: refused, not built
        ([1, 0], [2, 3], "the file declares"),  # the file's output shape disagrees
    ],
)
def test_pad_sizes_are_checked_before_building(interior, out, match) -> None:  # noqa: ANN001
    data = _pad_model([2, 3], np.float32, 0.0, [0, 0], [0, 0], interior, out)
    with pytest.raises(ModelFormatError, match=match):
        modelloader.load(data)


# --------------------------------------------------------------------------- scatter

SCATTERS = [  # operand, indices, updates shapes; window, inserted, to_operand, ivd
    ([5, 4], [6, 1], [6, 4], [1], [0], [0], 1),
    ([4, 5, 3], [3, 2], [3, 2, 3], [1, 2], [1], [1, 0], 1),
    ([3, 4], [2, 3], [3], [], [0, 1], [0, 1], 0),
    ([6], [5], [5], [], [0], [0], 1),  # implicit index vector
    ([4, 4], [2, 1], [2, 3, 4], [1, 2], [], [0], 1),  # windows partly outside
]


@pytest.mark.parametrize("computation", ["update", "add", "mul", "max", "min"])
@pytest.mark.parametrize("shapes", SCATTERS)
def test_scatter_matches_the_spec(shapes, computation) -> None:
    xs, ish, us, window, inserted, to_operand, ivd = shapes
    rng = np.random.default_rng(len(ish) + len(us))
    x = rng.integers(-9, 9, xs).astype(np.int32)
    idx = rng.integers(-2, 6, ish).astype(np.int32)  # repeats, negatives and out of range
    upd = rng.integers(-9, 9, us).astype(np.int32)
    fn: Callable[[Any, Any], Any] = {
        "update": lambda a, b: b,
        "add": np.add,
        "mul": np.multiply,
        "max": np.maximum,
        "min": np.minimum,
    }[computation]
    got = stablehlo_scatter(
        x,
        idx,
        upd,
        update_window_dims=window,
        inserted_window_dims=inserted,
        scatter_dims_to_operand_dims=to_operand,
        index_vector_dim=ivd,
        computation=computation,
    )
    np.testing.assert_array_equal(
        got, scatter_ref(x, idx, upd, window, inserted, to_operand, ivd, fn)
    )


def _scatter_model(body_sg: SG, dtype: Any = np.float32) -> bytes:
    fields = dict(
        UpdateWindowDims=[],
        InsertedWindowDims=[0],
        ScatterDimsToOperandDims=[0],
        IndexVectorDim=1,
        UpdateComputationSubgraphIndex=1,
    )
    return one_op(
        [T([4], dtype), T([2, 1], np.int32), T([2], dtype), T([4], dtype)],
        Op("STABLEHLO_SCATTER", [0, 1, 2], [3], "StablehloScatterOptions", fields),
        [0, 1, 2],
        [3],
        body_sg,
    )


def test_scatter_overwrite_keeps_the_last_write() -> None:
    m = modelloader.load(_scatter_model(body(None)))
    got = m.predict(
        {
            "t0": np.zeros(4, np.float32),
            "t1": np.array([[2], [2]], np.int32),
            "t2": np.array([5.0, 7.0], np.float32),
        }
    )["t3"]
    np.testing.assert_array_equal(got, [0, 0, 7, 0])


@pytest.mark.parametrize(
    "sg,match",
    [
        (body("ADD"), "with a ADD body"),  # TFLite's scatter knows only the STABLEHLO_ ops
        (SG([T([]), T([])], [], [0, 1], [0]), "empty body does not return the update"),
        (SG([T([]), T([]), T([]), T([])],
            [Op("STABLEHLO_ADD", [0, 1], [2]), Op("STABLEHLO_MULTIPLY", [2, 1], [3])],
            [0, 1], [3]), "not one binary op"),
        (SG([T([]), T([]), T([1], data=[2.0]), T([])],
            [Op("STABLEHLO_ADD", [0, 2], [3])], [0, 1], [3]), "not one binary op"),
    ],
)  # fmt: skip
def test_scatter_bodies_tflite_cannot_run_are_refused(sg: SG, match: str) -> None:
    with pytest.raises(UnsupportedOpError, match=match):
        modelloader.load(_scatter_model(sg))


# --------------------------------------------------------------------------- reduce_window

WINDOWS = [  # shape, window, strides, base dilations, window dilations, padding
    ([7], [3], [2], [1], [1], [1, 1]),
    ([2, 7, 6], [1, 3, 2], [1, 2, 1], [1, 1, 2], [1, 2, 1], [0, 0, 1, 2, -1, 1]),
    ([5, 4], [2, 2], [1, 3], [2, 1], [2, 1], [-1, 2, 0, -1]),
    ([3, 3], [4, 1], [1, 1], [1, 1], [1, 1], [0, 0, 0, 0]),  # window longer than the axis
]


@pytest.mark.parametrize("function", ["add", "mul", "max", "min"])
@pytest.mark.parametrize("case", WINDOWS)
def test_reduce_window_matches_the_spec(case, function) -> None:
    shape, window, strides, base, dil, pad = case
    x = np.random.default_rng(len(shape)).integers(-100, 100, shape).astype(np.int8)
    fn = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}[function]
    init = {"add": 3, "mul": 1, "max": -128, "min": 127}[function]
    got = stablehlo_reduce_window(
        x,
        np.int8(init),
        function=function,
        window_dimensions=window,
        window_strides=strides,
        base_dilations=base,
        window_dilations=dil,
        padding=pad,
    )
    want = reduce_window_ref(x, init, fn, window, strides, base, dil, pad)
    assert got.dtype == np.int8  # sums and products wrap in int8, as TFLite's do
    np.testing.assert_array_equal(got, want)


def test_reduce_window_logical_bodies_on_bool() -> None:
    x = np.array([[True, False, True], [True, True, False]])
    kw = dict(
        window_dimensions=[2, 2],
        window_strides=[1, 1],
        base_dilations=[1, 1],
        window_dilations=[1, 1],
        padding=[0, 0, 0, 0],
    )
    np.testing.assert_array_equal(
        stablehlo_reduce_window(x, np.bool_(True), function="and", **kw), [[False, False]]
    )
    np.testing.assert_array_equal(
        stablehlo_reduce_window(x, np.bool_(False), function="or", **kw), [[True, True]]
    )


def _window_model(body_sg: SG, dtype: Any) -> bytes:
    fields = dict(
        WindowDimensions=[2],
        WindowStrides=[1],
        BaseDilations=[1],
        WindowDilations=[1],
        Padding=[0, 0],
        BodySubgraphIndex=1,
    )
    return one_op(
        [T([4], dtype), T([], dtype, data=0), T([3], dtype)],
        Op("STABLEHLO_REDUCE_WINDOW", [0, 1], [2], "StablehloReduceWindowOptions", fields),
        [0],
        [2],
        body_sg,
    )


def test_reduce_window_bodies_tflite_computes_differently_are_refused() -> None:
    # TFLite's AND / OR bodies are logical; on integers the spec's are bitwise
    with pytest.raises(UnsupportedOpError, match="LOGICAL_AND body on int32"):
        modelloader.load(_window_model(body("LOGICAL_AND", np.int32), np.int32))
    with pytest.raises(UnsupportedOpError, match="with a SUB body"):
        modelloader.load(_window_model(body("SUB", np.int32), np.int32))
    m = modelloader.load(_window_model(body("STABLEHLO_MAXIMUM", np.int32), np.int32))
    got = m.predict({"t0": np.array([4, -1, 6, 2], np.int32)})["t2"]
    np.testing.assert_array_equal(got, [4, 6, 6])


# --------------------------------------------------------------------------- rng_bit_generator


def _words(state: list[int], algorithm: int, n: int) -> list[int]:
    _, bits = rng_bit_generator(
        np.array(state, np.uint64), algorithm=algorithm, shape=[n], to=TensorProto.UINT32
    )
    return [int(v) for v in bits.view(np.uint32)]


def test_rng_known_answers() -> None:
    """Random123's kat_vectors: philox4x32 10 and threefry2x32 20 (zero and pi inputs), with
    the key in the state's first u64 and the counter in the rest."""
    assert _words([0, 0, 0], 1, 4) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    pi_key, pi_ctr01, pi_ctr23 = 0x299F31D0A4093822, 0x85A308D3243F6A88, 0x0370734413198A2E
    assert _words([pi_key, pi_ctr01, pi_ctr23], 0, 4) == [
        0xD16CFE09,
        0x94FDCCEB,
        0x5001E420,
        0x24126EA1,
    ]
    assert _words([0, 0], 2, 2) == [0x6B200159, 0x99BA4EFE]
    assert _words([0x0370734413198A2E, 0x85A308D3243F6A88], 2, 2) == [0xC4923A9C, 0x483DF7A0]


def test_rng_state_advances_by_blocks_with_carry() -> None:
    top = 0xFFFFFFFFFFFFFFFF
    new, bits = rng_bit_generator(
        np.array([5, top - 1, 9], np.uint64), algorithm=1, shape=[3, 3], to=TensorProto.UINT64
    )
    assert bits.dtype == np.uint64 and bits.shape == (3, 3)
    assert new.tolist() == [5, 3, 9]  # 18 words = 5 blocks of 4: the counter wraps at 2**64
    with pytest.raises(ExecutionError, match="u?int64 state of 2 elements|state of 2 elements"):
        rng_bit_generator(np.zeros(3, np.uint64), algorithm=2, shape=[2], to=TensorProto.UINT32)


def test_rng_state_size_is_checked_at_load() -> None:
    data = one_op(
        [T([3], np.uint64), T([3], np.uint64), T([4], np.uint32)],
        Op(
            "STABLEHLO_RNG_BIT_GENERATOR",
            [0],
            [1, 2],
            "StablehloRngBitGeneratorOptions",
            dict(Algorithm=2),
        ),
        [0],
        [1, 2],
    )
    with pytest.raises(ModelFormatError, match="u64\\[2\\] state"):
        modelloader.load(data)


# --------------------------------------------------------------------------- elementwise


def test_shift_left_out_of_range_amounts_give_zero() -> None:
    data = one_op(
        [T([5], np.int8), T([5], np.int8), T([5], np.int8)],
        Op("STABLEHLO_SHIFT_LEFT", [0, 1], [2]),
        [0, 1],
        [2],
    )
    got = modelloader.load(data).predict(
        {"t0": np.array([3, 3, -1, 1, 5], np.int8), "t1": np.array([1, 7, 8, 40, -1], np.int8)}
    )["t2"]
    np.testing.assert_array_equal(got, [6, -128, 0, 0, 0])


def test_elementwise_operands_must_match_and_types_must_fit() -> None:
    add = one_op([T([2, 3]), T([1, 3]), T([2, 3])], Op("STABLEHLO_ADD", [0, 1], [2]), [0, 1], [2])
    with pytest.raises(ModelFormatError, match="one shape and type"):
        modelloader.load(add)
    bad_and = one_op([T([3]), T([3]), T([3])], Op("STABLEHLO_AND", [0, 1], [2]), [0, 1], [2])
    with pytest.raises(ModelFormatError, match="boolean or integer"):
        modelloader.load(bad_and)
    shl = one_op(
        [T([3], np.int64), T([3], np.int64), T([3], np.int64)],
        Op("STABLEHLO_SHIFT_LEFT", [0, 1], [2]),
        [0, 1],
        [2],
    )
    with pytest.raises(UnsupportedOpError, match="STABLEHLO_SHIFT_LEFT on int64"):
        modelloader.load(shl)


def test_composite_runs_its_decomposition() -> None:
    decomposition = SG(
        [T([3]), T([3]), T([3])], [Op("STABLEHLO_MULTIPLY", [0, 1], [2])], [0, 1], [2]
    )
    data = one_op(
        [T([3]), T([3]), T([3])],
        Op(
            "STABLEHLO_COMPOSITE",
            [0, 1],
            [2],
            "StableHLOCompositeOptions",
            dict(Name="test.mul", DecompositionSubgraphIndex=1, Version=1),
        ),
        [0, 1],
        [2],
        decomposition,
    )
    got = modelloader.load(data).predict(
        {"t0": np.array([1, 2, 3], np.float32), "t1": np.array([4, 5, 6], np.float32)}
    )["t2"]
    np.testing.assert_array_equal(got, [4, 10, 18])
