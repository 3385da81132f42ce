"""ActivationStats against numpy/scipy on the same activations, split and merged."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from scipy import stats

from universal_neurons.engine.accumulator import Accumulator
from universal_neurons.engine.activation_stats import (
    ActivationStats,
    ActivationStatsConfig,
    ActivationStatsResult,
    parse_sparsity_rule,
)
from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.frequent_tokens import frequent_token_ids, plan_token_table

L, D = 2, 6
N = L * D
VOCAB = 40


def make_data(n: int = 3000, seed: int = 0):
    """Heavy-tailed, shifted, skewed pre-activations; GELU post; tokens, seqs, positions,
    previous tokens (-1 at position 0)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.2, 3.0, N)
    shift = torch.linspace(-2.0, 1.0, N)
    pre = (torch.randn(n, N, generator=g) ** 3 * 0.3 + torch.randn(n, N, generator=g)) * scale + shift
    post = torch.nn.functional.gelu(pre)
    tok = (torch.rand(n, generator=g) ** 2 * VOCAB).long()  # skewed frequencies
    seq = torch.arange(n) // 16
    pos = torch.arange(n) % 16
    prev = torch.where(pos > 0, torch.roll(tok, 1), -1)
    return pre.float(), post.float(), tok, seq, pos, prev


def batches(data, sizes):
    pre, post, tok, seq, pos, prev = data
    s = 0
    for b in sizes:
        sl = slice(s, s + b)
        yield ActivationBatch(acts={"m": {"pre": pre[sl], "post": post[sl]}}, token_ids=tok[sl],
                              prev_token_ids=prev[sl], positions=pos[sl], seq_index=seq[sl])
        s += b


def run(data, sizes, config=None, token_ids=None) -> ActivationStats:
    acc = ActivationStats("m", L, D, config or ActivationStatsConfig(top_k=5), token_ids=token_ids)
    for b in batches(data, sizes):
        acc.update(b)
    return acc


def rel(a, b):
    return np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12))


def test_is_an_accumulator():
    assert isinstance(ActivationStats("m", L, D), Accumulator)


def test_moments_and_sparsity_equal_scipy():
    data = make_data()
    res = run(data, [700, 1, 999, 1300]).finalize()
    x = data[0].double().numpy()
    assert res.n_tokens == 3000
    assert rel(res.mean.ravel(), x.mean(0)) < 1e-10
    assert rel(res.var.ravel(), x.var(0)) < 1e-10
    assert rel(res.skew.ravel(), stats.skew(x, axis=0)) < 1e-9
    assert rel(res.kurt.ravel(), stats.kurtosis(x, axis=0, fisher=False)) < 1e-9
    assert np.array_equal(res.sparsity.ravel(), (data[1].numpy() > 0).mean(0))
    assert np.array_equal(res.pre_min.ravel(), x.min(0))
    assert np.array_equal(res.pre_max.ravel(), x.max(0))


def test_paper_sparsity_rule():
    assert parse_sparsity_rule("pre > -0.1") == ("pre", ">", -0.1)
    assert parse_sparsity_rule("post>=1e-3") == ("post", ">=", 1e-3)
    with pytest.raises(ValueError, match="bad sparsity rule"):
        ActivationStatsConfig(sparsity_rule="mid>0")
    data = make_data()
    res = run(data, [3000], ActivationStatsConfig(sparsity_rule="pre>-0.1")).finalize()
    assert np.array_equal(res.sparsity.ravel(), (data[0].numpy() > -0.1).mean(0))


def test_streaming_chunks_and_merge_equal_one_pass():
    data = make_data()
    tok_ids = np.arange(0, VOCAB, 3)
    one = run(data, [3000], token_ids=tok_ids).finalize()
    tiny_chunks = ActivationStatsConfig(top_k=5, chunk_elements=7 * N)
    split = run(data, [1, 250, 749, 1000, 1000], tiny_chunks, token_ids=tok_ids).finalize()
    # two halves on separate accumulators (the second half's first batch is its own), merged
    a = run(tuple(t[:1700] for t in data), [1700], token_ids=tok_ids)
    b = run(tuple(t[1700:] for t in data), [300, 1000], token_ids=tok_ids)
    a.merge(b)
    merged = a.finalize()
    for r in (split, merged):
        assert r.n_tokens == one.n_tokens
        for k in ("mean", "var", "skew", "kurt"):
            assert rel(getattr(r, k), getattr(one, k)) < 1e-10, k
        for k in ("sparsity", "pre_min", "pre_max", "top_values", "top_seq", "top_pos",
                  "token_count", "token_max", "prev_token_count"):
            assert np.array_equal(getattr(r, k), getattr(one, k)), k
        assert np.allclose(r.token_mean, one.token_mean, rtol=1e-12, atol=0)
        assert np.allclose(r.prev_token_mean, one.prev_token_mean, rtol=1e-12, atol=0)


def test_topk_equals_brute_force_sort():
    data = make_data()
    res = run(data, [400, 1600, 1000], ActivationStatsConfig(top_k=7)).finalize()
    post = data[1].numpy()
    order = np.argsort(-post, axis=0, kind="stable")[:7]  # [k, N]
    assert np.array_equal(res.top_values.reshape(N, 7).T, np.take_along_axis(post, order, 0))
    assert np.array_equal(res.top_seq.reshape(N, 7).T, data[3].numpy()[order])
    assert np.array_equal(res.top_pos.reshape(N, 7).T, data[4].numpy()[order])


def test_topk_with_fewer_tokens_than_k():
    data = make_data(3)
    res = run(data, [3], ActivationStatsConfig(top_k=5)).finalize()
    assert np.all(np.isneginf(res.top_values[..., 3:])) and np.all(res.top_seq[..., 3:] == -1)


def hist_oracle(x: np.ndarray, lo: float, hi: float, w: float, n_bins: int) -> np.ndarray:
    """Counts of [under, bins, over] with [a, b) bins, from explicit edges."""
    n_in = int(round((hi - lo) / w))
    edges = lo + w * np.arange(n_in + 1)
    out = np.zeros(n_bins + 2, dtype=np.int64)
    idx = np.searchsorted(edges, x, side="right") - 1  # -1 below lo, n_in at/above hi
    out[0] = (idx < 0).sum()
    out[n_bins + 1] = (idx >= n_in).sum()
    inner = idx[(idx >= 0) & (idx < n_in)]
    out[1:n_in + 1] = np.bincount(inner, minlength=n_in)
    return out


@pytest.mark.parametrize("halves", [False, True])
def test_histogram_counts_exact_on_reported_edges(halves):
    data = make_data()
    cfg = ActivationStatsConfig(n_bins=16, hist_quantile=0.01, hist_margin=0.1)
    if halves:  # different first batches -> different grids, merged
        acc = run(tuple(t[:200] for t in data), [200], cfg)
        acc.merge(run(tuple(t[200:] for t in data), [2800], cfg))
    else:
        acc = run(data, [200, 2800], cfg)
    res = acc.finalize()
    x = data[0].double().numpy()
    hist = res.hist.reshape(N, -1)
    lo, hi, w = (a.ravel() for a in (res.hist_lo, res.hist_hi, res.hist_width))
    assert np.all(hist.sum(1) == 3000)
    assert np.all(np.log2(w) == np.round(np.log2(w)))  # power-of-two widths
    for i in range(N):
        assert np.array_equal(hist[i], hist_oracle(x[:, i], lo[i], hi[i], w[i], 16)), i
    if not halves:  # with a fitted range most mass is inside
        assert (hist[:, 1:-1].sum() / hist.sum()) > 0.9


def test_token_table_equals_groupby_and_memory_is_bounded():
    data = make_data()
    pre, post, tok, *_ = data
    ids = frequent_token_ids(tok.numpy().reshape(-1, 8), n=100)
    counts = np.bincount(tok.numpy(), minlength=VOCAB)
    assert np.array_equal(ids[:5], np.argsort(-counts, kind="stable")[:5])
    per_group = 2 * N * 20 + 24  # current+previous x (sum, sumsq, max) + counts + id
    budget = 21 * per_group + 48 * N + 8 * VOCAB + 5  # 20 tokens + the pooled "other" group
    t = plan_token_table(N, budget, n_wanted=len(ids), d_vocab=VOCAB)
    assert t == 20
    acc = run(data, [1000, 2000], token_ids=ids[:t])
    assert acc.token_table_nbytes <= budget
    assert acc.token_table_nbytes > 20 * per_group  # the plan is not wasteful
    res = acc.finalize()
    p, t_np, prev = post.numpy().astype(np.float64), tok.numpy(), data[5].numpy()
    for j, token in enumerate(res.token_ids):
        rows = t_np == token
        assert res.token_count[j] == rows.sum()
        np.testing.assert_allclose(res.token_mean[j].ravel(), p[rows].mean(0), rtol=1e-10)
        assert np.array_equal(res.token_max[j].ravel(), post.numpy()[rows].max(0))
        rows = prev == token
        assert res.prev_token_count[j] == rows.sum()
        np.testing.assert_allclose(res.prev_token_mean[j].ravel(), p[rows].mean(0), rtol=1e-10)


def test_frequent_token_ids_respects_keep_mask():
    tokens = np.array([[0, 5, 5, 5], [0, 7, 7, 1]], dtype=np.uint16)
    keep = tokens != 0
    assert frequent_token_ids(tokens, 2, keep).tolist() == [5, 7]
    assert frequent_token_ids(tokens, 10, keep, chunk_rows=1).tolist() == [5, 7, 1]


def test_state_dict_roundtrip_and_resume():
    data = make_data()
    cfg = ActivationStatsConfig(top_k=4)
    full = run(data, [1000, 2000], cfg, token_ids=[1, 2, 3])
    first = run(tuple(t[:1000] for t in data), [1000], cfg, token_ids=[1, 2, 3])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = ActivationStats("m", L, D, cfg, token_ids=[1, 2, 3])
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    for b in batches(tuple(t[1000:] for t in data), [2000]):
        resumed.update(b)
    a, b = full.finalize(), resumed.finalize()
    for k in ("mean", "var", "skew", "kurt", "sparsity", "hist", "top_values", "token_max"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k


def test_result_save_load(tmp_path):
    res = run(make_data(), [3000], token_ids=[1, 2]).finalize()
    res.save(tmp_path / "a.safetensors")
    back = ActivationStatsResult.load(tmp_path / "a.safetensors")
    assert back.model == "m" and back.n_tokens == 3000
    assert np.array_equal(back.kurt, res.kurt) and np.array_equal(back.hist, res.hist)
    df = back.frame()
    assert list(df.columns) == ["layer", "neuron", "mean", "var", "skew", "kurt", "sparsity"]
    assert len(df) == N and df.layer.max() == L - 1


def test_merge_rejects_other_shapes():
    with pytest.raises(ValueError, match="cannot merge"):
        ActivationStats("m", L, D).merge(ActivationStats("m", L, D + 1))
