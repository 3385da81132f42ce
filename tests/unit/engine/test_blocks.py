"""``--blocks B``: unions of token blocks from per-block co-moments, the delete-one-block
jackknife, and the correlate stage's block columns, against numpy/scipy oracles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from correlate_helpers import corr64, nanmax_rows
from scipy import stats as sst

from universal_neurons.analysis.calibration import (
    block_columns,
    jackknife_ci,
    share_ci,
    threshold_curve,
)
from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.blocks import (
    BlockMoments,
    BlockStats,
    subsets,
    summarize_blocks,
    union_cross,
)
from universal_neurons.engine.finalize import Baselines
from universal_neurons.engine.layout import CrossBlock, ModelShape
from universal_neurons.engine.planner import plan_correlation
from universal_neurons.engine.rotation import baseline_basis
from universal_neurons.engine.summary import NeuronSummary

SHAPES = [ModelShape("a", 2, 6), ModelShape("b", 2, 5)]
BLOCKS = [CrossBlock(0, 0, 2, 1, 2)]


def _feed(z: np.ndarray, n_seq: int, n_blocks: int, per_seq: int, batch_seqs: int = 3,
          rows: int = 64) -> BlockMoments:
    """``z`` holds ``n_seq`` sequences of ``per_seq`` rows; batches of ``batch_seqs``
    sequences (so some batches straddle two blocks)."""
    acc = BlockMoments(SHAPES, BLOCKS, n_blocks, n_seq, rows_per_gemm=rows)
    na = SHAPES[0].n_neurons
    for s0 in range(0, n_seq, batch_seqs):
        s1 = min(n_seq, s0 + batch_seqs)
        lo, hi = s0 * per_seq, s1 * per_seq
        seq = torch.arange(s0, s1).repeat_interleave(per_seq)
        zeros = torch.zeros(hi - lo, dtype=torch.long)
        acc.update(ActivationBatch({"a": {"post": torch.from_numpy(z[lo:hi, :na])},
                                    "b": {"post": torch.from_numpy(z[lo:hi, na:])}},
                                   zeros, zeros, zeros, seq))
    return acc.finalize()


def _block_rows(n_seq: int, n_blocks: int, per_seq: int, subset) -> np.ndarray:
    seq = np.repeat(np.arange(n_seq), per_seq)
    block = np.searchsorted([n_seq * j // n_blocks for j in range(1, n_blocks)], seq,
                            side="right")
    return np.isin(block, subset)


def test_every_union_equals_its_own_float64_moments():
    rng = np.random.default_rng(0)
    n_seq, per_seq, n_blocks = 20, 7, 4
    z = (rng.standard_normal((n_seq * per_seq, 22)) * rng.uniform(0.5, 3, 22)
         + rng.uniform(-4, 4, 22)).astype(np.float32)
    z[:, 3] += z[:, 14]  # a shared component across the models
    acc = _feed(z, n_seq, n_blocks, per_seq)
    assert [p.n for p in acc.parts] == [35] * 4
    base = Baselines("rotation", 2, acc.layout, torch.device("cpu"), draws=2)
    bs = BlockStats.from_parts(acc.parts, base)
    assert all(p.cov is None for p in acc.parts)
    for subset in subsets(n_blocks):
        x = z[_block_rows(n_seq, n_blocks, per_seq, subset)].astype(np.float64)
        xc = x - x.mean(0)
        st = bs.union(subset)
        assert st.n == len(x)
        # float32 rows: the centring leaves ~2^-24 of the std in the mean (docs/engine.md)
        np.testing.assert_allclose(st.mean.numpy(), x.mean(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(torch.cat(st.m2s).numpy(), (xc ** 2).sum(0), rtol=1e-6)
        cross = union_cross(acc.parts, bs, subset).cross[0].numpy()
        np.testing.assert_allclose(cross, xc[:, :12].T @ xc[:, 12:], rtol=1e-5,
                                   atol=1e-5 * len(x))
        for draw in (0, 1):
            q = baseline_basis("rotation", 2, "b", 1, 5, draw).float().double().numpy()
            want = ((xc[:, 17:] @ q) ** 2).sum(0)
            np.testing.assert_allclose(st.rotvars[(1, 1, draw)].numpy(), want, rtol=1e-5)


def test_union_summaries_match_numpy_on_the_union_rows():
    rng = np.random.default_rng(1)
    n_seq, per_seq, n_blocks = 12, 10, 3
    z = rng.standard_normal((n_seq * per_seq, 22)).astype(np.float32)
    z[:, 12:17] += 0.8 * z[:, :5]
    acc = _feed(z, n_seq, n_blocks, per_seq, batch_seqs=5)
    base = Baselines("rotation", 0, acc.layout, torch.device("cpu"), draws=2)
    bs = BlockStats.from_parts(acc.parts, base)
    unions = subsets(n_blocks)
    stats = {u: bs.union(u) for u in unions}
    summ = {u: {(0, 1): NeuronSummary(12, 10, 1, 1, draws=2),
                (1, 0): NeuronSummary(10, 12, 1, 1, draws=2)} for u in unions}
    summarize_blocks(acc.parts, bs, stats, summ, base)
    for u in unions:
        x = z[_block_rows(n_seq, n_blocks, per_seq, u)].astype(np.float64)
        f = summ[u][(0, 1)].finalize()
        np.testing.assert_allclose(f["max"].numpy(), nanmax_rows(corr64(x[:, :12], x[:, 12:])),
                                   atol=1e-5)
        for draw in (0, 1):
            yb = np.concatenate([x[:, 12 + 5 * i:17 + 5 * i]
                                 @ baseline_basis("rotation", 0, "b", i, 5, draw).numpy()
                                 for i in range(2)], 1)
            np.testing.assert_allclose(f["baseline_max_draws"][draw].numpy(),
                                       nanmax_rows(corr64(x[:, :12], yb)), atol=1e-5)


def test_jackknife_matches_its_formula():
    rng = np.random.default_rng(2)
    full, loo = rng.standard_normal(5), rng.standard_normal((5, 4))
    lo, hi = jackknife_ci(full, loo)
    for i in range(5):
        se = np.sqrt(3 / 4 * sum((v - loo[i].mean()) ** 2 for v in loo[i]))
        assert hi[i] - full[i] == pytest.approx(sst.t.ppf(0.975, 3) * se, rel=1e-12)
        assert full[i] - lo[i] == pytest.approx(hi[i] - full[i], rel=1e-12)
    with pytest.raises(ValueError):
        jackknife_ci(full, loo[:, :1])


def test_jackknife_intervals_cover_a_known_correlation_at_the_nominal_rate():
    """Bivariate normal with correlation 0.6 in two one-neuron models, through block
    moments and unions (the correlation from the union's co-moments); the 95% interval of the union correlation covers 0.6 in about 95%
    of independent replicates (3-sigma binomial band, plus 2 points for the jackknife's
    small-sample bias on a correlation)."""
    rho, reps, n_blocks, n_seq, per_seq = 0.6, 300, 8, 40, 10
    shapes = [ModelShape("x", 1, 1), ModelShape("y", 1, 1)]
    unions = subsets(n_blocks)
    hits = 0
    for r in range(reps):
        rng = np.random.default_rng(1000 + r)
        e = rng.standard_normal((n_seq * per_seq, 2))
        z = np.stack([e[:, 0], rho * e[:, 0] + np.sqrt(1 - rho ** 2) * e[:, 1]], 1)
        acc = BlockMoments(shapes, [CrossBlock(0, 0, 1, 1, 2)], n_blocks, n_seq,
                           rows_per_gemm=128)
        zt = torch.from_numpy(z.astype(np.float32))
        zeros = torch.zeros(len(z), dtype=torch.long)
        acc.update(ActivationBatch({"x": {"post": zt[:, :1]}, "y": {"post": zt[:, 1:]}},
                                   zeros, zeros, zeros,
                                   torch.arange(n_seq).repeat_interleave(per_seq)))
        bs = BlockStats.from_parts(acc.finalize().parts, None)
        est = {}
        for u in unions[:n_blocks + 1]:  # the full sample and the leave-one-out unions
            m2 = bs.union(u).m2s
            est[u] = float(union_cross(acc.parts, bs, u).cross[0][0, 0]
                           / np.sqrt(float(m2[0][0]) * float(m2[1][0])))
        full = tuple(range(n_blocks))
        loo = np.array([[est[tuple(b for b in full if b != j)] for j in full]])
        lo, hi = jackknife_ci(np.array([est[full]]), loo)
        hits += bool(lo[0] <= rho <= hi[0])
    cover = hits / reps
    band = 3 * np.sqrt(0.95 * 0.05 / reps) + 0.02
    assert abs(cover - 0.95) < band, cover


def test_block_columns_and_shares():
    rng = np.random.default_rng(3)
    n, b = 40, 3
    single = {(j,): rng.uniform(0, 1, n) for j in range(b)}
    loo = {(1, 2): rng.uniform(0, 1, n), (0, 2): rng.uniform(0, 1, n),
           (0, 1): rng.uniform(0, 1, n)}
    full = rng.uniform(0, 1, n)
    single[(0,)][0] = np.nan
    cols = block_columns(full, {**single, **loo, (0, 1, 2): full}, b, 0.5)
    stack = np.stack([loo[(1, 2)], loo[(0, 2)], loo[(0, 1)]], 1)
    lo, hi = jackknife_ci(full, stack)
    np.testing.assert_array_equal(cols["excess_ci_low"], lo)
    np.testing.assert_array_equal(cols["excess_corr_block1"], single[(1,)])
    want = (single[(0,)] > 0.5) & (single[(1,)] > 0.5) & (single[(2,)] > 0.5)
    np.testing.assert_array_equal(cols["split_half_agreement"], want)
    assert not cols["split_half_agreement"][0]
    share = float((full > 0.5).mean())
    shares = (stack > 0.5).mean(0)
    se = np.sqrt(2 / 3 * ((shares - shares.mean()) ** 2).sum())
    lo_s, hi_s = share_ci(stack, share, 0.5)
    assert lo_s == pytest.approx(max(0, share - sst.t.ppf(0.975, 2) * se))
    assert hi_s == pytest.approx(min(1, share + sst.t.ppf(0.975, 2) * se))
    curve = threshold_curve(full, stack)
    assert curve["threshold"][0] == 0.1 and curve["threshold"][-1] == 0.9
    assert len(curve["threshold"]) == 17
    for t, s in zip(curve["threshold"], curve["share"]):
        assert s == (full > t).mean()
    assert np.isnan(threshold_curve(full)["share_ci_low"]).all()


def test_planner_counts_the_blocks():
    one = plan_correlation(SHAPES, "reference", 2**34)
    four = plan_correlation(SHAPES, "reference", 2**34, blocks=4)
    assert four.bytes["layer_cov"] == 4 * one.bytes["layer_cov"]
    assert four.bytes["cross"] == 5 * one.bytes["cross"]
    assert four.bytes["summaries"] > one.bytes["summaries"]
    assert four.bytes["stats"] > 9 * one.bytes["stats"]  # 9 unions + per-block stats
    assert subsets(2) == [(0, 1), (1,), (0,)] and len(subsets(4)) == 9
