"""Properties of universal neurons on synthetic neuron tables where the answer is known."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from universal_neurons.analysis.neuron_table import (
    CONTRACT_COLUMNS,
    missing_columns,
    read_neuron_table,
    refresh_neuron_table,
    update_neuron_table,
)
from universal_neurons.analysis.properties import (
    CLAIMS,
    compare_groups,
    universal_mask,
    within_layer_percentiles,
)
from universal_neurons.constants import neuron_table
from universal_neurons.rundir import write_table
from universal_neurons.stages.properties import PropertiesConfig, run_properties

LAYERS, D_MLP = 4, 150


def synthetic_table(seed: int, n_universal: int = 30, effect: float = 1.0) -> pd.DataFrame:
    """A neuron table whose universal neurons differ by ``effect`` SDs in the paper's
    directions (``effect=0``: no difference; negative: the opposite)."""
    rng = np.random.default_rng(seed)
    n = LAYERS * D_MLP
    layer, neuron = np.divmod(np.arange(n), D_MLP)
    uni = np.zeros(n, dtype=bool)
    uni[rng.choice(n, n_universal, replace=False)] = True
    shift = effect * uni
    excess = np.where(uni, rng.uniform(0.55, 0.9, n), rng.uniform(0.0, 0.45, n))
    base = rng.uniform(0.1, 0.3, n)
    df = pd.DataFrame({
        "layer": layer, "neuron": neuron, "max_corr": base + excess + 0.05,
        "mean_corr": base + excess, "min_corr": base + excess - 0.05, "max_baseline": base + 0.02,
        "mean_baseline": base, "min_baseline": base - 0.02, "excess_corr": excess,
        "is_universal": excess > 0.5,
        "w_in_norm": rng.normal(3, 0.3, n) + layer * 0.5, "input_bias": rng.normal(-0.5, 0.2, n)
        - 0.2 * shift - layer * 0.3, "w_out_norm": rng.normal(2, 0.3, n),
        "in_out_sim": rng.normal(0, 0.1, n),
        "mean": rng.normal(-0.5, 0.2, n), "var": rng.gamma(2, 1, n),
        "skew": rng.normal(0.5, 0.4, n) + 0.4 * shift + layer,
        "kurt": rng.gamma(4, 1, n) + 3 + 4 * shift,
        "sparsity": np.clip(rng.normal(0.2, 0.05, n) - 0.05 * shift, 0, 1),
        "vocab_mean": rng.normal(0, 0.01, n), "vocab_var": rng.gamma(2, 0.001, n),
        "vocab_skew": rng.normal(0, 0.3, n), "vocab_kurt": rng.gamma(3, 1, n) + 3})
    df["l2_penalty"] = df.w_in_norm**2 + df.w_out_norm**2 + 3 * shift
    return df


def make_run(tmp_path, tables: dict[str, pd.DataFrame]):
    for name, df in tables.items():
        write_table(tmp_path / neuron_table(name), df)
    return tmp_path


def test_compare_groups_matches_scipy():
    rng = np.random.default_rng(0)
    u, o = rng.normal(1, 1, 40), np.r_[rng.normal(0, 1, 300), np.nan]
    r = compare_groups(u, o, "higher")
    oo = o[~np.isnan(o)]
    mw = stats.mannwhitneyu(u, oo, alternative="greater")
    assert r["p_value"] == pytest.approx(mw.pvalue) and r["n_other"] == 300
    # rank-biserial = P(u > o) - P(u < o), by brute force
    diff = np.sign(u[:, None] - oo[None, :])
    assert r["rank_biserial"] == pytest.approx(diff.mean())
    pooled = np.sqrt(((39 * u.var(ddof=1)) + 299 * oo.var(ddof=1)) / 338)
    assert r["cohens_d"] == pytest.approx((u.mean() - oo.mean()) / pooled)
    assert r["median_universal"] == pytest.approx(np.median(u))


def test_within_layer_percentiles_equal_rankdata():
    df = synthetic_table(0)
    pct = within_layer_percentiles(df, ["skew", "nope"])
    assert list(pct.columns) == ["skew"]
    for layer in range(LAYERS):
        sel = df.layer == layer
        expect = stats.rankdata(df["skew"][sel]) / sel.sum() * 100
        np.testing.assert_allclose(pct["skew"][sel], expect)


def test_universal_mask_rules():
    df = synthetic_table(1)
    m, rule = universal_mask(df)
    assert np.array_equal(m, df.is_universal) and "is_universal" in rule
    m, rule = universal_mask(df.drop(columns="is_universal"), threshold=0.7)
    assert np.array_equal(m, df.excess_corr > 0.7) and "0.7" in rule
    df.loc[0, "excess_corr"] = np.nan
    m, rule = universal_mask(df, top_percent=10)
    assert m.sum() == np.ceil(0.1 * (len(df) - 1)) and not m[0]
    assert df.excess_corr[m].min() >= df.excess_corr[~m].max()
    with pytest.raises(ValueError, match="correlate"):
        universal_mask(df.drop(columns=["is_universal", "excess_corr"]))


@pytest.mark.parametrize("effect,alpha,expect", [(1.0, 0.05, "held"), (0.0, 0.001, "not held"),
                                                 (-1.0, 0.05, "not held")])
def test_claims_on_synthetic_runs(tmp_path, effect, alpha, expect):
    run = make_run(tmp_path, {"m-a": synthetic_table(2, effect=effect),
                              "m-b": synthetic_table(3, effect=effect)})
    res = run_properties(PropertiesConfig(out=str(run), alpha=alpha, plots=False))
    claims = res.claims
    assert len(claims) == 2 * len(CLAIMS)
    assert set(claims.status) == {expect}
    row = claims[(claims.model == "m-a") & (claims.statistic == "kurt")].iloc[0]
    assert row.n_universal == 30 and row.universal_set.startswith("is_universal")
    if effect > 0:
        assert row.rank_biserial > 0.5 and row.p_value < 1e-6
        assert row.median_universal > row.median_other
        bias = claims[(claims.model == "m-a") & (claims.statistic == "input_bias")].iloc[0]
        assert bias.rank_biserial < 0 and bias.held
    if effect < 0:
        assert row.rank_biserial < -0.5
    saved = pd.read_csv(run / "properties" / "claims.csv")
    assert list(saved.status) == list(claims.status)
    js = json.loads((run / "properties" / "claims.json").read_text())
    assert js["summary"]["kurt"]["held_in"] == (2 if expect == "held" else 0)
    assert len(js["claims"]) == 10


def test_too_few_universal_neurons_suggests_top_percent(tmp_path):
    run = make_run(tmp_path, {"m": synthetic_table(4, n_universal=5)})
    res = run_properties(PropertiesConfig(out=str(run), plots=False, fallback_percent=None))
    assert set(res.claims.status) == {"too few"}
    assert "--top-percent" in res.claims.note.iloc[0]
    res = run_properties(PropertiesConfig(out=str(run), top_percent=5, plots=False))
    assert (res.claims.n_universal == 30).all()
    assert res.claims.universal_set.iloc[0] == "top 5% by excess_corr"


def test_models_without_correlations_are_skipped(tmp_path):
    run = make_run(tmp_path, {"ref": synthetic_table(9),
                              "partner": synthetic_table(10)[["layer", "neuron", "kurt"]]})
    res = run_properties(PropertiesConfig(out=str(run), plots=False))
    assert set(res.claims.model) == {"ref"}
    with pytest.raises(ValueError, match="correlate"):
        run_properties(PropertiesConfig(out=str(make_run(tmp_path / "b", {
            "partner": synthetic_table(10)[["layer", "neuron", "kurt"]]})), plots=False))


def test_missing_statistic_is_reported(tmp_path):
    run = make_run(tmp_path, {"m": synthetic_table(5).drop(columns=["kurt", "l2_penalty"])})
    claims = run_properties(PropertiesConfig(out=str(run), plots=False)).claims
    miss = claims[claims.status == "missing"]
    assert set(miss.statistic) == {"kurt", "l2_penalty"}
    assert "universal-neurons weights" in miss[miss.statistic == "l2_penalty"].note.iloc[0]


def test_neuron_table_update_keeps_other_columns_and_orders(tmp_path):
    full = synthetic_table(6)
    corr = full[list(CONTRACT_COLUMNS[:10])].sample(frac=1, random_state=0)
    write_table(tmp_path / neuron_table("org/m"), corr)
    df = update_neuron_table(tmp_path, "org/m", full[["layer", "neuron", "skew", "kurt"]])
    assert list(df.columns) == list(CONTRACT_COLUMNS[:10]) + ["skew", "kurt"]
    assert df.layer.is_monotonic_increasing and len(df) == len(full)
    new = full[["layer", "neuron", "skew"]].assign(skew=1.0, extra=2.0)
    df = update_neuron_table(tmp_path, "org/m", new)
    assert (df["skew"] == 1.0).all() and "kurt" in df and df.columns[-1] == "extra"
    assert missing_columns(read_neuron_table(tmp_path, "org/m"))[0] == "w_in_norm"
    assert (tmp_path / "neurons" / "org--m.csv").exists()
    assert refresh_neuron_table(tmp_path, "org/m").equals(df)  # no stage files: unchanged


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    run = make_run(tmp_path, {"m-a": synthetic_table(7), "m-b": synthetic_table(8)})
    res = run_properties(PropertiesConfig(out=str(run)))
    pngs = sorted(p.name for p in (run / "plots").glob("*.png"))
    assert pngs == ["corr_vs_baseline_m-a.png", "corr_vs_baseline_m-b.png",
                    "properties_percentiles.png", "universal_by_layer.png"]
    assert all((run / "plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    assert "plots/properties_percentiles.png" in res.files


def test_missing_matplotlib_gives_a_clear_message(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    run = make_run(tmp_path, {"m": synthetic_table(11)})
    with pytest.raises(ValueError, match=r"universal-neurons\[plot\].*--no-plots"):
        run_properties(PropertiesConfig(out=str(run)))
