"""The weights / stats / properties commands end to end on the tiny random GPT-2 suite."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from universal_neurons.analysis.neuron_table import CONTRACT_COLUMNS, stats_dir
from universal_neurons.cli import main
from universal_neurons.constants import neuron_table
from universal_neurons.engine.activation_stats_result import ActivationStatsResult


@pytest.fixture(scope="module")
def run_dir(tiny_suite, tmp_path_factory):
    """correlate (3 models), then weights and stats of the reference, in one run folder."""
    run = tmp_path_factory.mktemp("run")
    a, b, c = tiny_suite["models"]
    ds = tiny_suite["dataset"]
    assert main(["correlate", "--models", a, b, c, "--dataset", ds, "--out", str(run),
                 "--quiet"]) == 0
    assert main(["weights", "--model", a, "--out", str(run), "--top-k", "3", "--quiet"]) == 0
    assert main(["stats", "--model", a, "--dataset", ds, "--out", str(run), "--top-k", "4",
                 "--frequent-tokens", "20", "--batch-size", "7", "--quiet"]) == 0
    return run


def test_neuron_table_has_the_contract_columns(run_dir, tiny_suite):
    (table,) = (run_dir / "neurons").glob("*.parquet")
    df = pd.read_parquet(table)
    assert list(df.columns[:len(CONTRACT_COLUMNS)]) == list(CONTRACT_COLUMNS)
    assert len(df) == 2 * 64 and df[list(CONTRACT_COLUMNS)].notna().all().all()
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert {"weights", "stats", "correlate"} <= set(stages)


def test_stats_through_the_runner_equal_scipy_on_captured_activations(run_dir, tiny_suite):
    from universal_neurons.data.dataset import open_token_dataset
    from universal_neurons.data.tokens import keep_mask
    from universal_neurons.models.loading import load_model

    model = load_model(tiny_suite["models"][0])
    ds = open_token_dataset(tiny_suite["dataset"])
    tokens = np.asarray(ds.tokens, dtype=np.int64)
    keep = keep_mask(tokens, model.tokenizer)
    import torch

    acts = model.adapter.capture(torch.from_numpy(tokens), sites=("pre", "post"))
    pre = acts["pre"].permute(1, 2, 0, 3).reshape(*tokens.shape, -1).double().numpy()[keep]
    post = acts["post"].permute(1, 2, 0, 3).reshape(*tokens.shape, -1).numpy()[keep]
    res = ActivationStatsResult.load(stats_dir(run_dir, model.name) / "activation_stats.safetensors")
    assert res.n_tokens == keep.sum()
    np.testing.assert_allclose(res.mean.ravel(), pre.mean(0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.var.ravel(), pre.var(0), rtol=1e-5)
    np.testing.assert_allclose(res.skew.ravel(), stats.skew(pre, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res.kurt.ravel(), stats.kurtosis(pre, axis=0, fisher=False),
                               rtol=1e-5)
    np.testing.assert_array_equal(res.sparsity.ravel(), (post > 0).mean(0))
    np.testing.assert_allclose(res.top_values[..., 0].ravel(), post.max(0), rtol=1e-6)
    seq, pos = np.nonzero(keep)
    j = np.argmax(post[:, 5])
    assert (res.top_seq[0, 5, 0], res.top_pos[0, 5, 0]) == (seq[j], pos[j])
    assert 0 < len(res.token_ids) <= 20 and res.token_count.sum() <= keep.sum()


def test_properties_command_writes_claims(run_dir, capsys):
    assert main(["properties", str(run_dir), "--top-percent", "10", "--no-plots", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "activation frequency" in out
    claims = pd.read_csv(run_dir / "properties" / "claims.csv")
    assert len(claims) == 5 and set(claims.status) <= {"held", "not held"}
    assert (claims.n_universal == 13).all()  # ceil(10% of 128)


def test_stats_rejects_a_bad_sparsity_rule(run_dir, tiny_suite, capsys):
    code = main(["stats", "--model", tiny_suite["models"][0], "--out", str(run_dir),
                 "--dataset", tiny_suite["dataset"], "--sparsity-rule", "post<0", "--quiet"])
    assert code == 2 and "bad sparsity rule" in capsys.readouterr().err


def test_one_pass_shared_with_correlate(run_dir, tiny_suite, tmp_path):
    """ActivationStats as correlate's extra accumulators = the standalone stats pass."""
    from universal_neurons.data.dataset import open_token_dataset
    from universal_neurons.engine.activation_stats import (
        ActivationStatsConfig,
        activation_stats_for,
    )
    from universal_neurons.models.loading import load_model
    from universal_neurons.stages.correlate import CorrelateConfig, run_correlate

    models = [load_model(p) for p in tiny_suite["models"][:2]]
    ds = open_token_dataset(tiny_suite["dataset"])
    accs = activation_stats_for(models, ds, config=ActivationStatsConfig(top_k=4),
                                n_frequent_tokens=20)
    run_correlate(CorrelateConfig(models=tuple(tiny_suite["models"][:2]), out=str(tmp_path),
                                  dataset=tiny_suite["dataset"], progress=False),
                  extra_accumulators=accs, models=models)
    shared = accs[0].finalize()
    alone = ActivationStatsResult.load(stats_dir(run_dir, models[0].name)
                                       / "activation_stats.safetensors")
    assert shared.n_tokens == alone.n_tokens
    for k in ("mean", "var", "skew", "kurt"):
        np.testing.assert_allclose(getattr(shared, k), getattr(alone, k), rtol=1e-9, err_msg=k)
    for k in ("sparsity", "top_values", "token_ids", "token_count"):
        np.testing.assert_array_equal(getattr(shared, k), getattr(alone, k), err_msg=k)
    assert accs[1].finalize().n_tokens == alone.n_tokens  # the partner model too


def test_stats_from_python_is_the_command(run_dir, tiny_suite, tmp_path):
    """``run_stats(StatsConfig)`` with the fixture's flags writes what the command wrote."""
    from universal_neurons.stages.stats import StatsConfig, run_stats

    a = tiny_suite["models"][0]
    res = run_stats(StatsConfig(models=(a,), out=str(tmp_path), dataset=tiny_suite["dataset"],
                                top_k=4, frequent_tokens=20, batch_size=7, progress=False))
    (name,) = res.models
    mine = ActivationStatsResult.load(stats_dir(tmp_path, name) / "activation_stats.safetensors")
    cli = ActivationStatsResult.load(stats_dir(run_dir, name) / "activation_stats.safetensors")
    assert res.n_kept == mine.n_tokens == cli.n_tokens
    for k in ("mean", "var", "skew", "kurt", "sparsity", "top_values", "token_ids"):
        np.testing.assert_array_equal(getattr(mine, k), getattr(cli, k), err_msg=k)
    stage = json.loads((tmp_path / "manifest.json").read_text())["stages"]["stats"]
    cli_stage = json.loads((run_dir / "manifest.json").read_text())["stages"]["stats"]
    assert stage["config"] == cli_stage["config"] and stage["outputs"] == res.files


def test_correlate_with_stats_writes_both(run_dir, tiny_suite, tmp_path):
    from universal_neurons.stages.correlate import CorrelateConfig
    from universal_neurons.stages.stats import run_correlate_with_stats

    res = run_correlate_with_stats(CorrelateConfig(
        models=tuple(tiny_suite["models"][:2]), out=str(tmp_path),
        dataset=tiny_suite["dataset"], progress=False))
    name = res.models[0]
    shared = ActivationStatsResult.load(stats_dir(tmp_path, name) / "activation_stats.safetensors")
    alone = ActivationStatsResult.load(stats_dir(run_dir, name) / "activation_stats.safetensors")
    assert shared.n_tokens == alone.n_tokens == res.n_kept
    np.testing.assert_allclose(shared.mean, alone.mean, rtol=1e-9)
    table = pd.read_parquet(tmp_path / neuron_table(name))
    assert {"excess_corr", "mean", "sparsity"} <= set(table.columns)


def test_token_filter_paper_keeps_what_the_paper_keeps(tiny_suite, tmp_path):
    """``token_filter="paper"`` drops the pad/BOS token and the single newline token only:
    the kept count equals a direct count over the dataset's ids, for stats and correlate."""
    from universal_neurons.data.dataset import open_token_dataset
    from universal_neurons.stages.correlate import CorrelateConfig, run_correlate
    from universal_neurons.stages.stats import StatsConfig, run_stats

    tok = tiny_suite["tokenizer"]
    ds = open_token_dataset(tiny_suite["dataset"])
    ids = np.asarray(ds.tokens[:], dtype=np.int64)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    newline = [i for i in range(len(tok)) if tok.decode([i]) == "\n"]
    expected = int((~np.isin(ids, [pad, *newline])).sum())
    a, b = tiny_suite["models"][:2]
    paper = run_stats(StatsConfig(models=(a,), out=str(tmp_path / "s"), dataset=ds.path.as_posix(),
                                  token_filter="paper", progress=False))
    ours = run_stats(StatsConfig(models=(a,), out=str(tmp_path / "o"), dataset=ds.path.as_posix(),
                                 progress=False))
    assert paper.n_kept == expected and ours.n_kept <= paper.n_kept
    corr = run_correlate(CorrelateConfig(models=(a, b), out=str(tmp_path / "c"),
                                         dataset=ds.path.as_posix(), token_filter="paper",
                                         progress=False))
    manifest = json.loads((corr.rundir / "manifest.json").read_text())["stages"]["correlate"]
    assert manifest["tokens"]["kept_tokens"] == expected
