"""Tokenizer round-trip, corpus helpers, and determinism/resume of suite training."""

from __future__ import annotations

import gzip
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from universal_neurons.zoo import corpus, train
from universal_neurons.zoo.tokenizer import EOT, train_tokenizer

TEXTS = [
    "In the beginning God created the heaven and the earth.",
    "The quick brown fox jumps over the lazy dog. 1234 <tag> & ampersand",
    "def f(x):\n    return x ** 2  # a Python function\n",
    "hacker, n.: a person who enjoys exploring the details of programmable systems.",
] * 20


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(TEXTS, out, vocab_size=512)
    return out


def test_tokenizer_round_trip_and_specials(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    assert tok.bos_token == tok.eos_token == tok.pad_token == EOT
    assert tok.convert_tokens_to_ids(EOT) == 0
    for s in TEXTS[:4] + ["unseen wörds ✓ <script>alert(1)</script>\n\n\ttabs"]:
        ids = tok(s)["input_ids"]
        assert EOT not in tok.convert_ids_to_tokens(ids)
        assert tok.decode(ids) == s


def test_split_is_deterministic_and_near_the_requested_share():
    ids = [f"doc/{i}" for i in range(4000)]
    splits = [corpus.split_of(i) for i in ids]
    assert splits == [corpus.split_of(i) for i in ids]
    share = splits.count("test") / len(splits)
    assert abs(share - corpus.TEST_PERCENT / 100) < 0.02


def test_rst_cleaning_strips_markup():
    src = ("Title\n=====\n\n.. index:: single: foo\n   bar\n\nUse :func:`len` and "
           "``x + 1`` or `docs <https://x>`_ with *emphasis*.\n")
    text = corpus._rst_to_text(src)
    assert text == "Title\n\nUse len and x + 1 or docs with emphasis."


def test_jargon_entries_are_split(tmp_path):
    raw = ("intro line\n\n   :foo: n.\n\n   Something about {bar}\n   wrapped here.\n\n"
           "   :bar: adj.\n\n   Another entry.\n")
    path = tmp_path / "jargon.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write(raw)
    docs = list(corpus.jargon_documents(str(path)))
    assert [d.id for d in docs] == ["jargon/foo", "jargon/bar"]
    assert docs[0].text == "foo n.\n\nSomething about bar wrapped here."


def _tiny_setup(tmp_path: Path, tokenizer_dir: Path) -> tuple[train.TrainConfig, dict]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = [t for s in TEXTS for t in [0] + tok(s)["input_ids"]]
    stream = np.array(ids * 3, dtype=np.uint16)
    np.save(tmp_path / "train.npy", stream)
    np.save(tmp_path / "test.npy", stream[:400])
    cfg = train.TrainConfig(suite="t", seeds=(0, 1), n_layer=1, d_model=16, d_mlp=32,
                            n_head=2, n_ctx=16, tokens=4 * 16 * 6, batch_size=4,
                            warmup_steps=2, compile=False, autocast_bf16=False,
                            checkpoint_every=4 * 16 * 2, snapshot_tokens=(4 * 16 * 3,),
                            eval_tokens=64, restart_tokens=())
    paths = dict(train_stream_path=tmp_path / "train.npy",
                 test_stream_path=tmp_path / "test.npy", tokenizer_dir=tokenizer_dir,
                 show_progress=False)
    return cfg, paths


def _final_state(work: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(work / "members" / name / "final.pt", weights_only=True)["model"]


def test_training_is_deterministic_per_seed_and_differs_across_seeds(tmp_path, tokenizer_dir):
    cfg, paths = _tiny_setup(tmp_path, tokenizer_dir)
    cards = [train.train_member(cfg, 0, tmp_path / w, **paths) for w in ("w1", "w2")]
    train.train_member(cfg, 1, tmp_path / "w1", **paths)
    a1, a2 = _final_state(tmp_path / "w1", "t-a"), _final_state(tmp_path / "w2", "t-a")
    b = _final_state(tmp_path / "w1", "t-b")
    for k in a1:
        assert torch.equal(a1[k], a2[k]), k
    assert not torch.equal(a1["transformer.h.0.mlp.c_fc.weight"],
                           b["transformer.h.0.mlp.c_fc.weight"])
    assert cards[0]["tokens_seen"] == cfg.tokens
    assert cards[0]["test_loss"] < np.log(512)
    assert [h["tokens"] for h in cards[0]["history"]] == [4 * 16 * 3]
    snap = tmp_path / "w1" / "members" / "t-a" / "snapshots" / f"tokens-{4 * 16 * 3}"
    assert (snap / "model.safetensors").exists() and (snap / "config.json").exists()


def test_interrupted_training_resumes_to_identical_weights(tmp_path, tokenizer_dir,
                                                           monkeypatch):
    cfg, paths = _tiny_setup(tmp_path, tokenizer_dir)
    train.train_member(cfg, 0, tmp_path / "full", **paths)

    real = train.sample_batch
    calls = {"n": 0}

    def dying_sample(*a, **k):
        calls["n"] += 1
        if calls["n"] == 5:  # after the checkpoint at step 2, before the end (step 6)
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(train, "sample_batch", dying_sample)
    with pytest.raises(KeyboardInterrupt):
        train.train_member(cfg, 0, tmp_path / "resumed", **paths)
    monkeypatch.setattr(train, "sample_batch", real)
    state = torch.load(tmp_path / "resumed" / "members" / "t-a" / "state.pt", weights_only=True)
    assert state["step"] == 4
    card = train.train_member(cfg, 0, tmp_path / "resumed", **paths)
    full, resumed = (_final_state(tmp_path / w, "t-a") for w in ("full", "resumed"))
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    assert card["tokens_seen"] == cfg.tokens


def test_config_validation_names_values():
    with pytest.raises(ValueError, match="d_model=30"):
        replace(train.TrainConfig(), d_model=30, n_head=4)
    with pytest.raises(ValueError, match="seeds"):
        train.TrainConfig(seeds=(1, 1))


def test_lr_schedule_warms_up_then_decays():
    cfg = train.TrainConfig(tokens=16 * 256 * 1000, warmup_steps=100, restart_tokens=())
    lrs = [train.lr_at(cfg, s) for s in range(cfg.total_steps)]
    assert lrs[0] == pytest.approx(cfg.lr / 100)
    assert max(lrs) == pytest.approx(cfg.lr)
    assert lrs[-1] == pytest.approx(cfg.lr * cfg.min_lr_ratio, rel=1e-3)
    assert json.dumps(cfg.member_names()) == json.dumps([f"tiny-gpt2-{c}" for c in "abcde"])


def test_universality_curve_ends_with_the_finished_members(tmp_path, tokenizer_dir):
    from universal_neurons.zoo.curve import final_tokens, snapshot_tokens, universality_curve

    cfg, paths = _tiny_setup(tmp_path, tokenizer_dir)
    members = cfg.member_names()
    train.train_member(cfg, 0, tmp_path, **paths)
    assert final_tokens(tmp_path, members) is None  # t-b has not finished
    train.train_member(cfg, 1, tmp_path, **paths)
    assert snapshot_tokens(tmp_path, members) == [4 * 16 * 3]
    assert final_tokens(tmp_path, members) == cfg.tokens
    (tmp_path / "tokenizer").symlink_to(tokenizer_dir)
    rows = universality_curve(cfg, tmp_path, max_tokens=2_000)
    assert [r["tokens"] for r in rows] == [4 * 16 * 3, cfg.tokens]
    for r in rows:
        assert 0 <= r["share_0.5"] <= r["share_0.3"] <= 1
        assert r["median_excess"] <= r["max_excess"] <= 1
    # the curve is the trajectory stage's run in WORK/curve: a rerun reads it back
    summary = pd.read_parquet(tmp_path / "curve" / "trajectory" / "summary.parquet")
    assert list(summary["tokens"]) == [r["tokens"] for r in rows]
    assert list(summary["max_excess"]) == [r["max_excess"] for r in rows]
    assert universality_curve(cfg, tmp_path, max_tokens=2_000) == rows


def test_suite_card_lists_every_member_and_curve_row():
    from universal_neurons.zoo.card import suite_card_markdown

    cfg = train.TrainConfig()
    cards = [{"name": n, "suite": "tiny-gpt2", "seed": s, "config": asdict(cfg),
              "tokens_seen": 6_000_000, "train_loss_ema": 4.5 + s / 100, "test_loss": 4.6 + s / 10}
             for n, s in zip(cfg.member_names()[:2], (0, 1))]
    curve = [{"tokens": 250_000, "test_loss": 6.5, "median_excess": 0.02, "share_0.3": 0.0,
              "share_0.5": 0.0, "max_excess": 0.21, "eval_tokens": 100_000},
             {"tokens": 6_000_000, "test_loss": 4.6, "median_excess": 0.2, "share_0.3": 0.05,
              "share_0.5": 0.004, "max_excess": 0.61, "eval_tokens": 100_000}]
    text = suite_card_markdown(cards, 6.8, curve, trained_on="a test machine")
    assert "| `tiny-gpt2-b` | 1 | 6,000,000 | 4.510 | 4.700 |" in text
    assert "Test losses agree within 2.2%" in text
    assert "| 6,000,000 | 4.600 | 0.200 | 5.00% | 0.40% | 0.610 |" in text
    assert "first 100,000 tokens" in text and "Trained on: a test machine." in text


def test_restarted_schedule_continues_the_shorter_run_exactly():
    short = train.TrainConfig(tokens=6_000_000, restart_tokens=())
    long = replace(short, tokens=2 * short.tokens, restart_tokens=(short.tokens,))
    r = long.restart_steps[0]
    assert r == short.total_steps
    assert [train.lr_at(long, s) for s in range(r)] == [train.lr_at(short, s) for s in range(r)]
    assert train.lr_at(long, r) == pytest.approx(long.restart_lr / long.warmup_steps)
    assert train.lr_at(long, r + long.warmup_steps) == pytest.approx(long.restart_lr)
    assert train.lr_at(long, long.total_steps - 1) == pytest.approx(
        long.restart_lr * long.min_lr_ratio, rel=1e-3)
    with pytest.raises(ValueError, match="restart_tokens"):
        replace(short, restart_tokens=(short.tokens,))
    shipped = train.TrainConfig()  # the bundled suite: 6M tokens, then a restart to 12M
    assert [train.lr_at(shipped, s) for s in range(r)] == [train.lr_at(short, s) for s in range(r)]


def test_longer_run_with_a_restart_continues_a_finished_run(tmp_path, tokenizer_dir):
    cfg, paths = _tiny_setup(tmp_path, tokenizer_dir)
    longer = replace(cfg, tokens=2 * cfg.tokens, restart_tokens=(cfg.tokens,))
    train.train_member(cfg, 0, tmp_path / "continued", **paths)
    card = train.train_member(longer, 0, tmp_path / "continued", **paths)
    train.train_member(longer, 0, tmp_path / "straight", **paths)
    cont, straight = (_final_state(tmp_path / w, "t-a") for w in ("continued", "straight"))
    for k in straight:
        assert torch.equal(cont[k], straight[k]), k
    assert card["tokens_seen"] == longer.tokens
    snaps = tmp_path / "straight" / "members" / "t-a" / "snapshots"
    assert (snaps / f"tokens-{cfg.tokens}" / "model.safetensors").exists()  # at the restart


def test_zoo_train_command_keeps_only_the_recipe_restarts_inside_the_run():
    from universal_neurons.cli import build_parser
    from universal_neurons.commands.zoo import _config

    def config(*argv: str) -> train.TrainConfig:
        return _config(build_parser().parse_args(["zoo", "train", *argv]))

    assert config().restart_tokens == train.TrainConfig().restart_tokens == (6_000_000,)
    assert config("--tokens", "4000000").restart_tokens == ()
    assert config("--tokens", "12000000", "--restart-at").restart_tokens == ()
    assert config("--tokens", "9000000", "--restart-at", "3000000").restart_tokens == (3_000_000,)
