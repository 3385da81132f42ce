"""The trajectory stage on a tiny suite trained with the zoo: each checkpoint equals the
correlate stage run on its own, and the tables follow the neurons across checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from universal_neurons.zoo import train
from universal_neurons.zoo.tokenizer import train_tokenizer

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "The quick brown fox jumps over the lazy dog. 1234 <tag> & ampersand",
    "def f(x):\n    return x ** 2  # a Python function\n",
    "hacker, n.: a person who enjoys exploring the details of programmable systems.",
] * 20
STEP_TOKENS = 4 * 16  # batch 4 x context 16
SNAPSHOTS = (2 * STEP_TOKENS, 4 * STEP_TOKENS)
MAX_TOKENS = 2_048
"""Test tokens correlated per checkpoint (engine tolerance: docs/engine.md, fp32 <= 1e-4)."""


def tiny_config(**kw) -> train.TrainConfig:
    base = dict(suite="t", seeds=(0, 1, 2), n_layer=2, d_model=16, d_mlp=24, n_head=2,
                n_ctx=16, tokens=6 * STEP_TOKENS, batch_size=4, warmup_steps=2,
                compile=False, autocast_bf16=False, checkpoint_every=2 * STEP_TOKENS,
                snapshot_tokens=SNAPSHOTS, eval_tokens=64, restart_tokens=())
    return train.TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> tuple[Path, train.TrainConfig]:
    """A zoo work folder: tokenizer/ and members/t-{a,b,c}/ with two snapshots each."""
    from transformers import AutoTokenizer

    work = tmp_path_factory.mktemp("zoo")
    train_tokenizer(TEXTS, work / "tokenizer", vocab_size=512)
    tok = AutoTokenizer.from_pretrained(str(work / "tokenizer"))
    ids = [t for s in TEXTS for t in [0] + tok(s)["input_ids"]]
    stream = np.array(ids * 3, dtype=np.uint16)
    np.save(work / "train_tokens.npy", stream)
    np.save(work / "test_tokens.npy", stream[:400])
    cfg = tiny_config()
    for i in range(len(cfg.seeds)):
        train.train_member(cfg, i, work, work / "train_tokens.npy", work / "test_tokens.npy",
                           work / "tokenizer", show_progress=False)
    return work, cfg


THRESHOLD = 0.03
"""Low enough that some neurons of these barely trained models count as universal."""


def members(work: Path, cfg: train.TrainConfig) -> tuple[str, ...]:
    return tuple(str(work / "members" / m) for m in cfg.member_names())


def trajectory_config(work: Path, cfg: train.TrainConfig, out: Path, **kw):
    from universal_neurons.stages.trajectory import TrajectoryConfig

    options = dict(checkpoints=tuple(f"snapshots/tokens-{t}" for t in SNAPSHOTS),
                   tokenizer=str(work / "tokenizer"), max_tokens=MAX_TOKENS,
                   threshold=THRESHOLD, progress=False)
    return TrajectoryConfig(models=members(work, cfg), out=str(out), **{**options, **kw})


@pytest.fixture(scope="module")
def done(suite, tmp_path_factory):
    from universal_neurons.stages.trajectory import run_trajectory

    work, cfg = suite
    out = tmp_path_factory.mktemp("traj") / "run"
    return work, cfg, out, run_trajectory(trajectory_config(work, cfg, out))


def test_each_checkpoint_equals_correlate_run_on_its_own(done, tmp_path):
    """Oracle: every member's snapshot exported as a stand-alone HF folder (zoo export, with
    its own tokenizer) and correlated by the correlate stage in a separate run."""
    from universal_neurons.stages.correlate import CorrelateConfig, run_correlate
    from universal_neurons.zoo.export import export_member, snapshot_card

    work, cfg, out, result = done
    assert result.computed == [f"tokens-{t}" for t in SNAPSHOTS]
    neurons = pd.read_parquet(out / "trajectory" / "neurons.parquet")
    n = cfg.n_layer * cfg.d_mlp
    assert len(neurons) == n * len(SNAPSHOTS)
    for tokens in SNAPSHOTS:
        folders = []
        for m in cfg.member_names():
            card, src = snapshot_card(cfg, work / "members" / m, tokens)
            folders.append(str(export_member(src, card, work / "tokenizer",
                                             tmp_path / f"{tokens}" / m)))
        alone = run_correlate(CorrelateConfig(models=tuple(folders), out=str(tmp_path / "c"),
                                              max_tokens=MAX_TOKENS, threshold=THRESHOLD,
                                              progress=False)).tables["t-a"]
        mine = neurons[neurons["tokens"] == tokens].sort_values(["layer", "neuron"])
        assert list(mine["checkpoint"].unique()) == [f"tokens-{tokens}"]
        a, b = mine["excess_corr"].to_numpy(), alone["excess_corr"].to_numpy()
        assert np.array_equal(np.isnan(a), np.isnan(b))
        assert np.nanmax(np.abs(a - b)) <= 1e-4  # fp32 engine bound (docs/engine.md)
        clear = np.abs(b - THRESHOLD) > 1e-4
        assert (mine["is_universal"].to_numpy()[clear] == (b[clear] > THRESHOLD)).all()
        np.testing.assert_allclose(mine["mean_baseline"], alone["mean_baseline"], atol=1e-4)


def test_tables_follow_each_neuron_across_checkpoints(done):
    _, cfg, out, result = done
    neurons = pd.read_parquet(out / "trajectory" / "neurons.parquet")
    summary = pd.read_parquet(out / "trajectory" / "summary.parquet")
    assert list(summary["tokens"]) == list(SNAPSHOTS)
    assert summary["kept_tokens"].min() > 0
    wide = neurons.pivot(index=["layer", "neuron"], columns="tokens", values="is_universal")
    early, late = wide[SNAPSHOTS[0]], wide[SNAPSHOTS[1]]
    assert 0 < late.sum() < len(late)  # the test threshold leaves both kinds
    # written differently from analysis.trajectory: boolean algebra on the two columns
    first = np.where(early, str(f"tokens-{SNAPSHOTS[0]}"),
                     np.where(late, f"tokens-{SNAPSHOTS[1]}", ""))
    got = neurons[neurons["tokens"] == SNAPSHOTS[0]].set_index(["layer", "neuron"])
    assert list(got["first_universal"].fillna("")) == list(first)
    assert list(got["stays_universal"]) == list(early & late | ~early & late)
    row = summary.iloc[0]
    assert row.n_emerged == early.sum()
    assert summary.iloc[1].n_emerged == (late & ~early).sum()
    if early.sum():
        assert row.persistence_rate == pytest.approx((early & late).sum() / early.sum())
        assert row.precision_last == pytest.approx((early & late).sum() / early.sum())
    assert row.recall_last == pytest.approx((early & late).sum() / late.sum())
    for fig in ("trajectory_universality.png", "trajectory_prediction.png",
                "trajectory_scatter.png"):
        assert (out / "plots" / fig).stat().st_size > 1000
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stages"]["trajectory"]["members"] == cfg.member_names()


def test_rerun_reads_checkpoints_back_and_recomputes_when_options_change(done, monkeypatch,
                                                                          tmp_path):
    import shutil

    from universal_neurons import fingerprints
    from universal_neurons.stages import correlate, trajectory

    work, cfg, done_out, first = done
    out = tmp_path / "run"
    shutil.copytree(done_out, out)

    def refuse(*a, **k):
        raise AssertionError("a finished checkpoint was recomputed")

    monkeypatch.setattr(correlate, "run_correlate", refuse)
    again = trajectory.run_trajectory(trajectory_config(work, cfg, out, plots=False))
    assert again.computed == []
    pd.testing.assert_frame_equal(again.neurons, first.neurons)
    with pytest.raises(AssertionError, match="recomputed"):
        trajectory.run_trajectory(trajectory_config(work, cfg, out, plots=False, seed=1))
    monkeypatch.setattr(fingerprints, "models_fingerprint", lambda specs: "retrained")
    with pytest.raises(AssertionError, match="recomputed"):  # same folders, other weights
        trajectory.run_trajectory(trajectory_config(work, cfg, out, plots=False))


def test_cli_prints_the_summary(done, capsys):
    from universal_neurons.cli import main

    work, cfg, out, _ = done
    argv = ["trajectory", "--models", *members(work, cfg), "--checkpoints",
            *[f"snapshots/tokens-{t}" for t in SNAPSHOTS], "--tokenizer", str(work / "tokenizer"),
            "--tokens", str(MAX_TOKENS), "--threshold", str(THRESHOLD), "--out", str(out),
            "--no-plots", "--quiet"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "t-a: universality at 2 checkpoints (0 computed, 2 read back)" in text
    assert f"tokens-{SNAPSHOTS[0]}:" in text


def test_checkpoint_specs_and_bad_input(suite, tmp_path):
    from universal_neurons.errors import UserError
    from universal_neurons.stages.trajectory import (
        TrajectoryConfig,
        checkpoint_position,
        resolve_checkpoints,
        run_trajectory,
    )

    work, cfg = suite
    hub = resolve_checkpoints(TrajectoryConfig(models=("pythia-160m-seeds",),
                                               checkpoints=("step1000", "step143000"), out="x"))
    assert hub[0].specs[:2] == ("pythia-160m@step1000", "pythia-160m-seed1@step1000")
    assert (hub[1].label, hub[1].step, hub[1].tokens) == ("step143000", 143000, None)
    assert checkpoint_position("checkpoint-400") == (400, None)
    assert checkpoint_position("main") == (None, None)
    with pytest.raises(UserError, match="no folder"):
        resolve_checkpoints(trajectory_config(work, cfg, tmp_path, checkpoints=("nope",)))
    with pytest.raises(UserError, match="no revisions"):
        resolve_checkpoints(TrajectoryConfig(models=("tiny-gpt2",), checkpoints=("s1",),
                                             out="x"))
    late_first = tuple(f"snapshots/tokens-{t}" for t in reversed(SNAPSHOTS))
    with pytest.raises(UserError, match="training order"):
        run_trajectory(trajectory_config(work, cfg, tmp_path, checkpoints=late_first))
    with pytest.raises(UserError, match="has no tokenizer"):
        run_trajectory(trajectory_config(work, cfg, tmp_path / "r", tokenizer=None))
