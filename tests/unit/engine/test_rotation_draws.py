"""``--rotations K``: K baseline draws, empirical p-values and Benjamini-Hochberg q-values,
against numpy/scipy oracles and the null distribution they must have."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
from correlate_helpers import corr64, nanmax_rows
from scipy import stats as sst

from universal_neurons.analysis.calibration import bh_qvalues, empirical_pvalues
from universal_neurons.analysis.universality import universality_table
from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.finalize import Baselines, ModelStats, summarize_moments
from universal_neurons.engine.layout import CrossBlock, ModelShape
from universal_neurons.engine.moments import CoMoments
from universal_neurons.engine.planner import plan_correlation
from universal_neurons.engine.rotation import baseline_basis
from universal_neurons.engine.summary import NeuronSummary


def _moments(z: np.ndarray, shapes: list[ModelShape], rows: int = 256) -> CoMoments:
    acc = CoMoments(shapes, [CrossBlock(0, 0, shapes[0].n_layers, 1, len(shapes))],
                    rows_per_gemm=rows)
    cols, off = {}, 0
    for s in shapes:
        cols[s.name] = slice(off, off + s.n_neurons)
        off += s.n_neurons
    zeros = torch.zeros(len(z), dtype=torch.long)
    acc.update(ActivationBatch({s.name: {"post": torch.from_numpy(z[:, cols[s.name]])}
                                for s in shapes}, zeros, zeros, zeros, zeros))
    return acc.finalize()


def _final(acc: CoMoments, draws: int, seed: int = 0, kind: str = "rotation"):
    """Finalised summaries ``{(a, b): dict}`` with ``draws`` baseline draws."""
    base = Baselines(kind, seed, acc.layout, torch.device("cpu"), draws=draws)
    st = ModelStats.from_moments(acc, base)
    sizes = [s.n_neurons for s in acc.layout.shapes]
    out = {}
    for p in range(1, len(sizes)):
        out[(0, p)] = NeuronSummary(sizes[0], sizes[p], 3, 10, draws=draws)
        out[(p, 0)] = NeuronSummary(sizes[p], sizes[0], 3, 10, draws=draws)
    summarize_moments(acc, st, out, base, max_chunk=200)  # several chunks per layer pair
    return {k: s.finalize() for k, s in out.items()}


def test_draw_zero_keeps_the_single_baseline_seed_and_draws_differ():
    one = baseline_basis("rotation", 7, "m", 2, 12)
    assert torch.equal(one, baseline_basis("rotation", 7, "m", 2, 12, draw=0))
    other = baseline_basis("rotation", 7, "m", 2, 12, draw=3)
    np.testing.assert_allclose((other.T @ other).numpy(), np.eye(12), atol=1e-12)
    # the draw's entropy is (seed, crc32(name), layer, draw): re-derived with numpy's QR
    rng = np.random.default_rng(np.random.SeedSequence([7, zlib.crc32(b"m"), 2, 3]))
    q, r = np.linalg.qr(rng.standard_normal((12, 12)))
    q *= np.sign(np.diag(r))[None, :]
    np.testing.assert_allclose(other.numpy(), q, atol=1e-10)
    assert np.abs(other.numpy() - one.numpy()).max() > 0.1


def test_each_draw_equals_an_explicit_rotation_and_draw_zero_is_unchanged():
    shapes = [ModelShape("a", 2, 10), ModelShape("b", 3, 8), ModelShape("c", 1, 12)]
    rng = np.random.default_rng(0)
    lat = rng.standard_normal((900, 4))
    z = np.concatenate([lat @ rng.standard_normal((4, s.n_neurons))
                        + rng.standard_normal((900, s.n_neurons)) for s in shapes], 1)
    z = z.astype(np.float32)
    acc = _moments(z, shapes)
    many, single = _final(acc, draws=4, seed=3), _final(_moments(z, shapes), draws=1, seed=3)
    off = np.cumsum([0] + [s.n_neurons for s in shapes])
    x = z[:, off[0]:off[1]]
    for p in (1, 2):
        s = shapes[p]
        y = z[:, off[p]:off[p + 1]].astype(np.float64)
        draws = many[(0, p)]["baseline_max_draws"].numpy()
        assert draws.shape == (4, shapes[0].n_neurons)
        assert torch.equal(many[(0, p)]["baseline_max"], single[(0, p)]["baseline_max"])
        assert "baseline_max_draws" not in single[(0, p)]
        for k in range(4):
            yb = np.concatenate([y[:, i * s.d_mlp:(i + 1) * s.d_mlp]
                                 @ baseline_basis("rotation", 3, s.name, i, s.d_mlp, k).numpy()
                                 for i in range(s.n_layers)], 1)
            np.testing.assert_allclose(draws[k], nanmax_rows(corr64(x, yb)), atol=1e-5)


def test_p_and_q_values_match_their_definitions():
    rng = np.random.default_rng(1)
    obs = rng.uniform(0, 1, 50)
    obs[3] = np.nan
    null = rng.uniform(0, 1, (50, 9))
    null[5, 2] = np.nan
    p = empirical_pvalues(obs, null)
    for i in range(50):
        if i == 3:
            assert np.isnan(p[i])
            continue
        want = (1 + sum(1 for v in null[i] if v >= obs[i])) / 10
        assert p[i] == pytest.approx(want, abs=1e-15)
    q = bh_qvalues(p)
    ok = ~np.isnan(p)
    np.testing.assert_allclose(q[ok], sst.false_discovery_control(p[ok], method="bh"),
                               rtol=1e-12)
    assert np.isnan(q[3])
    # ties and a direct re-derivation: q_(i) = min_{j >= i} m p_(j) / j
    p2 = np.array([0.01, 0.04, 0.04, 0.03, 0.5, 0.2])
    m = len(p2)
    srt = np.sort(p2)
    want = {v: min(min(m * srt[j] / (j + 1) for j in range(i, m)), 1.0)
            for i, v in enumerate(srt)}
    np.testing.assert_allclose(bh_qvalues(p2), [want[v] for v in p2], rtol=1e-12)


def _table(z: np.ndarray, shapes: list[ModelShape], draws: int, seed: int):
    fin = _final(_moments(z, shapes, rows=512), draws=draws, seed=seed)
    return universality_table(shapes[0].n_layers, shapes[0].d_mlp,
                              {s.name: fin[(0, p + 1)] for p, s in enumerate(shapes[1:])},
                              {s.name: s.d_mlp for s in shapes[1:]})


def test_permuted_copy_has_the_smallest_p_value():
    k = 19
    shapes = [ModelShape("ref", 2, 12), ModelShape("copy", 2, 12)]
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((600, 24)) ** 3 + rng.standard_normal((600, 24))).astype(np.float32)
    perm = rng.permutation(24)
    t = _table(np.concatenate([x, x[:, perm]], 1), shapes, k, seed=1)
    np.testing.assert_allclose(t["mean_corr"], 1.0, atol=1e-5)
    np.testing.assert_allclose(t["p_value"], 1 / (k + 1), rtol=1e-12)
    assert (t["baseline_std"] > 0).all()
    # BH of m equal p-values: every q is that p
    np.testing.assert_allclose(t["q_value"], 1 / (k + 1), rtol=1e-12)


def test_p_values_of_an_independent_model_are_uniform():
    """Independent iid Gaussian partner: the observed partner basis and its K Haar rotations
    are exchangeable, so p is uniform on {1, ..., K+1} / (K+1). One neuron per replicate
    (replicates are independent), KS distance against that discrete CDF at alpha = 0.001."""
    k, reps = 9, 150
    shapes = [ModelShape("x", 1, 4), ModelShape("y", 2, 6)]
    ps = []
    for r in range(reps):
        rng = np.random.default_rng(100 + r)
        z = rng.standard_normal((300, 16)).astype(np.float32)
        ps.append(_table(z, shapes, k, seed=r)["p_value"].iloc[0])
    ps = np.sort(np.array(ps))
    grid = np.arange(1, k + 2) / (k + 1)
    emp = np.searchsorted(ps, grid, side="right") / reps
    ks = np.abs(emp - grid).max()  # the discrete uniform CDF at its support points is grid
    assert ks < 1.95 / np.sqrt(reps), (ks, np.bincount((ps * (k + 1)).round().astype(int)))
    assert abs(ps.mean() - (k + 2) / (2 * (k + 1))) < 4 * np.sqrt((k * (k + 2) / 12)
                                                                  / (k + 1) ** 2 / reps)


def test_planner_counts_the_extra_draws():
    shapes = [ModelShape("a", 4, 256), ModelShape("b", 4, 256)]
    one = plan_correlation(shapes, "reference", 2**34)
    ten = plan_correlation(shapes, "reference", 2**34, draws=10)
    per_model = 4 * 256 * 257 * 4
    assert ten.bytes["bases"] == 2 * one.bytes["bases"] == 2 * 2 * per_model
    assert ten.bytes["bases_step"] == one.bytes["bases_step"] + per_model
    assert ten.bytes["stats"] == one.bytes["stats"] + 9 * 12 * 2048
    assert ten.bytes["summaries"] == one.bytes["summaries"] + 2 * 1024 * 9 * 4
    assert ten.total_bytes > one.total_bytes
    none = plan_correlation(shapes, "reference", 2**34, baseline=False, draws=10)
    assert none.bytes["bases"] == 0 and none.bytes["stats"] == one.bytes["stats"]
