"""Example candidates of the stats pass, the examples a report shows and their windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from universal_neurons.engine.example_candidates import ExampleCandidates, token_key
from universal_neurons.engine.example_windows import (
    KIND_BAND,
    KIND_NEGATIVE,
    KIND_TOP,
    ExampleConfig,
    select_neuron,
)

P = 2**31 - 1


def key_oracle(seq: int, pos: int) -> int:
    """The documented hash, re-derived with Python integers."""
    x = ((seq * 2**20 + pos) % P) * 48271 % P
    x = (x + 1013904223) % P
    x ^= x >> 15
    x = x * 69621 % P
    x ^= x >> 13
    return x * 48271 % P


def data(rows: int = 600, n: int = 5, seed: int = 0):
    g = np.random.default_rng(seed)
    post = g.standard_normal((rows, n)).astype(np.float32)
    seq = np.repeat(np.arange(rows // 30), 30)
    pos = np.tile(np.arange(1, 31), rows // 30)
    return post, seq, pos


def feed(parts, k=(6, 5, 12), n=5) -> ExampleCandidates:
    c = ExampleCandidates(n, *k, torch.device("cpu"))
    for post, seq, pos in parts:
        c.update(torch.from_numpy(post), torch.from_numpy(seq), torch.from_numpy(pos))
    return c


def test_key_equals_the_formula():
    seq, pos = np.array([0, 1, 7, 12345, 2**30]), np.array([1, 0, 511, 3, 1023])
    got = token_key(torch.from_numpy(seq * 2**20 + pos)).tolist()
    assert got == [key_oracle(int(s), int(p)) for s, p in zip(seq, pos)]


@pytest.mark.parametrize("chunk", [250, 30, 7])  # dense first chunk, then the sparse merge
def test_candidates_equal_sorting_and_the_smallest_keys(chunk):
    post, seq, pos = data()
    c = feed([(post[i:i + chunk], seq[i:i + chunk], pos[i:i + chunk])
              for i in range(0, len(post), chunk)])
    a = c.arrays()
    keys = np.array([key_oracle(int(s), int(p)) for s, p in zip(seq, pos)])
    for j in range(post.shape[1]):
        v = post[:, j]
        np.testing.assert_array_equal(a["top_values"][j].numpy(), np.sort(v)[::-1][:6])
        np.testing.assert_array_equal(a["bottom_values"][j].numpy(), np.sort(v)[:5])
        top = np.argsort(-v)[:6]
        assert set(zip(a["top_seq"][j].tolist(), a["top_pos"][j].tolist())) == set(
            zip(seq[top].tolist(), pos[top].tolist()))
        positive = np.flatnonzero(v > 0)
        want = positive[np.argsort(keys[positive], kind="stable")[:12]]
        assert set(zip(a["sample_seq"][j].tolist(), a["sample_pos"][j].tolist())) == set(
            zip(seq[want].tolist(), pos[want].tolist()))
        np.testing.assert_array_equal(np.sort(a["sample_values"][j].numpy()), np.sort(v[want]))


def test_merge_equals_one_pass_in_any_order():
    post, seq, pos = data(seed=1)
    whole = feed([(post, seq, pos)]).arrays()
    a = feed([(post[300:], seq[300:], pos[300:])])
    b = feed([(post[:300], seq[:300], pos[:300])])
    a.merge(b.state_dict())
    merged = a.arrays()
    for name in ("top", "bottom", "sample"):
        for j in range(post.shape[1]):
            got = set(zip(merged[f"{name}_seq"][j].tolist(), merged[f"{name}_pos"][j].tolist()))
            assert got == set(zip(whole[f"{name}_seq"][j].tolist(), whole[f"{name}_pos"][j].tolist()))


def test_few_positive_tokens_leave_empty_sample_slots():
    post = -np.ones((20, 2), np.float32)
    post[3, 0] = 2.0
    c = feed([(post, np.zeros(20, np.int64), np.arange(20))], n=2).arrays()
    assert c["sample_seq"][0].tolist().count(-1) == 11 and (c["sample_seq"][1] == -1).all()
    assert np.isnan(c["sample_values"][1].numpy()).all()


def cands(values, seqs, poss, neg=(), sample=()):
    z = np.zeros(0)
    sv = np.array([s[0] for s in sample], np.float32) if sample else z.astype(np.float32)
    return {"top_values": np.asarray(values, np.float32), "top_seq": np.asarray(seqs),
            "top_pos": np.asarray(poss),
            "bottom_values": np.array([n[0] for n in neg], np.float32),
            "bottom_seq": np.array([n[1] for n in neg], np.int64),
            "bottom_pos": np.array([n[2] for n in neg], np.int64),
            "sample_values": sv, "sample_seq": np.array([s[1] for s in sample], np.int64),
            "sample_pos": np.array([s[2] for s in sample], np.int64)}


def test_one_example_per_window():
    cfg = ExampleConfig(before=3, after=2, n_top=10)
    c = cands([9, 8, 7, 6, 5, 4], [0, 0, 0, 1, 0, -1], [10, 15, 16, 10, 4, -1],
              neg=[(-1.0, 0, 12), (-0.5, 2, 5), (0.2, 3, 3)])
    picks, _ = select_neuron(c, cfg)
    assert [(k, s, p) for k, _, s, p in picks] == [
        (KIND_TOP, 0, 10), (KIND_TOP, 0, 16), (KIND_TOP, 1, 10), (KIND_TOP, 0, 4),
        (KIND_NEGATIVE, 2, 5)]  # (0,15) overlaps (0,10); (0,12) too; 0.2 is not negative
    for i, (_, _, s, p) in enumerate(picks):
        for _, _, s2, p2 in picks[i + 1:]:
            assert s != s2 or abs(p - p2) > cfg.before + cfg.after


def test_band_examples_lie_in_their_bands_and_bands_match_true_quantiles():
    """The bands come from a uniform sample of R positive activations: the true quantile
    rank of a sample q-quantile has standard deviation sqrt(q(1-q)/R); allow 4.5 of them."""
    g = np.random.default_rng(3)
    rows, n, r = 20000, 4, 400
    post = (g.gamma(2.0, size=(rows, n)) - 1.0).astype(np.float32)
    seq, pos = np.arange(rows) // 100, np.arange(rows) % 100 + 1
    c = feed([(post, seq, pos)], k=(16, 16, r), n=n).arrays()
    cfg = ExampleConfig(before=1, after=1, n_top=0, n_negative=0, per_band=5)
    for j in range(n):
        picks, edges = select_neuron({k: v[j].numpy() for k, v in c.items()}, cfg)
        positive = np.sort(post[:, j][post[:, j] > 0].astype(np.float64))
        for b, (lo, hi) in enumerate(cfg.bands):
            for q, e in ((lo, edges[b, 0]), (hi, edges[b, 1])):
                rank = np.searchsorted(positive, e) / len(positive)
                assert abs(rank - q) <= 4.5 * math.sqrt(q * (1 - q) / r) + 1 / r, (j, b, q, rank)
            vals = [v for k, v, _, _ in picks if k == KIND_BAND + b]
            assert len(vals) == cfg.per_band
            assert all(edges[b, 0] <= v <= edges[b, 1] for v in vals)


def test_config_rejects_bad_bands():
    with pytest.raises(ValueError, match="band"):
        ExampleConfig(bands=((0.9, 0.5),))


@pytest.fixture(scope="module")
def stats_run(tiny_suite, tmp_path_factory):
    from universal_neurons.cli import main

    run = tmp_path_factory.mktemp("examples-run")
    assert main(["stats", "--model", tiny_suite["models"][0], "--dataset", tiny_suite["dataset"],
                 "--out", str(run), "--batch-size", "5", "--quiet"]) == 0
    return run


def test_window_activations_equal_a_transformer_lens_capture(stats_run, tiny_suite):
    """Every recorded window value equals TransformerLens's ``hook_post`` on the whole
    sequence. Both run float32 on O(1) activations through 2 layers of width <= 256, so
    rounding differences are ~1e-6; 1e-4 (as the adapter tests) also covers TL's folded
    layer norms reordering the sums."""
    from helpers import tl_oracle
    from universal_neurons.analysis.neuron_table import stats_dir
    from universal_neurons.data.dataset import open_token_dataset
    from universal_neurons.engine.activation_stats_result import (
        FORMAT_VERSION,
        ActivationStatsResult,
    )
    from universal_neurons.models.loading import load_model

    model = load_model(tiny_suite["models"][0])
    res = ActivationStatsResult.load(stats_dir(stats_run, model.name) / "activation_stats.safetensors")
    tokens = torch.from_numpy(np.asarray(open_token_dataset(tiny_suite["dataset"]).tokens, np.int64))
    tl = tl_oracle(model.hf_model, fold_ln=True, center_writing_weights=True, center_unembed=True)
    _, cache = tl.run_with_cache(tokens, names_filter=lambda n: n.endswith("mlp.hook_post"))
    L, d = res.mean.shape
    post = torch.stack([cache[f"blocks.{i}.mlp.hook_post"] for i in range(L)]).numpy()  # [L, b, pos, d]
    cfg = res.examples
    before, after = cfg["before"], cfg["after"]
    assert res.example_acts.shape == (L, d, res.example_seq.shape[2], before + 1 + after)
    n_checked = 0
    for la in range(L):
        for j in range(d):
            for e in np.flatnonzero(res.example_seq[la, j] >= 0):
                s, p = int(res.example_seq[la, j, e]), int(res.example_pos[la, j, e])
                q = np.arange(p - before, p + after + 1)
                ok = (q >= 0) & (q < tokens.shape[1])
                want = np.full(len(q), np.nan, np.float32)
                want[ok] = post[la, s, q[ok], j]
                np.testing.assert_allclose(res.example_acts[la, j, e], want, atol=1e-4, rtol=0)
                assert abs(res.example_value[la, j, e] - want[before]) <= 1e-4
                n_checked += 1
    assert n_checked > L * d * 10  # top, band and negative examples of every neuron
    kinds = set(np.unique(res.example_kind).tolist())
    assert {KIND_TOP, KIND_NEGATIVE, KIND_BAND, KIND_BAND + 2} <= kinds
    from safetensors import safe_open

    with safe_open(str(stats_dir(stats_run, model.name) / "activation_stats.safetensors"), "np") as f:
        assert f'"format_version": {FORMAT_VERSION}' in f.metadata()["meta"]


def test_shown_examples_never_share_a_window(stats_run, tiny_suite):
    from universal_neurons.analysis.neuron_table import stats_dir
    from universal_neurons.engine.activation_stats_result import ActivationStatsResult
    from universal_neurons.models.loading import load_model

    name = load_model(tiny_suite["models"][0]).name
    res = ActivationStatsResult.load(stats_dir(stats_run, name) / "activation_stats.safetensors")
    span = res.examples["before"] + res.examples["after"]
    seq, pos = res.example_seq.reshape(-1, res.example_seq.shape[2]), res.example_pos.reshape(
        -1, res.example_seq.shape[2])
    for s, p in zip(seq, pos):
        used = [(a, b) for a, b in zip(s, p) if a >= 0]
        for i, (a, b) in enumerate(used):
            assert all(a != a2 or abs(b - b2) > span for a2, b2 in used[i + 1:])


def test_checkpoint_of_the_older_layout_keeps_its_top_examples():
    """A state written before the bottom/sample candidates (``top_seq``/``top_pos``) loads:
    its top examples are kept, the other kinds start empty."""
    post, seq, pos = data(seed=2)
    c = feed([(post, seq, pos)])
    state = c.state_dict()
    a = c.arrays()
    old = {"top_values": state["top_values"], "top_seq": a["top_seq"].T.contiguous(),
           "top_pos": a["top_pos"].T.contiguous()}
    fresh = ExampleCandidates(5, 6, 5, 12, torch.device("cpu"))
    assert fresh.load_state_dict(old, torch.device("cpu")) is False
    b = fresh.arrays()
    for k in ("top_values", "top_seq", "top_pos"):
        assert torch.equal(b[k], a[k])
    assert (b["bottom_seq"] == -1).all() and (b["sample_seq"] == -1).all()
