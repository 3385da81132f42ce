"""The correlation engine's math against float64 numpy/scipy oracles on synthetic activations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from correlate_helpers import corr64, nanmax_rows, rotate, synthetic
from scipy import stats as sst

from universal_neurons.engine.accumulator import Accumulator
from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.finalize import Baselines, ModelStats, summarize_moments
from universal_neurons.engine.layout import CrossBlock, Layout, ModelShape
from universal_neurons.engine.moments import CoMoments, correlation_error_bound
from universal_neurons.engine.rotation import baseline_basis
from universal_neurons.engine.summary import NeuronSummary

SHAPES = [ModelShape("a", 2, 16), ModelShape("b", 3, 8), ModelShape("c", 2, 12)]
SIZES = [s.n_neurons for s in SHAPES]
LAYOUT = Layout(SHAPES)
ALL_PAIRS = [CrossBlock(0, 0, 2, 1, 3), CrossBlock(1, 0, 3, 2, 3)]


def batch(z: np.ndarray, lo: int, hi: int) -> ActivationBatch:
    acts = {s.name: {"post": torch.from_numpy(z[lo:hi, LAYOUT.cols(m)])}
            for m, s in enumerate(SHAPES)}
    n = hi - lo
    zeros = torch.zeros(n, dtype=torch.long)
    return ActivationBatch(acts, zeros, zeros, zeros, torch.arange(lo, hi))


def accumulate(z: np.ndarray, sizes=(97,), blocks=ALL_PAIRS, **kw) -> CoMoments:
    """Feed ``z`` in batches cycling through ``sizes``."""
    acc = CoMoments(SHAPES, blocks, **kw)
    lo, i = 0, 0
    while lo < len(z):
        hi = min(len(z), lo + sizes[i % len(sizes)])
        acc.update(batch(z, lo, hi))
        lo, i = hi, i + 1
    return acc.finalize()


def cross_corr(acc: CoMoments, block: int, partner: int) -> np.ndarray:
    """Correlations of a block's rows with one partner, from the co-moments."""
    b = acc.blocks[block]
    st = ModelStats.from_moments(acc)
    c0 = LAYOUT.offsets[partner] - LAYOUT.block_cols(b).start
    cross = acc.cross[block][:, c0:c0 + SIZES[partner]].numpy()
    rows = slice(b.layer_start * SHAPES[b.row].d_mlp, b.layer_stop * SHAPES[b.row].d_mlp)
    ia = st.inv_std(b.row).numpy()[rows]
    return cross * ia[:, None] * st.inv_std(partner).numpy()[None, :]


def oracle_comoment(z: np.ndarray) -> np.ndarray:
    z64 = z.astype(np.float64)
    zc = z64 - z64.mean(0)
    return zc.T @ zc


@pytest.fixture(scope="module")
def z():
    return synthetic(1500, SIZES, seed=1)


def test_is_an_accumulator():
    assert isinstance(CoMoments(SHAPES, ALL_PAIRS), Accumulator)


def test_correlations_match_numpy_float64(z):
    acc = accumulate(z, rows_per_gemm=256)
    assert acc.n == len(z)
    z64 = z.astype(np.float64)
    assert np.all(np.abs(acc.mean.numpy() - z64.mean(0)) <= 1e-7 * z64.std(0))
    for block, (a, partners) in enumerate([(0, (1, 2)), (1, (2,))]):
        for p in partners:
            ref = corr64(z[:, LAYOUT.cols(a)], z[:, LAYOUT.cols(p)])
            got = cross_corr(acc, block, p)
            assert np.nanmax(np.abs(got - ref)) <= 1e-4
            assert np.nanmax(np.abs(got - ref)) > 0  # a float32 GEMM, not float64
    ref_cov = oracle_comoment(z)
    for m, s in enumerate(SHAPES):
        for layer in range(s.n_layers):
            cols = LAYOUT.layer_cols(m, layer)
            np.testing.assert_allclose(acc.cov[m][layer].numpy(), ref_cov[cols, cols],
                                       rtol=1e-5, atol=1e-5 * np.abs(ref_cov).max())


@pytest.mark.parametrize("sizes,rows", [((1500,), 4096), ((7, 130, 1, 64), 50), ((97,), 1)])
def test_chan_merge_over_batch_splits_equals_one_shot(z, sizes, rows):
    acc = accumulate(z, sizes=sizes, rows_per_gemm=rows)
    ref = oracle_comoment(z)
    sd = np.sqrt(np.diag(ref))
    got = acc.cross[0].numpy()
    want = ref[LAYOUT.cols(0), LAYOUT.cols(0).stop:]
    scale = sd[LAYOUT.cols(0), None] * sd[None, LAYOUT.cols(0).stop:]
    assert np.max(np.abs(got - want) / scale) <= 1e-6


def test_merge_and_state_dict_roundtrip(z):
    whole = accumulate(z, rows_per_gemm=128)
    first = accumulate(z[:613], rows_per_gemm=128)
    second = accumulate(z[613:], rows_per_gemm=128)
    first.merge(second)
    assert first.n == whole.n
    ref = oracle_comoment(z)
    sd = np.sqrt(np.diag(ref))
    for acc in (first, whole):
        got = acc.cross[1].numpy()
        r0, c0 = LAYOUT.cols(1), LAYOUT.cols(2)
        assert np.max(np.abs(got - ref[r0, c0]) / (sd[r0, None] * sd[None, c0])) <= 1e-6
    # a checkpoint mid-buffer resumes to the same bits as never stopping
    part = CoMoments(SHAPES, ALL_PAIRS, rows_per_gemm=128)
    part.update(batch(z, 0, 300))
    state = part.state_dict()
    resumed = CoMoments(SHAPES, ALL_PAIRS, rows_per_gemm=128)
    resumed.load_state_dict(state)
    straight = CoMoments(SHAPES, ALL_PAIRS, rows_per_gemm=128)
    straight.update(batch(z, 0, 300))
    for acc in (resumed, straight):
        acc.update(batch(z, 300, 1500))
        acc.finalize()
    assert all(torch.equal(x, y) for x, y in zip(resumed.iter_tensors(), straight.iter_tensors()))


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_reduced_precision_within_documented_bound(z, precision):
    acc = accumulate(z, rows_per_gemm=512, precision=precision)
    ref = corr64(z[:, LAYOUT.cols(0)], z[:, LAYOUT.cols(0).stop:])
    got = np.concatenate([cross_corr(acc, 0, 1), cross_corr(acc, 0, 2)], 1)
    err = np.nanmax(np.abs(got - ref))
    assert err <= correlation_error_bound(precision, 512)
    if precision == "bf16":  # bf16 GEMMs really were used
        assert err > 1e-5
        print(f"bf16 max |error| {err:.2e}, bound {correlation_error_bound('bf16', 512):.2e}")
    else:  # no TF32 on CPU: plain float32
        assert err <= 1e-4


def test_rotation_bases_are_haar_orthogonal_and_reproducible():
    q = baseline_basis("rotation", 3, "model-x", 1, 24)
    assert q.dtype == torch.float64
    np.testing.assert_allclose((q.T @ q).numpy(), np.eye(24), atol=1e-12)
    assert torch.equal(q, baseline_basis("rotation", 3, "model-x", 1, 24))
    for other in [(4, "model-x", 1), (3, "model-y", 1), (3, "model-x", 2)]:
        assert not torch.allclose(q, baseline_basis("rotation", *other, 24))
    # sign correction: Q^T G is upper triangular with a positive diagonal (unique QR)
    rng = np.random.default_rng(np.random.SeedSequence([3, *_crc("model-x"), 1]))
    g = rng.standard_normal((24, 24))
    r = q.numpy().T @ g
    np.testing.assert_allclose(np.tril(r, -1), 0, atol=1e-10)
    assert (np.diag(r) > 0).all()
    gr = baseline_basis("gaussian-rows", 3, "model-x", 1, 24).numpy()
    np.testing.assert_allclose(np.linalg.norm(gr, axis=0), 1.0, atol=1e-12)
    assert np.abs(gr.T @ gr - np.eye(24)).max() > 0.1  # not orthogonal


def _crc(name: str) -> list[int]:
    import zlib

    return [zlib.crc32(name.encode())]


def _summaries(acc: CoMoments, kind: str | None, seed: int = 0, k: int = 5, bins: int = 20):
    base = Baselines(kind, seed, acc.layout, torch.device("cpu")) if kind else None
    st = ModelStats.from_moments(acc, base)
    out = {}
    for b in acc.blocks:
        for p in b.partners:
            out[(b.row, p)] = NeuronSummary(SIZES[b.row], SIZES[p], k, bins)
            out[(p, b.row)] = NeuronSummary(SIZES[p], SIZES[b.row], k, bins)
    summarize_moments(acc, st, out, base)
    return {key: s.finalize() for key, s in out.items()}


@pytest.mark.parametrize("kind", ["rotation", "gaussian-rows"])
def test_algebraic_baseline_equals_explicit_rotation(z, kind):
    acc = accumulate(z, rows_per_gemm=300)
    fin = _summaries(acc, kind, seed=5)
    for a, b in [(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)]:
        sb = SHAPES[b]
        yb = rotate(z[:, LAYOUT.cols(b)], sb.name, sb.n_layers, sb.d_mlp, kind, seed=5)
        want = nanmax_rows(corr64(z[:, LAYOUT.cols(a)], yb))
        np.testing.assert_allclose(fin[(a, b)]["baseline_max"].numpy(), want, atol=1e-4)


def test_summaries_match_numpy_and_scipy(z):
    acc = accumulate(z, rows_per_gemm=300)
    fin = _summaries(acc, None, k=5, bins=20)
    for a, b in [(0, 2), (2, 0), (1, 2)]:
        ref = corr64(z[:, LAYOUT.cols(a)], z[:, LAYOUT.cols(b)])
        f = {k: v.numpy() for k, v in fin[(a, b)].items()}
        np.testing.assert_allclose(f["max"], ref.max(1), atol=1e-5)
        np.testing.assert_array_equal(f["argmax"], ref.argmax(1))
        np.testing.assert_allclose(f["min"], ref.min(1), atol=1e-5)
        np.testing.assert_array_equal(f["argmin"], ref.argmin(1))
        order = np.argsort(-ref, 1)[:, :5]
        np.testing.assert_array_equal(f["top_indices"], order)
        np.testing.assert_allclose(f["top_values"], np.take_along_axis(ref, order, 1), atol=1e-5)
        order = np.argsort(ref, 1)[:, :5]
        np.testing.assert_array_equal(f["bottom_indices"], order)
        for i in range(ref.shape[0]):
            h, _ = np.histogram(ref[i], bins=20, range=(-1, 1))
            assert np.abs(f["hist"][i] - h).sum() <= 2  # values within 1e-6 of an edge may move
        assert (f["hist"].sum(1) == ref.shape[1]).all()
        np.testing.assert_allclose(f["mean"], ref.mean(1), atol=1e-6)
        np.testing.assert_allclose(f["var"], ref.var(1), atol=1e-6)
        np.testing.assert_allclose(f["skew"], sst.skew(ref, 1), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(f["kurt"], sst.kurtosis(ref, 1, fisher=False), rtol=1e-4)


def test_summary_chunks_in_any_order_merge_to_the_whole():
    rng = np.random.default_rng(0)
    rho = torch.from_numpy(rng.uniform(-1, 1, (30, 50)).astype(np.float32))
    whole = NeuronSummary(30, 50, k=4, bins=10)
    whole.add(rho, slice(0, 30), 0)
    left, right = NeuronSummary(30, 50, k=4, bins=10), NeuronSummary(30, 50, k=4, bins=10)
    for r0, r1, c0, c1 in [(10, 30, 20, 50), (0, 10, 0, 50), (10, 30, 0, 20)]:
        (left if c0 == 0 else right).add(rho[r0:r1, c0:c1], slice(r0, r1), c0)
    left.merge(right)
    a, b = whole.finalize(), left.finalize()
    for key in a:  # float32 partial sums: moments agree to rounding, the rest exactly
        tol = 1e-6 if key in ("mean", "var", "skew", "kurt") else 0
        torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol, equal_nan=True)


def test_dead_neurons_give_no_nan_indices_and_are_not_universal():
    from universal_neurons.analysis.universality import universality_table

    dead = (3, 17, LAYOUT.offsets[1] + 2)  # two of model a, one of model b
    z = synthetic(800, SIZES, seed=2, dead=dead)
    acc = accumulate(z, rows_per_gemm=200)
    fin = _summaries(acc, "rotation")
    ab, ba = fin[(0, 1)], fin[(1, 0)]
    for f in (ab, ba, fin[(0, 2)]):
        for key in ("argmax", "argmin", "top_indices", "bottom_indices"):
            assert f[key].dtype == torch.long
    assert torch.isnan(ab["max"][[3, 17]]).all() and (ab["argmax"][[3, 17]] == -1).all()
    assert (ab["top_indices"][[3, 17]] == -1).all()
    live = torch.ones(SIZES[0], dtype=torch.bool)
    live[[3, 17]] = False
    assert not torch.isnan(ab["max"][live]).any() and (ab["argmax"][live] >= 0).all()
    assert not (ab["argmax"] == 2).any() and not (ab["top_indices"] == 2).any()  # dead partner
    assert not (ba["argmax"] == 3).any() and not (ba["argmax"] == 17).any()
    assert (ab["count"][live] == SIZES[1] - 1).all()
    table = universality_table(2, 16, {"b": ab, "c": fin[(0, 2)]}, {"b": 8, "c": 12},
                               threshold=-10.0)  # everyone alive passes a threshold of -10
    assert not table.loc[[3, 17], "is_universal"].any()
    assert table.loc[live.numpy(), "is_universal"].all()
    assert table.loc[[3, 17], "b_best"].isna().all()


def test_universality_table_equals_brute_force():
    """Models b and c hold noisy copies of some of a's neurons, so excess varies widely."""
    from universal_neurons.analysis.universality import universality_table

    rng = np.random.default_rng(3)
    z = (rng.standard_normal((1200, sum(SIZES))) ** 3 + rng.uniform(-2, 2, sum(SIZES)))
    z = z.astype(np.float32)
    a = z[:, LAYOUT.cols(0)]
    for m in (1, 2):
        cols = np.arange(LAYOUT.offsets[m], LAYOUT.offsets[m] + 12)
        src = rng.permutation(SIZES[0])[:12]
        z[:, cols] = a[:, src] + rng.standard_normal((1200, 12)).astype(np.float32) * \
            np.linspace(0.05, 3, 12, dtype=np.float32) * a[:, src].std(0)
    acc = accumulate(z, rows_per_gemm=500, blocks=[CrossBlock(0, 0, 2, 1, 3)])
    fin = _summaries(acc, "rotation", seed=2)
    table = universality_table(2, 16, {"b": fin[(0, 1)], "c": fin[(0, 2)]}, {"b": 8, "c": 12},
                               threshold=0.5)
    x = z[:, LAYOUT.cols(0)]
    mc = np.stack([nanmax_rows(corr64(x, z[:, LAYOUT.cols(m)])) for m in (1, 2)], 1)
    mb = np.stack([nanmax_rows(corr64(x, rotate(z[:, LAYOUT.cols(m)], SHAPES[m].name,
                                                 SHAPES[m].n_layers, SHAPES[m].d_mlp, seed=2)))
                   for m in (1, 2)], 1)
    excess = mc.mean(1) - mb.mean(1)
    np.testing.assert_allclose(table["excess_corr"], excess, atol=1e-4)
    np.testing.assert_allclose(table["mean_corr"], mc.mean(1), atol=1e-4)
    np.testing.assert_allclose(table["min_baseline"], mb.min(1), atol=1e-4)
    sure = np.abs(excess - 0.5) > 1e-4
    np.testing.assert_array_equal(table["is_universal"][sure], (excess > 0.5)[sure])
    assert 0 < table["is_universal"].sum() < len(table)
    best = corr64(x, z[:, LAYOUT.cols(1)]).argmax(1)
    assert list(table["b_best"]) == [f"L{j // 8}.{j % 8}" for j in best]


def test_bases_made_concurrently_equal_those_made_one_by_one():
    from universal_neurons.engine.layout import Layout, ModelShape

    layout = Layout([ModelShape("x", 3, 96), ModelShape("y", 2, 64)])
    keys = [(m, layer) for m, s in enumerate(layout.shapes) for layer in range(s.n_layers)]
    one = Baselines("rotation", 4, layout, torch.device("cpu"))
    many = Baselines("rotation", 4, layout, torch.device("cpu"))
    many.prepare(keys, workers=3)
    threads = torch.get_num_threads()
    for k in keys:
        assert torch.equal(one.basis(*k), many.basis(*k)), k
    assert torch.get_num_threads() == threads
