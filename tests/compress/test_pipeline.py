"""End to end: compress the shipped digits classifier, reload it by magic, run it sparse."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import modelloader
from modelloader import parallel
from modelloader.compress import SparseTensor, compress
from modelloader.compress.cli import compress_cmd
from modelloader.compress.sparse import sparsify
from modelloader.errors import CompressionAccuracyError
from modelloader.ir import Graph, Node, Value
from modelloader.kernels.cpu import sparse as sparse_kernels
from modelloader.kernels.cpu.conv import fused_conv
from modelloader.kernels.cpu.gemm import fused_gemm
from modelloader.kernels.cpu.sparse import csr_product, sparse_conv, sparse_gemm

MODELS = Path(__file__).resolve().parents[2] / "models"
TEST = MODELS / "digits_test.npz"


def test_digits_strongest_setting_within_one_point(tmp_path: Path) -> None:
    # the strongest setting found (no retraining) within 1 point: 40% pruned, 3-bit palettes
    out = tmp_path / "digits.mldc"
    r = compress(
        MODELS / "digits_mlp.onnx", prune=0.4, palettize_bits=3, eval=TEST, max_drop=1.0, output=out
    )
    assert r.accuracy is not None and r.accuracy.drop <= 1.0
    o, _, _, h = r.report.totals()
    assert o / h > 8  # weights + biases
    m = modelloader.load(out)
    assert m.format == "mldc"
    layers = m.compression["layers"]
    assert (
        layers["fc1.weight"]["codec"].startswith("sparse(")
        and "palette3+huffman" in layers["fc1.weight"]["codec"]
    )
    with np.load(TEST) as d:
        x = d["X"]
    np.testing.assert_array_equal(m.predict(x)["label"], r.model.predict(x)["label"])


def test_accuracy_gate_refuses(tmp_path: Path) -> None:
    out = tmp_path / "x.mldc"
    with pytest.raises(CompressionAccuracyError):
        compress(
            MODELS / "digits_mlp.onnx",
            prune=0.9,
            palettize_bits=2,
            eval=TEST,
            max_drop=1.0,
            output=out,
        )
    assert not out.exists()


def test_cli(tmp_path: Path) -> None:
    out = tmp_path / "c.mldc"
    res = CliRunner().invoke(
        compress_cmd,
        [
            str(MODELS / "digits_cnn.onnx"),
            str(out),
            "--prune",
            "0.5",
            "--prune-layer",
            "conv1.weight=0.2",
            "--palettize",
            "5",
            "--eval",
            str(TEST.parent / "digits_test.npz"),
            "--max-drop",
            "100",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "total" in res.output and "accuracy" in res.output and out.exists()
    bad = CliRunner().invoke(
        compress_cmd, [str(MODELS / "digits_mlp.onnx"), str(out), "--prune-layer", "nope=0.5"]
    )
    assert bad.exit_code != 0 and "no weight layer" in bad.output


def _pruned(rng: np.random.Generator, shape: tuple[int, ...], density: float) -> np.ndarray:
    w = rng.standard_normal(shape).astype(np.float32)
    return w * (rng.random(shape) < density)


@pytest.mark.parametrize("batch", [1, 3])
def test_sparse_gemm_matches_dense(batch: int) -> None:
    rng = np.random.default_rng(0)
    w = _pruned(rng, (40, 70), 0.1)
    x = rng.standard_normal((batch, 70)).astype(np.float32)
    c = rng.standard_normal(40).astype(np.float32)
    want = fused_gemm(x, w, c, transB=1, alpha=0.5, activation="Relu")
    got = sparse_gemm(x, SparseTensor.from_dense(w), c, alpha=0.5, activation="Relu")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    got_t = sparse_gemm(
        x, SparseTensor.from_dense(w.T.copy()).transposed(), c, alpha=0.5, activation="Relu"
    )
    np.testing.assert_allclose(got_t, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_row_blocks_split_the_product(parts: int) -> None:
    """Row blocks (balanced by non-zeros, empty rows included) give the whole product, run
    over the intra-op team."""
    rng = np.random.default_rng(3)
    w = _pruned(rng, (50, 30), 0.1)
    w[10:25] = 0  # a run of empty rows
    st = SparseTensor.from_dense(w)
    blocks = st.row_blocks(parts)
    assert blocks[0][0] == 0 and blocks[-1][1] == 50
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert sum(m.nnz for _, _, m in blocks) == st.nnz
    before = parallel.num_threads()
    parallel.set_num_threads(parts)
    try:
        for rhs in (rng.standard_normal(30), rng.standard_normal((30, 4))):
            rhs = rhs.astype(np.float32)
            np.testing.assert_allclose(csr_product(st, rhs), w @ rhs, rtol=1e-5, atol=1e-5)
    finally:
        parallel.set_num_threads(before)


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("cols", [9, 1000, 70_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matrix_vector_product(
    monkeypatch: pytest.MonkeyPatch, jit: bool, cols: int, dtype: type
) -> None:
    """Batch-1 products: the compiled row loop (uint16 column indices up to 65,536 columns,
    the stored ones above; row lengths 0 to beyond the 4-way unroll) and, without it,
    scipy's column blocks, both on two threads, agree with the dense product."""
    monkeypatch.setattr(sparse_kernels._jit, "available", jit)
    rng = np.random.default_rng(cols)
    w = _pruned(rng, (37, cols), 0.2).astype(dtype)
    w[3] = 0
    w[5, :] = 0
    w[5, :6] = 1.5  # rows shorter than, equal to and longer than the unroll
    w[6, :] = 0
    w[6, 2] = -2.0
    st = SparseTensor.from_dense(w)
    assert st.narrow_indices().dtype == (np.uint16 if cols <= 1 << 16 else np.int32)
    x = rng.standard_normal(cols).astype(dtype)
    before = parallel.num_threads()
    parallel.set_num_threads(2)
    try:
        got = csr_product(st, x)
    finally:
        parallel.set_num_threads(before)
    assert got.dtype == dtype and got.shape == (37,)
    # rounding error bound of any summation order: n * eps * sum(|w * x|) per row
    ref = w.astype(np.float64) @ x.astype(np.float64)
    bound = cols * np.finfo(dtype).eps * (np.abs(w).astype(np.float64) @ np.abs(x))
    assert np.all(np.abs(got - ref) <= bound)
    assert got[3] == 0 and got[6] == -2.0 * x[2]


@pytest.mark.parametrize("jit", [True, False])
def test_sparse_products_reject_mismatched_inputs(
    monkeypatch: pytest.MonkeyPatch, jit: bool
) -> None:
    """A right-hand side whose length is not the weight's column count is a ValueError
    before any (unchecked) compiled loop runs, for FC and conv kernels alike."""
    monkeypatch.setattr(sparse_kernels._jit, "available", jit)
    rng = np.random.default_rng(2)
    st = SparseTensor.from_dense(_pruned(rng, (12, 30), 0.2))
    for rhs in (np.ones(29, np.float32), np.ones((31, 4), np.float32)):
        with pytest.raises(ValueError, match="first axis must be 30"):
            csr_product(st, rhs)
    with pytest.raises(ValueError, match="first axis must be 30"):
        sparse_gemm(np.ones((1, 40), np.float32), st)
    conv_w = SparseTensor.from_dense(_pruned(rng, (4, 3, 3, 3), 0.3))
    with pytest.raises(ValueError, match="first axis must be 27"):
        # a kernel_shape attribute that disagrees with the weight's taps
        sparse_conv(np.ones((1, 3, 8, 8), np.float32), conv_w, kernel_shape=[2, 2])


@pytest.mark.parametrize("jit", [True, False])
def test_matrix_vector_product_propagates_non_finite(
    monkeypatch: pytest.MonkeyPatch, jit: bool
) -> None:
    """Non-finite inputs are computed, not assumed away: NaN and inf reach exactly the rows
    whose non-zeros read them. (Stored zeros are not multiplied, so unlike a dense product
    a NaN does not reach every row; see docs/container.md.)"""
    monkeypatch.setattr(sparse_kernels._jit, "available", jit)
    rng = np.random.default_rng(11)
    w = _pruned(rng, (40, 300), 0.1)
    w[:, [17, 40]] = 0
    w[3, 17] = 1.5  # only row 3 reads x[17], only row 9 reads x[40]
    w[9, 40] = 2.0
    st = SparseTensor.from_dense(w)
    x = rng.standard_normal(300).astype(np.float32)
    x[17] = np.nan
    x[40] = np.inf
    with np.errstate(invalid="ignore"):
        got = csr_product(st, x)
    want_nan = np.zeros(40, bool)
    want_nan[3] = True
    want_inf = np.zeros(40, bool)
    want_inf[9] = True
    np.testing.assert_array_equal(np.isnan(got), want_nan)
    np.testing.assert_array_equal(np.isinf(got), want_inf)


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("n", [1, 7, 2500])
def test_matrix_product_is_scipys(
    monkeypatch: pytest.MonkeyPatch, jit: bool, threads: int, n: int
) -> None:
    """Matrix products (im2col convs, batched FC layers): the compiled loop, over column
    blocks of 1,024 and row ranges on the team, gives scipy's CSR product bit for bit."""
    from scipy.sparse import csr_matrix

    monkeypatch.setattr(sparse_kernels._jit, "available", jit)
    rng = np.random.default_rng(n)
    w = _pruned(rng, (29, 300), 0.1)
    w[4:9] = 0  # empty rows
    st = SparseTensor.from_dense(w)
    x = rng.standard_normal((300, n)).astype(np.float32)
    before = parallel.num_threads()
    parallel.set_num_threads(threads)
    try:
        got = csr_product(st, x)
    finally:
        parallel.set_num_threads(before)
    want = csr_matrix((st.data, st.indices, st.indptr), shape=(29, 300)) @ x
    assert got.shape == (29, n) and got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "kw", [dict(pads=[1, 1, 1, 1]), dict(strides=[2, 2]), dict(dilations=[2, 2], pads=[2, 2, 2, 2])]
)
def test_sparse_conv_matches_dense(kw: dict) -> None:
    rng = np.random.default_rng(1)
    w = _pruned(rng, (8, 5, 3, 3), 0.1)
    x = rng.standard_normal((2, 5, 11, 9)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    want = fused_conv(x, w, b, activation="Relu", **kw)
    got = sparse_conv(x, SparseTensor.from_dense(w), b, activation="Relu", **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("group", [2, 3])
@pytest.mark.parametrize("batch", [1, 2])
def test_grouped_sparse_conv_matches_dense(group: int, batch: int) -> None:
    """A grouped conv runs as one product with the block-diagonal matrix of its groups."""
    rng = np.random.default_rng(group)
    w = _pruned(rng, (6 * group, 4, 3, 3), 0.15)
    w[1] = 0  # an empty output channel
    x = rng.standard_normal((batch, 4 * group, 10, 7)).astype(np.float32)
    b = rng.standard_normal(6 * group).astype(np.float32)
    kw = dict(group=group, pads=[1, 1, 1, 1], strides=[1, 2])
    want = fused_conv(x, w, b, activation="Relu", **kw)
    st = SparseTensor.from_dense(w)
    got = sparse_conv(x, st, b, activation="Relu", **kw)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    bd = st.block_diagonal(group)
    assert bd.matrix_shape == (6 * group, 4 * group * 9) and bd.nnz == st.nnz
    np.testing.assert_array_equal(
        bd.to_dense().reshape(group, 6, group, 36)[np.arange(group), :, np.arange(group)],
        w.reshape(group, 6, 36),
    )
    with pytest.raises(ValueError, match="expects"):
        sparse_conv(x[:, :4], st, b, **kw)


def test_sparsify_takes_grouped_but_not_depthwise_convs() -> None:
    rng = np.random.default_rng(7)
    grouped, depthwise = _pruned(rng, (8, 2, 3, 3), 0.02), _pruned(rng, (4, 1, 3, 3), 0.02)
    g = Graph(
        "g",
        inputs=[Value("x", np.dtype(np.float32), (1, 4, 8, 8))],
        outputs=[Value("y", np.dtype(np.float32), None), Value("z", np.dtype(np.float32), None)],
        nodes=[
            Node("Conv", ["x", "wg"], ["y"], {"group": 2}),
            Node("Conv", ["x", "wd"], ["z"], {"group": 4}),
        ],
        constants={
            "wg": SparseTensor.from_dense(grouped),
            "wd": SparseTensor.from_dense(depthwise),
        },
    )
    assert sparsify(g) == {"wg": "sparse", "wd": "dense"}
    assert [n.op for n in g.nodes] == ["SparseConv", "Conv"]


def test_timed_conv_keeps_the_faster_form() -> None:
    """A conv weight in the timed density band runs both forms in its first calls, then one;
    every call gives the dense conv's result."""
    from modelloader.compress.sparse import CONV_MAX_DENSITY, CONV_TIMED_DENSITY, TIMED_CALLS

    rng = np.random.default_rng(5)
    density = (CONV_MAX_DENSITY + CONV_TIMED_DENSITY) / 2
    w = _pruned(rng, (16, 8, 3, 3), density)
    x = rng.standard_normal((1, 8, 12, 12)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    g = Graph(
        "g",
        inputs=[Value("x", np.dtype(np.float32), (1, 8, 12, 12))],
        outputs=[Value("y", np.dtype(np.float32), None)],
        nodes=[Node("Conv", ["x", "w", "b"], ["y"], {"pads": [1, 1, 1, 1]})],
        constants={"w": SparseTensor.from_dense(w), "b": b},
    )
    assert sparsify(g) == {"w": "timed"}
    st = g.constants["w"]
    assert st.dense_twin is not None and st.choice is None
    want = fused_conv(x, w, b, pads=[1, 1, 1, 1])
    for call in range(TIMED_CALLS + 2):
        got = sparse_conv(x, st, b, pads=[1, 1, 1, 1], kernel_shape=[3, 3])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        assert (st.choice is None) == (call + 1 < TIMED_CALLS)
    assert st.choice in ("sparse", "dense")
    assert (st.dense_twin is None) == (st.choice == "sparse")


def test_sparsify_picks_sparse_below_threshold_and_densifies_above() -> None:
    rng = np.random.default_rng(2)
    g = Graph(
        inputs=[Value("x", np.dtype(np.float32), (1, 30))],
        outputs=[Value("z", np.dtype(np.float32), (1, 10))],
        nodes=[Node("MatMul", ["x", "a"], ["y"]), Node("Gemm", ["y", "b"], ["z"], {"transB": 1})],
        constants={
            "a": SparseTensor.from_dense(_pruned(rng, (30, 20), 0.05)),
            "b": SparseTensor.from_dense(_pruned(rng, (10, 20), 0.9)),
        },
    )
    dense = {k: v.to_dense() for k, v in g.constants.items()}
    assert sparsify(g) == {"a": "sparse", "b": "dense"}
    assert [n.op for n in g.nodes] == ["SparseGemm", "Gemm"]
    m = modelloader.Model(g, format="mldc", optimize_graph=False)
    x = rng.standard_normal((1, 30)).astype(np.float32)
    np.testing.assert_allclose(
        m.predict(x)["z"], x @ dense["a"] @ dense["b"].T, rtol=1e-4, atol=1e-5
    )


MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.mark.parametrize(
    "path,sparse_ops",
    [
        ("tflite/mlp_sparse_f32.tflite", {"SparseGemm": 2}),
        ("tflite/mobilenet_v2_sparse_f32.tflite", {"SparseGemm": 1, "SparseConv": 35}),
        ("tflite/mobilenet_v2_sparse_int8.tflite", {}),  # integer kernels: densified
        ("coreml/resnet_mlprogram_pruned75.mlpackage", {"SparseConv": 4}),
    ],
)
def test_source_sparsity_reaches_sparse_kernels(path: str, sparse_ops: dict) -> None:
    """Weights stored sparse by TFLite (SparsityParameters, behind DENSIFY and the filter
    transpose) and CoreML (constexpr_sparse_to_dense) stay sparse for the sparse kernels;
    the fixture tests check these models' outputs against their reference runtimes."""
    pytest.importorskip("scipy")
    if not (MODELS / path).exists():
        pytest.skip(f"{path} not generated")
    m = modelloader.load(MODELS / path)
    ops = [n.op for n in m.graph.nodes]
    got = {op: ops.count(op) for op in ("SparseGemm", "SparseConv") if op in ops}
    assert got == sparse_ops
    for n in m.graph.nodes:
        if n.op in ("SparseGemm", "SparseConv"):
            assert isinstance(m._plan.constants[n.inputs[1]], SparseTensor)
