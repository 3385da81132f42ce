"""The correlate stage end to end on tiny random GPT-2 suites, against brute-force numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from correlate_helpers import (
    assert_hists_agree,
    brute_force_table,
    captured,
    corr64,
    nanmax_rows,
    tiling_budget,
)

from helpers import Killed, kill_after
from universal_neurons.errors import UserError
from universal_neurons.stages.correlate import CorrelateConfig, run_correlate

NAMES = ["ma", "mb", "mc"]


def config(suite, out, **kw) -> CorrelateConfig:
    kw.setdefault("dataset", suite["dataset"])
    return CorrelateConfig(models=tuple(suite["models"]), out=str(out), progress=False, **kw)


@pytest.fixture(scope="module")
def acts(tiny_suite):
    return captured(tiny_suite)


@pytest.fixture(scope="module")
def reference_run(tiny_suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("run-ref")
    return run_correlate(config(tiny_suite, out, rows_per_gemm=256)), out


def tables_close(t1, t2, atol=1e-6):
    assert list(t1.columns) == list(t2.columns)
    for c in t1.columns:
        if t1[c].dtype.kind == "f":
            np.testing.assert_allclose(t1[c], t2[c], atol=atol, rtol=0)
        else:
            assert list(t1[c]) == list(t2[c]), c


def test_reference_run_matches_brute_force(reference_run, acts, tiny_suite):
    import pandas as pd
    from safetensors.torch import load_file

    result, out = reference_run
    shapes = {n: (2, 64) for n in NAMES}
    want = brute_force_table(acts, shapes, "ma", ["mb", "mc"])
    table = pd.read_parquet(out / "neurons" / "ma.parquet")
    assert list(table.columns[:10]) == ["layer", "neuron", "max_corr", "mean_corr", "min_corr",
                                        "max_baseline", "mean_baseline", "min_baseline",
                                        "excess_corr", "is_universal"]
    for col in ("max_corr", "mean_corr", "min_corr", "mean_baseline", "excess_corr"):
        np.testing.assert_allclose(table[col], want[col], atol=1e-4)
    sure = np.abs(want["excess_corr"] - 0.5) > 1e-4
    np.testing.assert_array_equal(table["is_universal"][sure], want["is_universal"][sure])
    assert 0 < table["is_universal"].sum() < len(table)  # the suite has both kinds
    best = corr64(acts["ma"], acts["mb"]).argmax(1)
    assert list(table["mb_best"]) == [f"L{j // 64}.{j % 64}" for j in best]
    assert (out / "neurons" / "ma.csv").exists() and not (out / "neurons" / "mb.parquet").exists()
    # both directions of each pair, one matrix
    back = load_file(out / "correlations" / "mb__ma.safetensors")
    np.testing.assert_allclose(back["max"], nanmax_rows(corr64(acts["mb"], acts["ma"])), atol=1e-4)
    fwd = load_file(out / "correlations" / "ma__mc.safetensors")
    assert fwd["hist"].shape == (128, 100) and (fwd["hist"].sum(1) == 128).all()
    assert fwd["top_indices"].shape == (128, 10)
    manifest = json.loads((out / "manifest.json").read_text())["stages"]["correlate"]
    assert manifest["seeds"]["rotation"] == 0
    assert manifest["tokens"]["kept_tokens"] == len(acts["ma"]) == result.n_kept
    assert manifest["plan"]["n_passes"] == 1 and "pass0_stream_s" in manifest["timings"]


def test_all_pairs_site_pre_and_keep_tokens(tiny_suite, tmp_path):
    acts = captured(tiny_suite, site="pre", keep_all=True)
    res = run_correlate(config(tiny_suite, tmp_path, all_pairs=True, site="pre",
                               keep_tokens=True, baseline="gaussian-rows", seed=3))
    assert set(res.tables) == set(NAMES)
    assert res.n_kept == res.n_tokens == len(acts["ma"])
    shapes = {n: (2, 64) for n in NAMES}
    want = brute_force_table(acts, shapes, "mb", ["ma", "mc"], kind="gaussian-rows", seed=3)
    np.testing.assert_allclose(res.tables["mb"]["excess_corr"], want["excess_corr"], atol=1e-4)
    np.testing.assert_allclose(res.tables["mb"]["ma_corr"], want["per_partner"][:, 0], atol=1e-4)


def test_tiled_run_equals_single_pass(reference_run, acts, tiny_suite, tmp_path):
    single, _ = reference_run
    p = single.plan
    tiled = run_correlate(config(tiny_suite, tmp_path, rows_per_gemm=256,
                                 max_memory=tiling_budget(p, keep=0.3)))
    assert tiled.plan.n_passes > 1
    # the budget cuts through a layer's partners: column tiles are exercised too
    assert any(b.col_layer_stop is not None for p in tiled.plan.passes for b in p)
    tables_close(tiled.tables["ma"], single.tables["ma"])
    for key, f in single.summaries.items():
        for name in ("max", "baseline_max", "mean", "kurt"):
            np.testing.assert_allclose(tiled.summaries[key][name], f[name], atol=1e-6,
                                       rtol=1e-5 if name == "kurt" else 0)
        assert_hists_agree(tiled.summaries[key]["hist"], f["hist"],
                           corr64(acts[key[0]], acts[key[1]]))





@pytest.mark.parametrize("tiled", [False, True])
def test_resume_after_kill_equals_uninterrupted(tiny_suite, tmp_path, monkeypatch, tiled):
    kw = {"rows_per_gemm": 100, "batch_size": 4, "checkpoint_every": 128}
    straight = run_correlate(config(tiny_suite, tmp_path / "straight", **kw))
    if tiled:
        p = straight.plan
        kw["max_memory"] = tiling_budget(p)
        straight = run_correlate(config(tiny_suite, tmp_path / "straight", **kw))
        assert straight.plan.n_passes >= 2
    per_pass = -(-48 // straight.plan.batch_size)  # batches per pass over the 48 sequences
    out = tmp_path / "killed"
    with monkeypatch.context() as mp:
        kill_after(mp, 7 + per_pass * tiled)  # dies in pass 0, or in pass 1
        with pytest.raises(Killed):
            run_correlate(config(tiny_suite, out, **kw))
    assert (out / "checkpoints" / "correlate.pt").exists()
    assert not (out / "manifest.json").exists() and not (out / "neurons").exists()
    resumed = run_correlate(config(tiny_suite, out, **kw))
    assert not (out / "checkpoints" / "correlate.pt").exists()
    assert resumed.n_kept == straight.n_kept
    tables_close(resumed.tables["ma"], straight.tables["ma"], atol=0)


def test_checkpoint_from_another_config_is_refused(tiny_suite, tmp_path, monkeypatch):
    kw = {"batch_size": 4, "checkpoint_every": 128}
    with monkeypatch.context() as mp:
        kill_after(mp, 5)
        with pytest.raises(Killed):
            run_correlate(config(tiny_suite, tmp_path, **kw))
    with pytest.raises(UserError, match="another configuration.*seed"):
        run_correlate(config(tiny_suite, tmp_path, seed=1, **kw))
    res = run_correlate(config(tiny_suite, tmp_path, seed=1, restart=True, **kw))
    assert res.n_kept > 0


def test_extra_accumulators_see_every_kept_token_once(tiny_suite, tmp_path, reference_run):
    class Counter:
        sites = ("pre",)

        def __init__(self):
            self.seen: list[int] = []

        def update(self, batch):
            assert set(batch.acts["ma"]) == {"pre", "post"}
            self.seen += batch.seq_index.tolist()

        def merge(self, other):
            self.seen += other.seen

        def finalize(self):
            return len(self.seen)

        def state_dict(self):
            return {"seen": list(self.seen)}

        def load_state_dict(self, sd):
            self.seen = list(sd["seen"])

    p = reference_run[0].plan
    counter = Counter()
    res = run_correlate(config(tiny_suite, tmp_path, rows_per_gemm=256,
                               max_memory=tiling_budget(p)), [counter])
    assert res.plan.n_passes > 1
    assert counter.finalize() == res.n_kept


@pytest.mark.parametrize("case", ["tokenizers", "dataset", "single", "memory"])
def test_bad_input_is_one_line_and_writes_nothing(case, tiny_suite, other_tokenizer_suite,
                                                  tmp_path, capsys):
    from universal_neurons.cli import main

    models = list(tiny_suite["models"])
    args = ["--dataset", tiny_suite["dataset"]]
    expect = {"tokenizers": "different tokenizers", "dataset": "another tokenizer",
              "single": "at least two models", "memory": "too small"}[case]
    if case == "tokenizers":
        models.append(other_tokenizer_suite["model"])
    elif case == "dataset":
        args = ["--dataset", other_tokenizer_suite["dataset"]]
    elif case == "single":
        models = models[:1]
    else:
        args += ["--max-memory", "100k"]
    out = tmp_path / "run"
    code = main(["correlate", "--models", *models, "--out", str(out), "--quiet", *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(err) == 1 and err[0].startswith("universal-neurons correlate: error:"), err
    assert expect in err[0]
    assert not (out / "manifest.json").exists() and not (out / "neurons").exists()
    assert not (out / "correlations").exists()
    with pytest.raises(UserError, match=expect):
        run_correlate(CorrelateConfig(models=tuple(models), out=str(out), progress=False,
                                      dataset=args[1], max_memory=args[3] if len(args) > 2
                                      else None))
