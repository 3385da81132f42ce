"""Attention-deactivation analyses against TransformerLens and hand computations, on every
architecture with an adapter (GPT-2 and GPT-NeoX with fused q/k/v; Llama and Qwen2 with
separate projections and grouped-query attention)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_interventions_models import (
    BOS,
    hooked_transformer,
    random_tokens,
    saved_model,
    tiny_model,
)

from helpers import repeat_kv
from universal_neurons.analysis.attention_ablation import (
    Pearson,
    attention_pass,
    query_path_ablation,
)
from universal_neurons.analysis.attention_heuristic import (
    HeadPair,
    bos_keys,
    heuristic_scores,
    heuristic_tables,
    random_like_norms,
    top_pairs,
)

KINDS = ("gpt2", "neox", "llama", "qwen2")
QUERY_START = {"gpt2": lambda head, d: head * d,  # fused c_attn output (qkv head d)
               "neox": lambda head, d: head * 3 * d,  # fused query_key_value (head qkv d)
               "llama": lambda head, d: head * d,  # q_proj output (head d)
               "qwen2": lambda head, d: head * d}
"""Where a head's query starts in the output of the module that computes it."""
W_OUT = {"gpt2": "mlp.c_proj", "neox": "mlp.dense_4h_to_h", "llama": "mlp.down_proj",
         "qwen2": "mlp.down_proj"}
"""The MLP output projection inside a block."""


@pytest.fixture(scope="module", params=KINDS)
def twins(request):
    m = tiny_model(request.param)
    return m, hooked_transformer(m)


def test_heuristic_matches_einsum_on_transformer_lens_weights(twins):
    m, tl = twins
    w = m.adapter.processed_weights()
    scores = heuristic_scores(w.W_out, w.W_Q, bos_keys(m))  # [L, d_mlp, L, H]
    _, cache = tl.run_with_cache(torch.tensor([[BOS]]))
    L = tl.cfg.n_layers
    for layer in range(L):
        for m_layer in range(L):
            got = scores[layer, :, m_layer]  # [d_mlp, H]
            if m_layer <= layer:
                assert got.isnan().all()
                continue
            k = repeat_kv(cache[f"blocks.{m_layer}.attn.hook_k"][0, 0], tl.cfg.n_heads)  # [H, d_head]
            want = torch.einsum("nd,hdk,hk->nh", tl.W_out[layer], tl.W_Q[m_layer], k)
            torch.testing.assert_close(got, want / math.sqrt(tl.cfg.d_head), atol=1e-4, rtol=1e-4)


def test_random_baseline_keeps_norms_and_tables():
    g = torch.Generator().manual_seed(0)
    W_out = torch.randn(3, 10, 8, generator=g)
    r = random_like_norms(W_out, seed=1)
    torch.testing.assert_close(r.norm(dim=-1), W_out.norm(dim=-1))
    torch.testing.assert_close(r.sum(-1), torch.zeros(3, 10), atol=1e-5, rtol=0)
    scores = heuristic_scores(W_out, torch.randn(3, 2, 8, 4, generator=g), torch.randn(3, 2, 4, generator=g))
    top, hist, summary = heuristic_tables(scores, scores * 0.1, W_out.norm(dim=-1), k=3)
    valid = scores[~scores.isnan()]
    assert top["score"].iloc[0] == pytest.approx(float(valid.max()))
    assert top["score"].iloc[3] == pytest.approx(float(valid.min()))
    assert hist["count"].sum() == valid.numel() == summary["n_pairs"] == 10 * (2 * 2 + 2)
    assert (top["head_layer"] > top["layer"]).all()


def test_top_pairs_restricted_to_neurons_and_pair_parsing():
    scores = torch.full((3, 4, 3, 2), float("nan"))
    scores[0, :, 1:] = torch.arange(16.0).reshape(4, 2, 2)
    got = top_pairs(scores, 1, neurons=[(0, 1)])
    assert got == [HeadPair(0, 1, 2, 1), HeadPair(0, 1, 1, 0)]
    assert HeadPair.parse("L3.17:L5.2") == HeadPair(3, 17, 5, 2) == HeadPair.parse("L3.17->L5.H2")
    with pytest.raises(ValueError, match="must come after"):
        HeadPair.parse("L3.17:L3.1")


def test_pearson_streams_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(5, 2, 1000)
    y = 0.3 * x + rng.normal(0, 1, 1000) + 100
    p = Pearson()
    for i in range(0, 1000, 137):
        p.update(torch.tensor(x[i:i + 137]), torch.tensor(y[i:i + 137]))
    assert p.corr == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    assert p.n == 1000 and p.mx == pytest.approx(x.mean())


def _capture_q(m, layer, ids):
    s = m.adapter.attention_modules(layer)
    seen = []
    h = s.projection("q").register_forward_hook(lambda _m, _a, o: seen.append(o))
    # registered after the ablation hook, so it sees the replaced output
    try:
        with torch.no_grad():
            m.hf_model(ids)
    finally:
        h.remove()
    return s, seen[-1]


@pytest.mark.parametrize("kind", KINDS)
def test_query_path_ablation_equals_hand_computation(kind):
    m = tiny_model(kind)
    ids = random_tokens(2, 10)
    layer, head = 2, 1
    delta = torch.randn(2, 10, m.adapter.d_model, generator=torch.Generator().manual_seed(3))
    s, clean = _capture_q(m, layer, ids)
    resid = []
    h = s.norm.register_forward_pre_hook(lambda _m, a: resid.append(a[0]))
    try:
        with query_path_ablation(m.adapter, layer, head, delta):
            _, ablated = _capture_q(m, layer, ids)
    finally:
        h.remove()
    ln, proj = s.norm, s.projection("q")
    x = resid[-1] - delta
    if isinstance(ln, torch.nn.LayerNorm):
        x = torch.nn.functional.layer_norm(x, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
    else:  # RMSNorm
        x = ln.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + ln.variance_epsilon)
    d = m.adapter.d_head
    start = QUERY_START[kind](head, d)
    cols = slice(start, start + d)
    bias = proj.bias[cols] if proj.bias is not None else 0.0
    if isinstance(proj, torch.nn.Linear):  # [out, in]
        q = x @ proj.weight[cols].T + bias
    else:  # GPT-2's Conv1D [in, out]
        q = x @ proj.weight[:, cols] + bias
    torch.testing.assert_close(ablated[..., cols], q, atol=1e-5, rtol=1e-5)
    other = torch.ones(ablated.shape[-1], dtype=torch.bool)
    other[cols] = False
    assert torch.equal(ablated[..., other], clean[..., other])  # other heads' q, all k and v
    assert not torch.allclose(ablated[..., cols], clean[..., cols])
    with query_path_ablation(m.adapter, layer, head, torch.zeros(())):
        _, same = _capture_q(m, layer, ids)
    torch.testing.assert_close(same, clean, atol=1e-6, rtol=0)
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.hf_model.modules())


def _zero_w_out(m, kind, layer, neuron):
    proj = m.adapter.block(layer).get_submodule(W_OUT[kind])
    if isinstance(proj, torch.nn.Linear):
        proj.weight[:, neuron] = 0.0  # [d_model, d_mlp]
    else:
        proj.weight[neuron] = 0.0  # GPT-2's Conv1D [d_mlp, d_model]


@pytest.mark.parametrize("kind", KINDS)
def test_path_ablation_of_zero_w_out_changes_nothing(kind):
    m = tiny_model(kind)
    with torch.no_grad():
        _zero_w_out(m, kind, 0, 7)
    toks = random_tokens(3, 12).numpy()
    pairs = [HeadPair(0, 7, 2, 1), HeadPair(0, 8, 2, 1)]
    r = attention_pass(m, [(0, toks[:2]), (2, toks[2:])], pairs, positions=(1, None))
    row = r.path_ablation.set_index("pair")
    zero = r.points[r.points["pair"] == "L0.7->L2.H1"]
    assert len(zero) == 33 and (zero["delta_bos_attn"] == 0).all() and (zero["delta_out_norm"] == 0).all()
    assert row.loc["L0.7->L2.H1", "mean_delta_bos_attn"] == 0.0
    assert math.isnan(row.loc["L0.7->L2.H1", "corr_act_delta_bos_attn"])
    assert (r.points[r.points["pair"] == "L0.8->L2.H1"]["delta_bos_attn"] != 0).any()
    assert m.hf_model.config._attn_implementation == "sdpa"


def test_path_ablation_and_value_norms_match_transformer_lens(twins):
    m, tl = twins
    toks = random_tokens(3, 12, seed=5)
    pairs = [HeadPair(0, 3, 1, 2), HeadPair(1, 20, 2, 0)]
    r = attention_pass(m, [(0, toks.numpy())], pairs, measure="model_abs", positions=(1, None))
    paper = attention_pass(m, [(0, toks.numpy())], pairs, positions=(4, 10))  # the default measure
    script = attention_pass(m, [(0, toks.numpy())], pairs, measure="head_abs", positions=(4, 10))
    tl.set_use_split_qkv_input(True)
    try:
        _, clean = tl.run_with_cache(toks)
        for p in pairs:
            a = clean[f"blocks.{p.layer}.mlp.hook_post"][..., p.neuron]  # [b, p]

            def sub(q_input, hook, p=p, a=a):  # [b, pos, H, d_model]
                q_input = q_input.clone()
                q_input[:, :, p.head] -= a[..., None] * tl.W_out[p.layer, p.neuron]
                return q_input

            hooks = [(f"blocks.{p.head_layer}.hook_q_input", sub)]
            with tl.hooks(fwd_hooks=hooks):
                _, abl = tl.run_with_cache(toks)
            name = f"blocks.{p.head_layer}.attn"
            d_attn = (abl[f"{name}.hook_pattern"] - clean[f"{name}.hook_pattern"])[:, p.head, 1:, 0]

            def out_norm(cache, p=p, name=name):
                z = cache[f"{name}.hook_z"][:, 1:, p.head]  # [b, pos - 1, d_head]
                return (z @ tl.W_O[p.head_layer, p.head]).norm(dim=-1)

            d_norm = out_norm(abl) - out_norm(clean)
            got = r.points[r.points["pair"] == p.name]
            np.testing.assert_allclose(got["act"], a[:, 1:].reshape(-1), atol=1e-5)
            np.testing.assert_allclose(got["delta_bos_attn"], d_attn.reshape(-1), atol=1e-5)
            np.testing.assert_allclose(got["delta_out_norm"], d_norm.reshape(-1), atol=1e-5)
            want = np.corrcoef(a[:, 1:].reshape(-1), d_attn.reshape(-1))[0, 1]
            row = r.path_ablation.set_index("pair").loc[p.name]
            assert row["corr_act_delta_bos_attn"] == pytest.approx(want, abs=1e-3)
            # the paper's measure: % change of |hook_z| of the head, positions 4..9 here
            z0 = clean[f"{name}.hook_z"][:, 4:10, p.head].norm(dim=-1)
            z1 = abl[f"{name}.hook_z"][:, 4:10, p.head].norm(dim=-1)
            pct = (100 * (z1 - z0) / z0).reshape(-1).numpy()
            got = paper.points[paper.points["pair"] == p.name]
            np.testing.assert_allclose(got["act"], a[:, 4:10].reshape(-1), atol=1e-5)
            np.testing.assert_allclose(got["delta_out_norm"], pct, atol=1e-3)
            sgot = script.points[script.points["pair"] == p.name]
            np.testing.assert_allclose(sgot["delta_out_norm"], (z1 - z0).reshape(-1), atol=1e-5)
            np.testing.assert_allclose(got["delta_bos_attn"], d_attn[:, 3:9].reshape(-1), atol=1e-5)
            prow = paper.path_ablation.set_index("pair").loc[p.name]
            assert prow["n_tokens"] == 3 * 6 and prow["norm_measure"] == "head_pct"
            assert prow["corr_act_delta_out_norm"] == pytest.approx(
                np.corrcoef(a[:, 4:10].reshape(-1), pct)[0, 1], abs=1e-3)
    finally:
        tl.set_use_split_qkv_input(False)
    vn = r.value_norms.set_index(["layer", "head"])
    for layer in range(tl.cfg.n_layers):
        v = repeat_kv(clean[f"blocks.{layer}.attn.hook_v"], tl.cfg.n_heads)  # [b, pos, H, d_head]
        norms = torch.einsum("bphd,hdm->bphm", v, tl.W_O[layer]).norm(dim=-1)  # [b, pos, H]
        np.testing.assert_allclose(vn.loc[layer, "bos_norm"], norms[:, 0].mean(0), rtol=1e-4)
        np.testing.assert_allclose(vn.loc[layer, "other_norm_mean"], norms[:, 1:].mean((0, 1)),
                                   rtol=1e-4)


@pytest.mark.parametrize("kind", ["neox", "llama"])
def test_attention_command_end_to_end(tmp_path, kind):
    import pandas as pd

    from universal_neurons.cli import main

    folder, ds = saved_model(tmp_path, kind)
    run = tmp_path / "run"
    argv = ["attention", "--model", str(folder), "--dataset", str(ds), "--tokens", "32",
            "--top-pairs", "1", "--out", str(run), "--quiet", "--positions", "1:"]
    assert main(argv) == 0
    d = run / "attention"
    for f in ("heuristic_top.csv", "heuristic_hist.parquet", "heuristic_summary.json",
              "path_ablation.csv", "path_ablation_points.parquet", "bos_value_norms.csv"):
        assert (d / f).exists(), f
    for f in ("heuristic", "path_ablation", "bos_value_norms"):
        assert (run / "plots" / f"attention_{f}.png").stat().st_size > 0
    pa = pd.read_parquet(d / "path_ablation.parquet")
    top = pd.read_parquet(d / "heuristic_top.parquet")
    assert list(pa["pair"]) == [top["pair"].iloc[0], top.sort_values("score")["pair"].iloc[0]]
    assert (pa["n_tokens"] == 2 * 15).all()
    assert len(pd.read_parquet(d / "bos_value_norms.parquet")) == 3 * 4
    stage = json.loads((run / "manifest.json").read_text())["stages"]["attention"]
    assert stage["pairs"] == list(pa["pair"])
    assert main([*argv[:-3], "--pairs", "L0.1:L3.0", "--out", str(run), "--quiet"]) == 2
