"""Too few universal neurons: the properties and families stages also compute their results
for the top 5% by excess correlation, and label every such row."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy import stats
from test_properties import make_run, synthetic_table

from universal_neurons.analysis.selection import fallback_label, top_percent_mask
from universal_neurons.stages.families import FamiliesConfig, run_families
from universal_neurons.stages.properties import PropertiesConfig, run_properties

LABEL_5 = "top 5% by excess correlation: 30 neurons (only 5 pass 0.5)"


def _manifest(run, threshold=0.5) -> None:
    (run / "manifest.json").write_text(json.dumps(
        {"stages": {"correlate": {"config": {"threshold": threshold}}}}))


def _top(excess: np.ndarray, percent: float) -> set[int]:
    """Independent oracle: indices of the ceil(p n) largest finite values (sorted list)."""
    valid = [(v, -i) for i, v in enumerate(excess) if not math.isnan(v)]
    k = math.ceil(percent / 100 * len(valid))
    return {-i for _, i in sorted(valid, reverse=True)[:k]}


def test_top_percent_mask_size_and_members():
    rng = np.random.default_rng(1)
    x = rng.normal(size=2048)
    x[[3, 70]] = np.nan
    m = top_percent_mask(x, 5)
    assert m.sum() == math.ceil(0.05 * 2046) == 103
    assert set(np.flatnonzero(m)) == _top(x, 5)
    assert top_percent_mask(np.array([0.1, 0.2]), 5).sum() == 1  # ceil: never empty
    assert fallback_label(5, 103, 4, 0.5) == ("top 5% by excess correlation: 103 neurons "
                                              "(only 4 pass 0.5)")


def _pct_within_layer(df: pd.DataFrame, col: str) -> np.ndarray:
    out = np.empty(len(df))
    for _, idx in df.groupby("layer").groups.items():
        v = df.loc[idx, col].to_numpy(np.float64)
        out[np.asarray([df.index.get_loc(i) for i in idx])] = stats.rankdata(v) / len(v) * 100
    return out


def test_properties_fall_back_to_top_five_percent(tmp_path):
    table = synthetic_table(4, n_universal=5)  # 600 neurons, 5 universal
    run = make_run(tmp_path, {"m": table})
    _manifest(run)
    res = run_properties(PropertiesConfig(out=str(run), plots=False))
    claims = res.claims
    main = claims[claims.selection == "excess correlation > 0.5: 5 neurons"]
    top = claims[claims.selection == LABEL_5]
    assert len(main) == len(top) == 5 and len(claims) == 10
    assert set(main.status) == {"too few"} and "top 5%" in main.note.iloc[0]
    assert (top.n_universal == 30).all() and set(top.status) <= {"held", "not held"}
    # the p-value of the kurtosis claim on the 30 neurons, from scipy on re-derived percentiles
    want = np.zeros(len(table), dtype=bool)
    want[list(_top(table.excess_corr.to_numpy(), 5))] = True
    pct = _pct_within_layer(table, "kurt")
    p = stats.mannwhitneyu(pct[want], pct[~want], alternative="greater").pvalue
    row = top[top.statistic == "kurt"].iloc[0]
    assert math.isclose(row.p_value, p, rel_tol=1e-9)
    assert row.status == ("held" if p < 0.05 else "not held")
    # every output says which neurons: comparison rows, the percentile frame, claims.json
    assert set(res.comparison.selection) == {main.selection.iloc[0], LABEL_5}
    assert np.array_equal(res.percentiles.fallback_universal.to_numpy(), want)
    js = json.loads((run / "properties" / "claims.json").read_text())
    assert js["summary"]["fallback"]["selection"] == [LABEL_5]
    assert js["summary"]["kurt"]["tested_in"] == 0
    assert js["summary"]["fallback"]["kurt"]["tested_in"] == 1
    assert LABEL_5 in set(pd.read_csv(run / "properties" / "claims.csv").selection)


def test_properties_no_fallback_with_enough_universal_or_top_percent(tmp_path):
    run = make_run(tmp_path, {"m": synthetic_table(2, n_universal=30)})
    claims = run_properties(PropertiesConfig(out=str(run), plots=False)).claims
    assert len(claims) == 5 and set(claims.selection) == {"is_universal: 30 neurons"}
    run = make_run(tmp_path / "b", {"m": synthetic_table(4, n_universal=5)})
    claims = run_properties(PropertiesConfig(out=str(run), top_percent=5, plots=False)).claims
    assert len(claims) == 5 and claims.selection.iloc[0].startswith("top 5%")


def _family_run(tmp_path, n_universal: int):
    """A run whose position family depends on the universal set: kurtosis < 2 for a third
    of the neurons, position MI > 0 for all."""
    rng = np.random.default_rng(7)
    n = 400
    table = pd.DataFrame({"layer": np.repeat([0, 1], n // 2),
                          "neuron": np.tile(np.arange(n // 2), 2),
                          "kurt": np.where(rng.uniform(size=n) < 1 / 3, 1.5, 4.0),
                          "excess_corr": rng.uniform(0, 0.45, n)})
    table.loc[rng.choice(n, n_universal, replace=False), "excess_corr"] = 0.7
    table["is_universal"] = table["excess_corr"] > 0.5
    vr = table[["layer", "neuron"]].assign(position_mi=rng.uniform(0.01, 0.3, n),
                                           fire_rate=0.5)
    run = tmp_path / "run"
    (run / "explanations").mkdir(parents=True)
    (run / "neurons").mkdir()
    vr.to_parquet(run / "explanations" / "m_vr.parquet")
    table.to_parquet(run / "neurons" / "m.parquet")
    _manifest(run)
    return run, table


def test_families_fall_back_to_top_five_percent(tmp_path):
    run, table = _family_run(tmp_path, n_universal=4)
    counts = run_families(FamiliesConfig(out=str(run), weights=False, plots=False))["m"]
    label = "top 5% by excess correlation: 20 neurons (only 4 pass 0.5)"
    assert set(counts.selection) == {label}
    top = np.zeros(len(table), dtype=bool)
    top[list(_top(table.excess_corr.to_numpy(), 5))] = True
    pos = counts.set_index("family").loc["position"]
    assert pos.n_selected == int((top & (table["kurt"] < 2)).sum()) > 0
    assert pos.n_universal == int((table.is_universal & (table["kurt"] < 2)).sum())
    assert math.isclose(pos.frac_selected, pos.n_selected / 20)
    saved = pd.read_csv(run / "families" / "m_counts.csv")
    assert list(saved.n_selected) == list(counts.n_selected) and set(saved.selection) == {label}
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["families"]["selection"] == {"m": label}


def test_families_no_fallback_with_enough_universal(tmp_path):
    run, _ = _family_run(tmp_path, n_universal=12)
    counts = run_families(FamiliesConfig(out=str(run), weights=False, plots=False))["m"]
    assert "selection" not in counts.columns and "n_selected" not in counts.columns


def test_select_neurons_universal_or_top_percent():
    import pandas as pd

    from universal_neurons.analysis.selection import select_neurons

    excess = np.random.default_rng(0).permutation(np.linspace(0.0, 0.6, 200))
    table = pd.DataFrame({"excess_corr": excess, "is_universal": excess > 0.5})
    n = int((excess > 0.5).sum())
    mask, label, fallback = select_neurons(table, 0.5)
    assert n >= 10 and not fallback and np.array_equal(mask, excess > 0.5)
    assert label == f"excess correlation > 0.5: {n} neurons"
    table["is_universal"] = excess >= np.sort(excess)[-4]  # 4 pass: the top 5% stand in
    mask, label, fallback = select_neurons(table, 0.5)
    assert fallback and np.array_equal(mask, excess >= np.sort(excess)[-10])  # 10 of 200
    assert label == "top 5% by excess correlation: 10 neurons (only 4 pass 0.5)"
    mask, _, fallback = select_neurons(table, 0.5, percent=0)  # fallback off
    assert not fallback and mask.sum() == 4
