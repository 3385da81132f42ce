"""The paper index on synthetic run directories: each value read as re-derived here from the
synthetic tables, every required id listed, missing results with their reason."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from universal_neurons.analysis.paper_index import (
    PAPER_RESULT_IDS,
    REQUIRED_IDS,
    RESULTS,
    build_index,
)
from universal_neurons.stages.paper import DirFiles, PaperConfig, run_info, run_paper

IDS = ("universal_share", "corr_distributions", "universal_by_layer", "depth_specialisation",
       "property_percentiles", "property_claims", "raw_by_layer", "families", "unigram_roles",
       "alphabet", "position", "previous_token", "syntax", "source_neurons", "topic_neurons",
       "prediction_curves", "prediction_skew_late", "prediction_class_split",
       "prediction_conditional", "entropy_weights", "entropy_sweep", "entropy_pair",
       "attention_heuristic", "attention_path_ablation", "bos_value_ratio")
CLAIM_STATS = ("sparsity", "skew", "kurt", "input_bias", "l2_penalty")
LABEL = "top 5% by excess correlation: 40 neurons (only 3 pass 0.5)"


def _put(run: Path, rel: str, obj) -> None:
    p = run / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, pd.DataFrame):
        obj.to_csv(p, index=False) if p.suffix == ".csv" else obj.to_parquet(p)
    elif isinstance(obj, bytes):
        p.write_bytes(obj)
    else:
        p.write_text(json.dumps(obj))


def make_run(run: Path, rng: np.random.Generator, fallback: bool = True) -> dict:
    """A run of model ``m-a`` (3 layers x 256 neurons) with every existing stage's files."""
    n_layers, d = 3, 256
    layer = np.repeat(np.arange(n_layers), d)
    uni = np.zeros(n_layers * d, dtype=bool)
    uni[rng.choice(len(uni), 3, replace=False)] = True
    _put(run, "manifest.json", {"stages": {"correlate": {
        "models": ["m-a", "m-b"], "config": {"models": ["suite"], "threshold": 0.5}}}})
    _put(run, "neurons/m-a.parquet", pd.DataFrame({"layer": layer, "neuron": np.tile(
        np.arange(d), n_layers), "is_universal": uni, "excess_corr": rng.uniform(size=len(uni))}))
    _put(run, "plots/universal_by_layer.png", b"png")
    comp = pd.DataFrame({"model": "m-a", "statistic": list(CLAIM_STATS) * 2,
                         "pct_median_universal": rng.uniform(0, 100, 10),
                         "selection": ["excess correlation > 0.5: 3 neurons"] * 5 + [LABEL] * 5})
    _put(run, "properties/comparison.parquet", comp)
    _put(run, "properties/percentiles.parquet", pd.DataFrame({"layer": layer}))
    status = ["too few"] * 5 + ["held", "held", "not held", "held", "not held"]
    claims = pd.DataFrame({"model": "m-a", "statistic": list(CLAIM_STATS) * 2, "status": status,
                           "n_universal": [3] * 5 + [40] * 5,
                           "p_value": [0.5] * 5 + [1e-3, 2e-9, 0.3, 4e-2, 0.9],
                           "selection": comp["selection"]})
    _put(run, "properties/claims.parquet", claims if fallback else claims.iloc[:5])
    fams = ["unigram", "alphabet", "previous_token", "syntax", "position", "prediction",
            "suppression", "partition"]
    counts = pd.DataFrame({"family": fams, "n_neurons": rng.integers(0, 9, len(fams)),
                           "n_universal": rng.integers(0, 2, len(fams)),
                           "n_selected": rng.integers(0, 5, len(fams)), "selection": LABEL})
    _put(run, "families/m-a_counts.csv", counts)
    vr = pd.DataFrame({"layer": layer, "neuron": np.tile(np.arange(d), n_layers),
                       "position_mi": 0.0, "prev/unigram:x": rng.uniform(0, 0.6, len(layer)),
                       "sequence/pos:NOUN": rng.uniform(0, 0.5, len(layer))})
    for c in string.ascii_lowercase:
        vr[f"current/alpha:{c}"] = rng.uniform(0, 0.4, len(layer))
    _put(run, "explanations/m-a_vr.parquet", vr)
    _put(run, "plots/prediction_curves.png", b"png")
    sweep = pd.DataFrame({"group": ["clean"] + ["target"] * 3 + ["baseline"] * 4,
                          "neuron": ["", "L2.1", "L2.1", "L2.1", "L1.0", "L1.0", "L2.9", "L2.9"],
                          "value": [np.nan, 0, 3, 6, 0, 6, 0, 6],
                          "entropy": rng.uniform(3, 5, 8)})
    _put(run, "entropy/sweep.parquet", sweep)
    pairs = pd.DataFrame({"neuron_a": ["L2.1", "L2.2", "L1.3"], "neuron_b": ["L2.4", "L1.5", "L2.6"],
                          "cos": rng.uniform(-1, 1, 3)})
    _put(run, "entropy/candidate_pairs.parquet", pairs)
    _put(run, "attention/heuristic_summary.json", {"std": 0.3, "baseline_std": 0.2})
    _put(run, "attention/heuristic_top.parquet", pd.DataFrame({
        "model": "m-a", "pair": ["L0.1->L1.H0"], "score": [1.5], "score_over_baseline_std": [7.5]}))
    _put(run, "attention/path_ablation.parquet", pd.DataFrame({
        "model": "m-a", "pair": ["L0.1->L1.H0"], "n_tokens": [100], "norm_measure": "head_pct",
        "positions": "64-255", "corr_act_delta_bos_attn": [-0.4], "corr_act_delta_out_norm": [0.8]}))
    norms = pd.DataFrame({"model": "m-a", "layer": np.repeat([0, 1], 4), "head": np.tile(range(4), 2),
                          "ratio": rng.uniform(0.5, 20, 8)})
    _put(run, "attention/bos_value_norms.parquet", norms)
    # two results of the paper stage's producers: a scalar and a table (no figure)
    _put(run, "paper/corr_distributions.json", {"value": 0.42, "text": "median excess 0.42"})
    _put(run, "plots/paper_corr_distributions.png", b"png")
    _put(run, "paper/depth_specialisation.parquet", pd.DataFrame({
        "layer": [0, 1, 2], "selection": [None, "highest vocab_kurt (none above 10)", None]}))
    return {"uni": uni, "layer": layer, "comp": comp, "counts": counts, "vr": vr,
            "sweep": sweep, "pairs": pairs, "norms": norms}


def _index(run: Path) -> dict[str, dict]:
    from universal_neurons.rundir import RunDir

    entries = build_index(DirFiles(run), run_info(run, str(run), RunDir(run).manifest()))
    assert [e["id"] for e in entries] == list(IDS)
    return {e["id"]: e for e in entries}


def test_required_ids():
    assert REQUIRED_IDS == IDS
    produced = {r.id for r in RESULTS if r.stage == "paper-results"}
    assert produced == set(PAPER_RESULT_IDS) and len(produced) == 10


def test_values_match_the_synthetic_tables(tmp_path):
    t = make_run(tmp_path, np.random.default_rng(0))
    ix = _index(tmp_path)
    for e in ix.values():  # every file listed exists, relative to the run
        assert all((tmp_path / f).is_file() for f in e["files"]), e
    assert ix["universal_share"]["value"] == pytest.approx(100 * 3 / 768, abs=1e-4)
    by_layer = [100 * t["uni"][t["layer"] == k].mean() for k in range(3)]
    assert ix["universal_by_layer"]["value"] == ", ".join(f"L{k} {v:.2f}%"
                                                         for k, v in enumerate(by_layer))
    top = t["comp"][t["comp"].selection == LABEL].set_index("statistic")["pct_median_universal"]
    assert ix["property_percentiles"]["value"] == ", ".join(f"{s} {top[s]:.0f}" for s in CLAIM_STATS)
    claims = ix["property_claims"]
    assert claims["value"] == 3 and claims["selection"] == LABEL
    assert "3 of 5 claims held" in claims["text"] and "p from 0.04 to 2e-09" in claims["text"]
    assert ix["families"]["selection"] == LABEL
    assert ix["families"]["value"] == int((t["counts"].n_neurons > 0).sum())
    pos = t["counts"].set_index("family").loc["position"]
    assert ix["position"]["value"] == pos.n_neurons
    assert f"{pos.n_selected} among the {LABEL}" in ix["position"]["text"]
    best_prev = t["vr"]["prev/unigram:x"].max()
    assert f"best VR {best_prev:.3f}" in ix["previous_token"]["text"]
    # 3 universal neurons: the alphabet count is over the top 5% by excess (39 of 768)
    table = pd.read_parquet(tmp_path / "neurons/m-a.parquet")
    top = table.sort_values("excess_corr", ascending=False, kind="stable").head(39)
    sel = t["vr"].merge(top[["layer", "neuron"]], on=["layer", "neuron"])
    letters = sum(sel[f"current/alpha:{c}"].max() > 0.37 for c in string.ascii_lowercase)
    every = sum(t["vr"][f"current/alpha:{c}"].max() > 0.37 for c in string.ascii_lowercase)
    assert ix["alphabet"]["value"] == letters and ix["alphabet"]["paper_value"] == 18
    assert ix["alphabet"]["selection"].startswith("top 5% by excess correlation: 39 neurons")
    assert ix["alphabet"]["text"].endswith(f"among all explained neurons {every}")
    sw = t["sweep"]
    want = sw.entropy[(sw.neuron == "L2.1") & (sw.value == 6)].iloc[0] - sw.entropy.iloc[0]
    assert ix["entropy_sweep"]["value"] == pytest.approx(want, abs=1e-6)
    assert ix["entropy_pair"]["value"] == pytest.approx(t["pairs"].cos.min(), abs=1e-6)
    assert ix["bos_value_ratio"]["value"] == pytest.approx(np.median(t["norms"].ratio), abs=1e-6)
    assert ix["bos_value_ratio"]["paper_value"] == 19.4
    assert ix["attention_heuristic"]["value"] == 7.5
    assert ix["attention_path_ablation"]["value"] == 0.8
    assert ix["attention_path_ablation"]["notes"] == ["paper/attention_panel.parquet missing "
                                                      "(the paper's panel)"]
    cd = ix["corr_distributions"]
    assert (cd["status"], cd["value"], cd["text"]) == ("computed", 0.42, "median excess 0.42")
    assert cd["files"] == ["paper/corr_distributions.json", "plots/paper_corr_distributions.png"]
    ds = ix["depth_specialisation"]
    assert ds["status"] == "computed" and ds["notes"] == ["plots/paper_depth_specialisation.png missing"]
    assert ds["selection"] == "highest vocab_kurt (none above 10)"
    assert ds["text"] == "3 rows in paper/depth_specialisation.parquet"
    assert ds["command"] == f"universal-neurons paper-results --out {tmp_path}"
    assert ix["universal_share"]["command"] == "universal-neurons correlate --models suite --out " \
        f"{tmp_path} --stats"


def test_missing_results_say_why(tmp_path):
    make_run(tmp_path, np.random.default_rng(1), fallback=False)
    for rel in ("entropy/sweep.parquet", "entropy/candidate_pairs.parquet",
                "attention/bos_value_norms.parquet"):
        (tmp_path / rel).unlink()
    (tmp_path / "pipeline.json").write_text(json.dumps({"config": {"skip": ["entropy"]}}))
    manifest = json.loads((tmp_path / "manifest.json").read_text())  # as paper-results records
    manifest["stages"]["paper_results"] = {"results": {"unigram_roles": "written",
                                                       "source_neurons": "not a bundled dataset"}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    ix = _index(tmp_path)
    assert ix["property_claims"]["status"] == "not computed"
    assert ix["property_claims"]["reason"] == "needs >= 10 universal neurons (only 3 pass 0.5)"
    assert ix["entropy_sweep"]["reason"] == "stage entropy skipped (entropy/sweep.parquet missing)"
    assert ix["bos_value_ratio"]["reason"] == "attention/bos_value_norms.parquet missing"
    assert ix["unigram_roles"]["reason"] == "paper/unigram_roles.parquet missing"
    assert ix["source_neurons"]["reason"] == ("paper/source_neurons.parquet missing "
                                              "(paper-results: not a bundled dataset)")
    for e in ix.values():
        assert (e["status"] == "computed") == (e["reason"] is None), e
        assert e["status"] == "computed" or (e["value"] is None and e["reason"])


def test_an_empty_run_lists_every_result(tmp_path):
    (tmp_path / "run").mkdir()
    ix = _index(tmp_path / "run")
    assert {e["status"] for e in ix.values()} == {"not computed"}
    assert ix["universal_share"]["reason"].startswith("no reference model")


def test_stage_writes_json_and_markdown(tmp_path):
    make_run(tmp_path, np.random.default_rng(2))
    res = run_paper(PaperConfig(out=str(tmp_path)))
    js = json.loads((tmp_path / "paper" / "index.json").read_text())
    assert [e["id"] for e in js["results"]] == list(IDS) and js["reference"] == "m-a"
    md = (tmp_path / "paper" / "index.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == list(IDS)
    assert all(r.count(" | ") == 5 for r in rows)  # no cell broke the table
    assert res.computed == sum(e["status"] == "computed" for e in js["results"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["paper"]["outputs"] == ["paper/index.json", "paper/index.md"]
    assert math.isclose(js["results"][0]["value"], 100 * 3 / 768, abs_tol=1e-4)


def test_alphabet_counts_universal_neurons_only(tmp_path):
    """The paper's 18 of 26: letters with a *universal* neuron above the VR cut."""
    t = make_run(tmp_path, np.random.default_rng(1))
    table = pd.read_parquet(tmp_path / "neurons/m-a.parquet")
    uni = np.zeros(len(table), dtype=bool)
    uni[np.arange(0, len(table), 50)] = True  # 16 universal neurons: no fallback
    table["is_universal"] = uni
    table.to_parquet(tmp_path / "neurons/m-a.parquet")
    vr = t["vr"].copy()
    rng = np.random.default_rng(2)
    for c in string.ascii_lowercase:  # below the cut, but for a few universal neurons
        vr[f"current/alpha:{c}"] = rng.uniform(0, 0.3, len(vr))
    vr.loc[rng.choice(np.flatnonzero(uni), 5), "current/alpha:e"] = 0.5
    vr.loc[1, "current/alpha:q"] = 0.9  # a strong non-universal q neuron does not count
    vr.loc[50, "current/alpha:z"] = 0.8  # a universal z neuron does
    vr.to_parquet(tmp_path / "explanations/m-a_vr.parquet")
    ix = _index(tmp_path)
    sel = vr[uni]
    want = [c for c in string.ascii_lowercase if sel[f"current/alpha:{c}"].max() > 0.37]
    assert want == ["e", "z"]
    assert ix["alphabet"]["value"] == len(want) and ix["alphabet"]["selection"] is None
    assert f"({''.join(want)})" in ix["alphabet"]["text"]
