"""Per-neuron summaries folded from chunks (engine/summary_fold.py) against a float64 numpy
oracle: blocks of rows, worker threads, two-stage top-k, missing values, both directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from correlate_helpers import assert_hists_agree
from scipy import stats as sst

from universal_neurons.engine import summary_fold
from universal_neurons.engine.summary import NeuronSummary
from universal_neurons.engine.summary_fold import group_size

K, BINS = 5, 20


def oracle(x: np.ndarray, k: int = K, bins: int = BINS) -> dict[str, np.ndarray]:
    """Row summaries of ``x`` (float64; NaN = missing) the slow way."""
    out: dict[str, list] = {key: [] for key in ("top", "top_i", "bot", "bot_i", "hist", "count",
                                                 "mean", "var", "skew", "kurt")}
    for row in x:
        ok = ~np.isnan(row)
        v, idx = row[ok], np.flatnonzero(ok)
        if len(v) < k:  # a dead neuron: the caller checks it apart
            v, idx = np.linspace(-0.5, 0.5, k), np.arange(k)
        order = np.argsort(-v, kind="stable")[:k]
        out["top"].append(v[order])
        out["top_i"].append(idx[order])
        order = np.argsort(v, kind="stable")[:k]
        out["bot"].append(v[order])
        out["bot_i"].append(idx[order])
        out["hist"].append(np.histogram(v, bins=bins, range=(-1, 1))[0])
        out["count"].append(len(v))
        out["mean"].append(v.mean())
        out["var"].append(v.var())
        out["skew"].append(sst.skew(v))
        out["kurt"].append(sst.kurtosis(v, fisher=False))
    return {key: np.array(val) for key, val in out.items()}


def check(fin: dict[str, torch.Tensor], want: dict[str, np.ndarray], exact: np.ndarray,
          moments: bool = True) -> None:
    """Equal values throughout; indices equal where the values are not tied, and where they
    are, distinct indices of those values."""
    f = {key: v.numpy() for key, v in fin.items()}
    np.testing.assert_array_equal(f["count"], want["count"])
    for side in ("top", "bottom"):
        key = "top" if side == "top" else "bot"
        vals, idx = f[f"{side}_values"], f[f"{side}_indices"]
        np.testing.assert_array_equal(vals, want[key])
        np.testing.assert_array_equal(np.take_along_axis(exact, idx, 1), vals)
        assert all(len(set(row)) == len(row) for row in idx.tolist())
        untied = np.array([len(np.unique(exact[i][~np.isnan(exact[i])])) ==
                           np.sum(~np.isnan(exact[i])) for i in range(len(exact))])
        np.testing.assert_array_equal(idx[untied], want[f"{key}_i"][untied])
    np.testing.assert_array_equal(f["max"], want["top"][:, 0])
    np.testing.assert_array_equal(f["min"], want["bot"][:, 0])
    np.testing.assert_array_equal(f["argmax"], f["top_indices"][:, 0])
    np.testing.assert_array_equal(f["argmin"], f["bottom_indices"][:, 0])
    assert_hists_agree(f["hist"], want["hist"], exact, tol=1e-6)
    if not moments:
        return
    # float32 sums of float32 values, accumulated in float64 (cascade within a block)
    np.testing.assert_allclose(f["mean"], want["mean"], atol=1e-6)
    np.testing.assert_allclose(f["var"], want["var"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(f["skew"], want["skew"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(f["kurt"], want["kurt"], rtol=1e-4)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows and frequent column-histogram flushes, so every path runs."""
    monkeypatch.setattr(summary_fold, "BLOCK_ELEMENTS", 1024)
    monkeypatch.setattr(summary_fold, "COL_HIST_ROWS", 48)


def matrix(r: int, c: int, seed: int, nan: bool = False, ties: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.tanh(rng.standard_normal((r, c)) * rng.uniform(0.1, 2, (r, 1))).astype(np.float32)
    if ties:
        x[0, :7] = 1.0  # the top edge of the last bin
        x[1, :5] = -1.0
    x[2, 3] = 0.5  # on an inner edge
    if nan:
        x[:, 11] = np.nan  # a dead partner
        x[5] = np.nan  # a dead neuron
        x[rng.random((r, c)) < 0.01] = np.nan
    return x


@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_add_pair_matches_numpy_both_directions(small_blocks, nan, threads):
    r, c = 96, 240  # two-stage top-k on both sides: groups of rows and of columns
    assert group_size(c, K) > 1 and group_size(r, K, summary_fold.COL_GATHER_COST) > 1
    x = matrix(r, c, seed=1, nan=nan)
    ab, ba = NeuronSummary(r, c, K, BINS), NeuronSummary(c, r, K, BINS)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        ab.add_pair(torch.from_numpy(x), slice(0, r), 0, ba)
    finally:
        torch.set_num_threads(before)
    x64 = x.astype(np.float64)
    want_ab, want_ba = oracle(x64), oracle(x64.T)
    if nan:  # the dead neuron: nothing valid, index -1 throughout
        fin = ab.finalize()
        assert fin["count"][5] == 0 and (fin["top_indices"][5] == -1).all()
        assert torch.isnan(fin["max"][5]) and fin["argmax"][5] == -1
        live = np.ones(r, dtype=bool)
        live[5] = False
        check({k: v[live] for k, v in fin.items()}, {k: v[live] for k, v in want_ab.items()},
              x64[live])
        fin = ba.finalize()
        assert (fin["count"][11] == 0) and (fin["top_indices"][11] == -1).all()
        live = np.ones(c, dtype=bool)
        live[11] = False
        check({k: v[live] for k, v in fin.items()}, {k: v[live] for k, v in want_ba.items()},
              x64.T[live])
    else:
        check(ab.finalize(), want_ab, x64)
        check(ba.finalize(), want_ba, x64.T)


def test_top_values_clustered_in_one_group(small_blocks):
    """Sorted rows: every top value sits in the same few groups, the hard case for the
    two-stage top-k."""
    r, c = 64, 480
    x = np.sort(matrix(r, c, seed=2), axis=1)
    ab, ba = NeuronSummary(r, c, K, BINS), NeuronSummary(c, r, K, BINS)
    ab.add_pair(torch.from_numpy(x), slice(0, r), 0, ba)
    check(ab.finalize(), oracle(x.astype(np.float64)), x.astype(np.float64))
    xt = np.ascontiguousarray(np.sort(matrix(c, r, seed=4), axis=0).T)  # sorted columns
    ab, ba = NeuronSummary(r, c, K, BINS), NeuronSummary(c, r, K, BINS)
    ab.add_pair(torch.from_numpy(xt), slice(0, r), 0, ba)
    # (rows of near-equal values here: the power-sum moments are ill-conditioned)
    check(ba.finalize(), oracle(xt.T.astype(np.float64)), xt.T.astype(np.float64),
          moments=False)


def test_chunks_and_transposed_views_fold_to_the_whole(small_blocks):
    """Chunks of any shape, in any order, through add (rows), add of a transposed view
    (columns) and add_pair, give the summaries of the whole matrix."""
    r, c = 72, 160
    x = matrix(r, c, seed=5, nan=True, ties=False)  # (ties may come in any order)
    t = torch.from_numpy(x)
    ab, ba = NeuronSummary(r, c, K, BINS), NeuronSummary(c, r, K, BINS)
    ab.add_pair(t[:40, 80:], slice(0, 40), 80, ba)
    ab.add(t[40:, :].contiguous(), slice(40, r), 0)
    ba.add(t[40:, :].contiguous().t(), slice(0, c), 40)  # a transposed view, read in place
    part = NeuronSummary(r, c, K, BINS)
    part_t = NeuronSummary(c, r, K, BINS)
    part.add_pair(t[:40, :80], slice(0, 40), 0, part_t)
    ab.merge(part)
    ba.merge(part_t)
    whole_ab, whole_ba = NeuronSummary(r, c, K, BINS), NeuronSummary(c, r, K, BINS)
    whole_ab.add_pair(t, slice(0, r), 0, whole_ba)
    for got, want in ((ab, whole_ab), (ba, whole_ba)):
        a, b = got.finalize(), want.finalize()
        for key in a:  # float32 partial sums: moments agree to rounding, the rest exactly
            tol = 1e-6 if key in ("mean", "var", "skew", "kurt") else 0
            torch.testing.assert_close(a[key], b[key], rtol=tol, atol=tol, equal_nan=True)


def test_group_size_divides_and_leaves_enough_groups():
    assert group_size(3072, 10) == 16
    assert group_size(3072, 10, gather_cost=6) == 8
    assert group_size(30, 4) == 1  # too few values for groups: a plain topk
    for n in (97, 512, 3000, 4096):
        g = group_size(n, 10)
        assert g == 1 or (n % g == 0 and n // g >= summary_fold.MIN_GROUPS_PER_K * 10)
