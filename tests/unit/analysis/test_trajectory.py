"""Emergence, persistence and prediction over checkpoints, against per-neuron pandas loops."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from universal_neurons.analysis.trajectory import checkpoint_summary, neuron_trajectories

LABELS = {30: "step30", 10: "step10", 20: "step20", 40: "main"}  # training order = key order


def synthetic(n_layers: int = 3, d_mlp: int = 40, seed: int = 0) -> pd.DataFrame:
    """Random excess that drifts upwards over training, some dead (NaN) neurons, rows
    shuffled; checkpoint_index is not 0..C-1."""
    rng = np.random.default_rng(seed)
    n = n_layers * d_mlp
    base = rng.normal(0.35, 0.2, n)
    rows = []
    for step, ci in enumerate(sorted(LABELS)):
        excess = base + rng.normal(0.05 * step, 0.15, n)
        excess[rng.random(n) < 0.03] = np.nan
        for i in range(n):
            rows.append({"layer": i // d_mlp, "neuron": i % d_mlp, "checkpoint": LABELS[ci],
                         "checkpoint_index": ci, "excess_corr": excess[i],
                         "is_universal": bool(excess[i] > 0.5)})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def oracle_neurons(frame: pd.DataFrame) -> dict[tuple[int, int], dict]:
    """Per neuron, walking its checkpoints in order: first universal label, stays, and the
    set of checkpoints where it emerged / persists."""
    out = {}
    for (layer, neuron), g in frame.groupby(["layer", "neuron"]):
        g = g.sort_values("checkpoint_index")
        flags = list(g["is_universal"])
        labels = list(g["checkpoint"])
        first = next((k for k, f in enumerate(flags) if f), None)
        persists = {labels[k] for k in range(len(flags)) if all(flags[k:])}
        out[(layer, neuron)] = {
            "first": None if first is None else labels[first],
            "stays": first is not None and all(flags[first:]),
            "emerged": set() if first is None else {labels[first]},
            "persists": persists,
            "last": g["excess_corr"].iloc[-1],
        }
    return out


def test_neuron_trajectories_match_a_per_neuron_walk():
    frame = synthetic()
    got = neuron_trajectories(frame)
    want = oracle_neurons(frame)
    assert len(got) == len(frame)
    assert list(got["checkpoint_index"]) == sorted(got["checkpoint_index"])
    for r in got.itertuples(index=False):
        w = want[(r.layer, r.neuron)]
        if w["first"] is None:
            assert pd.isna(r.first_universal)
        else:
            assert r.first_universal == w["first"]
        assert r.stays_universal == w["stays"]
        assert r.emerged == (r.checkpoint in w["emerged"])
        assert r.persists == (r.checkpoint in w["persists"])
        assert (np.isnan(r.excess_corr_last) and np.isnan(w["last"])) or \
            r.excess_corr_last == w["last"]
        if w["first"] is None:
            assert r.first_universal_index == -1
        else:
            assert LABELS[r.first_universal_index] == w["first"]
    assert got["emerged"].sum() == sum(1 for w in want.values() if w["first"] is not None)


def test_checkpoint_summary_matches_set_arithmetic_and_scipy_free_formulas():
    frame = synthetic(seed=3)
    got = checkpoint_summary(frame).set_index("checkpoint")
    order = [LABELS[k] for k in sorted(LABELS)]
    assert list(got.index) == order
    wide = frame.pivot_table(index=["layer", "neuron"], columns="checkpoint",
                             values="excess_corr", dropna=False)
    uni = {c: set(map(tuple, frame[(frame.checkpoint == c) & frame.is_universal]
                      [["layer", "neuron"]].to_numpy())) for c in order}
    n = wide.shape[0]
    for k, c in enumerate(order):
        row = got.loc[c]
        later = order[k + 1:]
        earlier = order[:k]
        assert row.n_universal == len(uni[c])
        assert row.share_universal == pytest.approx(len(uni[c]) / n, abs=1e-15)
        assert row.median_excess == pytest.approx(wide[c].dropna().median(), abs=1e-12)
        assert row.max_excess == pytest.approx(wide[c].max(), abs=1e-12)
        new = uni[c] - set().union(*(uni[e] for e in earlier))
        assert row.n_emerged == len(new)
        assert row.emergence_rate == pytest.approx(len(new) / n, abs=1e-15)
        if later:
            kept = uni[c].intersection(*(uni[x] for x in later))
            assert row.persistence_rate == pytest.approx(len(kept) / len(uni[c]), abs=1e-15)
        else:
            assert np.isnan(row.persistence_rate)
        last = order[-1]
        both = uni[c] & uni[last]
        assert row.precision_last == pytest.approx(len(both) / len(uni[c]), abs=1e-15)
        assert row.recall_last == pytest.approx(len(both) / len(uni[last]), abs=1e-15)
        pair = wide[[c, last]].dropna().to_numpy(dtype=np.float64)
        rx = pair[:, 0].argsort().argsort()  # no ties in continuous data
        ry = pair[:, 1].argsort().argsort()
        assert row.spearman_last == pytest.approx(np.corrcoef(rx, ry)[0, 1], abs=1e-12)
        assert row.pearson_last == pytest.approx(np.corrcoef(pair.T)[0, 1], abs=1e-12)
    assert got.loc[order[-1]].spearman_last == pytest.approx(1.0)
    assert got.loc[order[-1]].recall_last == pytest.approx(1.0)


def test_neuron_that_leaves_and_comes_back_does_not_stay():
    flags = [False, True, False, True]
    frame = pd.DataFrame({"layer": 0, "neuron": 0, "checkpoint": [f"c{k}" for k in range(4)],
                          "checkpoint_index": range(4), "excess_corr": [0.1, 0.6, 0.2, 0.7],
                          "is_universal": flags})
    got = neuron_trajectories(frame)
    assert list(got["emerged"]) == [False, True, False, False]
    assert list(got["persists"]) == [False, False, False, True]
    assert set(got["first_universal"].astype(str)) == {"c1"} and not got["stays_universal"].any()
    summary = checkpoint_summary(frame)
    assert list(summary["persistence_rate"].iloc[:3].fillna(-1)) == [-1, 0.0, -1]
    assert np.isnan(summary["precision_last"].iloc[0])  # none universal there


def test_incomplete_table_is_refused():
    frame = synthetic().iloc[:-1]
    with pytest.raises(ValueError, match="expected every one"):
        checkpoint_summary(frame)
    with pytest.raises(ValueError, match="lacks columns"):
        neuron_trajectories(frame.drop(columns=["is_universal"]))
