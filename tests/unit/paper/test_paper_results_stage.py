"""The ``paper-results`` stage on a small synthetic run of the bundled tiny-gpt2-a: every
result written (table + figure), counts checked against the dataset, and skipped results
that name their reason and write nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from universal_neurons.constants import (
    FIG_PAPER,
    PAPER_RESULTS,
    figure_section,
)
from universal_neurons.stages.paper_results import WRITTEN, PaperResultsConfig, run_paper_results

MODEL = "tiny-gpt2-a"
N_LAYERS, D_MLP = 4, 512


def _neuron_table(rng: np.random.Generator, reference: bool) -> pd.DataFrame:
    n = N_LAYERS * D_MLP
    t = pd.DataFrame({"layer": np.repeat(np.arange(N_LAYERS), D_MLP),
                      "neuron": np.tile(np.arange(D_MLP), N_LAYERS)})
    for s in ("mean", "var", "skew", "kurt", "sparsity", "w_in_norm", "w_out_norm",
              "vocab_var", "vocab_skew"):
        t[s] = rng.normal(size=n)
    t["vocab_kurt"] = rng.uniform(2.0, 6.0, n)
    t.loc[[2000, 2001, 1500], "vocab_kurt"] = [30.0, 25.0, 12.0]
    t.loc[[2000, 2001, 1500], "vocab_skew"] = [2.0, -1.5, 1.0]
    if reference:
        t["mean_corr"] = rng.uniform(0.2, 0.9, n)
        t["mean_baseline"] = rng.uniform(0.1, 0.4, n)
        t["excess_corr"] = t["mean_corr"] - t["mean_baseline"]
        t["is_universal"] = t["excess_corr"] > 0.6
        t["tiny-gpt2-b_best"] = [f"L{rng.integers(N_LAYERS)}.{rng.integers(D_MLP)}"
                                 for _ in range(n)]
    return t


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory):
    from universal_neurons.data.dataset import build_token_dataset
    from universal_neurons.models.loading import load_model

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("paper")
    run = root / "run"
    for d in ("neurons", "explanations", "entropy", "attention"):
        (run / d).mkdir(parents=True)
    _neuron_table(rng, True).to_parquet(run / "neurons" / f"{MODEL}.parquet")
    _neuron_table(rng, False).to_parquet(run / "neurons" / "tiny-gpt2-b.parquet")
    vr = pd.DataFrame({"layer": np.repeat(np.arange(N_LAYERS), D_MLP),
                       "neuron": np.tile(np.arange(D_MLP), N_LAYERS)})
    for f in ("the", "(", "of"):
        vr[f"current/unigram:{f}"] = rng.uniform(0, 0.4, len(vr)).astype(np.float32)
    vr.loc[5, "current/unigram:the"] = 0.8
    for f in ("lord_god_israel", "python_module_class"):
        vr[f"current/topic:{f}"] = rng.uniform(0, 0.05, len(vr)).astype(np.float32)
    vr.loc[[700, 9], "current/topic:python_module_class"] = [0.7, 0.45]  # topic neurons
    vr.loc[5, "current/topic:lord_god_israel"] = 0.6  # below its unigram: not a topic neuron
    vr.to_parquet(run / "explanations" / f"{MODEL}_vr.parquet")
    cand = pd.DataFrame({"model": MODEL, "layer": 3, "neuron": np.arange(D_MLP),
                         "w_out_norm": rng.uniform(size=D_MLP), "vocab_var": rng.uniform(size=D_MLP),
                         "null_frac": rng.uniform(size=D_MLP)})
    cand["neuron_name"] = [f"L3.{i}" for i in range(D_MLP)]
    cand.to_parquet(run / "entropy" / "candidates.parquet")
    pd.DataFrame({"group": ["clean", "target", "target"], "neuron": ["", "L3.7", "L3.7"],
                  "value": [np.nan, -0.17, 1.0], "entropy": [4.0, 4.5, 3.0],
                  "loss": [3.0, 3.1, 3.2]}).to_parquet(run / "entropy" / "sweep.parquet")
    pd.DataFrame({"pair": ["L1.2->L2.H0"] * 50, "act": rng.normal(size=50),
                  "delta_bos_attn": rng.normal(size=50), "delta_out_norm": rng.normal(size=50)}
                 ).to_parquet(run / "attention" / "path_ablation_points.parquet")
    pd.DataFrame({"pair": ["L1.2->L2.H0"], "mean_bos_attn": [0.3], "norm_measure": ["head_pct"]}
                 ).to_parquet(run / "attention" / "path_ablation.parquet")
    tok = load_model(MODEL).tokenizer
    ds = build_token_dataset("bundled:test", tok, root / "ds", n_ctx=64, tokens=64 * 12,
                             show_progress=False)
    return run, ds, tok


def test_every_result_written(synthetic_run):
    from universal_neurons.data.tokens import keep_mask

    run, ds, tok = synthetic_run
    status = run_paper_results(PaperResultsConfig(out=str(run), dataset=str(ds.path),
                                                  tokens=64 * 10, top_neurons=3,
                                                  progress=False))
    assert status == dict.fromkeys(PAPER_RESULTS, WRITTEN)
    for result in PAPER_RESULTS:
        assert (run / "paper" / f"{result}.parquet").is_file()
        assert (run / "plots" / FIG_PAPER.format(result=result)).is_file()
    rows = np.array([0, 1, 2, 4, 5, 6, 7, 9, 10, 11])  # 10 of the 12 windows, evenly spread:
    assert np.allclose(rows, np.linspace(0, 11, 10), atol=0.5)  # round(linspace(0, 11, 10))
    kept = keep_mask(np.asarray(ds.tokens[rows], dtype=np.int64), tok)
    src = pd.read_parquet(run / "paper" / "source_neurons.parquet")
    one = src[(src["layer"] == 0) & (src["neuron"] == 0)]
    assert one["n"].sum() == kept.sum()  # every kept token has a source
    cond = pd.read_parquet(run / "paper" / "prediction_conditional.parquet")
    assert cond["neuron_name"].tolist() == ["L3.464", "L3.465", "L2.476"]  # by vocab kurtosis
    assert cond["prediction_class"].tolist() == ["prediction", "suppression", "prediction"]
    n_known = (kept[:, :-1]).sum()  # rows whose next token is in the window
    assert ((cond["n_in"] + cond["n_out"]) == n_known).all()
    roles = pd.read_parquet(run / "paper" / "unigram_roles.parquet")
    assert set(roles["neuron_name"]) == {"L0.5"} and roles["n"].sum() == kept.sum()
    split = pd.read_parquet(run / "paper" / "prediction_class_split.parquet")
    assert (split["vr"].between(0, 1)).all() and set(split["rank"]) == {0, 1, 2, 3, 4}
    _check_topic_neurons(run, ds, tok, rows, kept)
    ent = pd.read_parquet(run / "paper" / "entropy_weights.parquet").set_index("neuron_name")
    assert ent["is_entropy"].sum() == 1 and abs(ent.loc["L3.7", "d_entropy_at_min"] - 0.5) < 1e-12
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["paper_results"]["results"] == status


def _check_topic_neurons(run, ds, tok, rows, kept) -> None:
    """The topic table against activations captured directly, grouped by token id."""
    import torch

    from universal_neurons.analysis.features import surface_strings
    from universal_neurons.models.loading import load_model

    top = pd.read_parquet(run / "paper" / "topic_neurons.parquet")
    first = top.drop_duplicates("neuron_name")
    assert first["neuron_name"].tolist() == ["L1.188", "L0.9"]  # by topic VR; L0.5: unigram
    assert first["is_topic"].all() and first["feature"].tolist() == ["topic:python_module_class"] * 2
    table = pd.read_parquet(run / "neurons" / f"{MODEL}.parquet").set_index(["layer", "neuron"])
    for r in first.itertuples():
        assert r.excess_corr == pytest.approx(table.loc[(r.layer, r.neuron), "excess_corr"])
    model = load_model(MODEL)
    tokens = np.asarray(ds.tokens[rows], dtype=np.int64)
    acts = model.adapter.capture(torch.from_numpy(tokens))["post"]  # [L, n, ctx, d_mlp]
    strings = surface_strings(tok)
    for (layer, neuron), rows in top.groupby(["layer", "neuron"], sort=False):
        a = acts[layer, :, :, neuron].double().numpy()[kept]
        g = pd.DataFrame({"t": tokens[kept], "a": a}).groupby("t")["a"].agg(["size", "mean"])
        g = g[g["size"] >= 20].sort_values(["mean"], ascending=False).head(10)
        assert rows["token_id"].tolist() == g.index.tolist()
        np.testing.assert_allclose(rows["mean"], g["mean"], rtol=0, atol=1e-5)
        peak = g["mean"].max()  # the paper's colour; undefined when no mean is positive
        want = g["mean"] / peak if peak > 0 else np.full(len(g), np.nan)
        np.testing.assert_allclose(rows["mean_norm"], want, atol=1e-5)
        assert rows["count"].tolist() == g["size"].tolist()
        assert rows["token"].tolist() == [strings[t] for t in g.index]


def test_missing_inputs_are_skipped_with_reasons(tmp_path):
    run = tmp_path / "run"
    (run / "neurons").mkdir(parents=True)
    t = _neuron_table(np.random.default_rng(1), False)
    t.to_parquet(run / "neurons" / "m.parquet")
    (run / "attention").mkdir()
    for name in ("path_ablation_points", "path_ablation"):  # damaged: no measurement columns
        pd.DataFrame({"pair": ["x"]}).to_parquet(run / "attention" / f"{name}.parquet")
    status = run_paper_results(PaperResultsConfig(out=str(run), model="no-such-model",
                                                  progress=False))
    assert status["prediction_skew_late"] == WRITTEN
    skipped = {r: s for r, s in status.items() if s != WRITTEN}
    assert set(skipped) == set(PAPER_RESULTS) - {"prediction_skew_late"}
    assert "correlation" in skipped["corr_distributions"]
    assert "entropy" in skipped["entropy_weights"]
    assert "no-such-model" in skipped["source_neurons"]
    assert skipped["attention_panel"].startswith("failed: KeyError")
    for result in skipped:
        assert not (run / "paper" / f"{result}.parquet").exists()
        assert not (run / "plots" / FIG_PAPER.format(result=result)).exists()


def test_paper_figures_have_report_sections():
    for result, section in PAPER_RESULTS.items():
        assert figure_section(FIG_PAPER.format(result=result)) == section


def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys):
    from universal_neurons.cli import main

    assert main(["paper-results", "--out", str(tmp_path / "none")]) == 2
    assert "neurons/" in capsys.readouterr().err
    (tmp_path / "run" / "neurons").mkdir(parents=True)
    assert main(["paper-results", "--out", str(tmp_path / "run"), "--top-neurons", "0"]) == 2
    err = capsys.readouterr().err
    assert "top_neurons" in err and len(err.strip().splitlines()) == 1


def test_the_pass_sees_every_source_of_the_dataset(tmp_path):
    """The streamed windows are spread over the whole dataset: every corpus source in it has
    rows in source_neurons, also one that the same number of first windows never reach."""
    from universal_neurons.data.dataset import build_token_dataset
    from universal_neurons.data.token_sources import bundled_records, token_sources
    from universal_neurons.models.loading import load_model

    tok = load_model(MODEL).tokenizer
    ds = build_token_dataset("bundled:test", tok, tmp_path / "ds", n_ctx=16,
                             show_progress=False)  # the whole split: every source
    present = {s for s, _ in bundled_records("test")}
    run = tmp_path / "run"
    (run / "neurons").mkdir(parents=True)
    _neuron_table(np.random.default_rng(2), True).to_parquet(run / "neurons" / f"{MODEL}.parquet")
    # 1,000 windows of 15 tokens every ~52 windows (~780 tokens): each document of the
    # Devil's Dictionary (5, of 1,519 to 2,980 tokens) holds one
    n_windows = 1000
    status = run_paper_results(PaperResultsConfig(out=str(run), dataset=str(ds.path),
                                                  tokens=16 * n_windows, batch_size=125,
                                                  plots=False,
                                                  progress=False))
    assert status["source_neurons"] == WRITTEN
    src = pd.read_parquet(run / "paper" / "source_neurons.parquet")
    assert set(src["source"]) == present and (src.groupby("source")["n"].first() > 0).all()
    first, names = token_sources(ds, tok, n_windows)  # what the first windows hold
    assert {names[i] for i in np.unique(first[first >= 0])} < present
