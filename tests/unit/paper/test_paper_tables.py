"""``analysis.paper_tables`` against independent recomputations on small synthetic tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from universal_neurons.analysis import paper_tables as pt

TOL = 1e-12


def _table(rng, n_layers=3, d=20, partners=("b", "c")):
    n = n_layers * d
    t = pd.DataFrame({"layer": np.repeat(np.arange(n_layers), d), "neuron": np.tile(np.arange(d), n_layers)})
    t["mean_corr"] = rng.uniform(0.1, 0.9, n)
    t["mean_baseline"] = rng.uniform(0.1, 0.5, n)
    t["excess_corr"] = t["mean_corr"] - t["mean_baseline"]
    t["is_universal"] = t["excess_corr"] > 0.3
    for p in partners:
        t[f"{p}_best"] = [f"L{rng.integers(n_layers)}.{rng.integers(d)}" for _ in range(n)]
    t.loc[3, f"{partners[0]}_best"] = None
    for s in ("kurt", "w_out_norm", "vocab_skew"):
        t[s] = rng.normal(size=n)
    t["vocab_kurt"] = rng.gamma(2.0, 4.0, n)
    return t


def test_corr_distributions_counts_and_densities():
    rng = np.random.default_rng(0)
    tables = {"a": _table(rng), "z": _table(rng).iloc[:40]}
    bins = 7
    out = pt.corr_distributions(tables, bins)
    for q in pt.CORR_QUANTITIES:
        pooled = np.concatenate([t[q].to_numpy() for t in tables.values()])
        lo, hi = pooled.min(), pooled.max()
        for m, t in tables.items():
            expect = [0] * bins
            for v in t[q]:  # bin index by the formula, the last edge closed
                expect[min(int(math.floor((v - lo) / (hi - lo) * bins)), bins - 1)] += 1
            got = out[(out["model"] == m) & (out["quantity"] == q)].sort_values("bin")
            assert got["count"].tolist() == expect
            width = (hi - lo) / bins
            np.testing.assert_allclose(got["density"], np.array(expect) / (len(t) * width),
                                       rtol=1e-9)
            assert abs((got["density"] * (got["bin_right"] - got["bin_left"])).sum() - 1) < 1e-9


def test_depth_specialisation_matches_crosstab():
    rng = np.random.default_rng(1)
    t = _table(rng)
    out = pt.depth_specialisation(t)
    long = pd.concat([pd.DataFrame({"layer": t["layer"], "u": t["is_universal"],
                                    "pl": t[f"{p}_best"].str.extract(r"L(\d+)\.")[0]})
                      for p in ("b", "c")]).dropna()
    long["pl"] = long["pl"].astype(int)
    for group, sub in (("all", long), ("universal", long[long["u"]])):
        ct = pd.crosstab(sub["layer"], sub["pl"])
        got = out[(out["group"] == group) & (out["partner"] == "all")]
        for (layer, pl), c in ct.stack().items():
            row = got[(got["layer"] == layer) & (got["partner_layer"] == pl)]
            assert int(row["count"].iloc[0]) == c
            assert abs(float(row["share"].iloc[0]) - c / ct.loc[layer].sum()) < TOL
        assert int(got["count"].sum()) == len(sub)
    one = out[(out["group"] == "all") & (out["partner"] == "b")]
    assert int(one["count"].sum()) == len(t) - 1  # the one unknown best partner


def test_raw_by_layer_quantiles():
    rng = np.random.default_rng(2)
    t = _table(rng)
    out = pt.raw_by_layer(t, ("kurt", "w_out_norm", "absent"))
    assert set(out["statistic"]) == {"kurt", "w_out_norm"}
    for (layer, u), g in t.groupby(["layer", "is_universal"]):
        row = out[(out["statistic"] == "kurt") & (out["layer"] == layer) & (out["universal"] == u)]
        v = sorted(g["kurt"])
        assert int(row["n"].iloc[0]) == len(v)
        assert abs(float(row["mean"].iloc[0]) - sum(v) / len(v)) < 1e-12
        assert abs(float(row["q50"].iloc[0]) - stats.scoreatpercentile(v, 50)) < 1e-12
        assert abs(float(row["q25"].iloc[0]) - stats.scoreatpercentile(v, 25)) < 1e-12


def test_prediction_skew_late_counts():
    rng = np.random.default_rng(3)
    t = _table(rng)
    out = pt.prediction_skew_late(t, kurtosis=10.0).set_index("layer")
    for layer in range(3):
        rows = [r for r in t.itertuples() if r.layer == layer]
        pred = sum(1 for r in rows if r.vocab_kurt > 10 and r.vocab_skew > 0)
        supp = sum(1 for r in rows if r.vocab_kurt > 10 and r.vocab_skew < 0)
        assert out.loc[layer, "n_prediction"] == pred and out.loc[layer, "n_suppression"] == supp
        assert abs(out.loc[layer, "share_prediction"] - pred / len(rows)) < TOL
        assert abs(out.loc[layer, "median_skew"] - np.median([r.vocab_skew for r in rows])) < TOL


def test_entropy_weights_percentiles_and_sweep_point():
    rng = np.random.default_rng(4)
    n = 30
    cand = pd.DataFrame({"layer": 2, "neuron": np.arange(n), "w_out_norm": rng.uniform(size=n),
                         "vocab_var": rng.uniform(size=n), "null_frac": rng.uniform(size=n)})
    cand["neuron_name"] = [f"L2.{i}" for i in range(n)]
    sweep = pd.DataFrame({"group": ["clean", "target", "target", "target", "baseline"],
                          "neuron": ["", "L2.5", "L2.5", "L2.7", "L2.9"],
                          "value": [np.nan, -0.17, 0.0, -0.17, -0.17],
                          "entropy": [3.0, 3.5, 3.1, 2.5, 9.0], "loss": [4.0, 4.2, 4.0, 4.1, 9.0]})
    neurons = pd.DataFrame({"layer": np.repeat([1, 2], n), "neuron": np.tile(np.arange(n), 2),
                            "l2_penalty": rng.uniform(size=2 * n)})
    out = pt.entropy_weights(cand, ["L2.5", "L2.7"], sweep, neurons).set_index("neuron_name")
    assert out["is_entropy"].sum() == 2
    for name, i in (("L2.5", 5), ("L2.0", 0)):
        v = neurons.loc[n + i, "l2_penalty"]
        assert out.loc[name, "l2_penalty"] == v
        expect = stats.percentileofscore(neurons["l2_penalty"], v, kind="weak")
        assert abs(out.loc[name, "l2_penalty_pct"] - expect) < 1e-9
    for s in ("w_out_norm", "null_frac"):
        for name in ("L2.5", "L2.7", "L2.0"):
            expect = stats.percentileofscore(cand[s], cand.set_index("neuron_name").loc[name, s],
                                             kind="weak")
            assert abs(out.loc[name, f"{s}_pct"] - expect) < 1e-9
    assert abs(out.loc["L2.5", "d_entropy_at_min"] - 0.5) < TOL
    assert abs(out.loc["L2.7", "d_loss_at_min"] - 0.1) < 1e-9
    assert np.isnan(out.loc["L2.9", "entropy_at_min"])  # a baseline neuron is not reported


def test_attention_panel_spearman_and_fraction():
    rng = np.random.default_rng(5)
    x = rng.normal(size=200)
    pts = pd.DataFrame({"pair": ["p"] * 100 + ["q"] * 100, "act": rng.normal(size=200),
                        "delta_bos_attn": np.round(x, 1),  # ties
                        "delta_out_norm": -x + rng.normal(scale=0.5, size=200)})
    summ = pd.DataFrame({"pair": ["p", "q"], "mean_bos_attn": [0.5, 0.25],
                         "norm_measure": ["head_pct", "head_pct"]})
    out = pt.attention_panel(pts, summ).set_index("pair")
    for pair, bos in (("p", 0.5), ("q", 0.25)):
        g = pts[pts["pair"] == pair]
        rho = stats.spearmanr(g["delta_bos_attn"], g["delta_out_norm"]).statistic
        assert abs(out.loc[pair, "spearman_bos_norm"] - rho) < 1e-12
        rho2 = stats.spearmanr(g["act"], g["delta_bos_attn"]).statistic
        assert abs(out.loc[pair, "spearman_act_bos"] - rho2) < 1e-12
        assert abs(out.loc[pair, "frac_delta_bos_attn"] - g["delta_bos_attn"].mean() / bos) < 1e-12


def test_spearman_constant_is_nan():
    assert np.isnan(pt.spearman(np.ones(5), np.arange(5.0)))


def test_depth_without_partners_raises():
    with pytest.raises(ValueError, match="best"):
        pt.depth_specialisation(pd.DataFrame({"layer": [0], "is_universal": [True]}))
