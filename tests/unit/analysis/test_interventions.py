"""Interventions: hooks always removed, identities change nothing, metrics match direct maths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_interventions_models import KINDS, random_tokens, tiny_model

from universal_neurons.analysis.interventions import (
    Intervention,
    forward_metrics,
    intervene,
    next_token_metrics,
    norm_scale,
    run_interventions,
)


def _hook_counts(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _logits(m, ids):
    with torch.no_grad():
        return m.hf_model(ids).logits


@pytest.mark.parametrize("kind", KINDS)
def test_intervention_changes_model_inside_only(kind):
    m = tiny_model(kind)
    ids = random_tokens()
    before, n_hooks = _logits(m, ids), _hook_counts(m.hf_model)
    iv = [Intervention(((2, 5), (1, 7)), "fix", 4.0), Intervention.on("L0.3", kind="zero", site="pre")]
    with intervene(m.adapter, iv):
        assert _hook_counts(m.hf_model) == n_hooks + 3
        during = _logits(m, ids)
        acts = m.adapter.capture(ids, sites=("pre", "post"), stop_after_last_mlp=False)
    assert not torch.allclose(during, before)
    assert torch.all(acts["post"][2, ..., 5] == 4.0) and torch.all(acts["post"][1, ..., 7] == 4.0)
    assert torch.all(acts["pre"][0, ..., 3] == 0.0)
    assert _hook_counts(m.hf_model) == n_hooks
    assert torch.equal(_logits(m, ids), before)


def test_hooks_removed_when_block_raises():
    m = tiny_model("gpt2")
    ids, n_hooks = random_tokens(), _hook_counts(m.hf_model)
    before = _logits(m, ids)
    with pytest.raises(RuntimeError, match="boom"), intervene(m.adapter, Intervention.on("L1.2", value=9.0)):
        assert _hook_counts(m.hf_model) == n_hooks + 1
        raise RuntimeError("boom")
    assert _hook_counts(m.hf_model) == n_hooks
    assert torch.equal(_logits(m, ids), before)


def test_bad_neuron_registers_nothing():
    m = tiny_model("gpt2")
    n_hooks = _hook_counts(m.hf_model)
    with pytest.raises(ValueError, match="L1.64 does not exist"), intervene(
            m.adapter, [Intervention.on("L0.1"), Intervention.on("L1.64")]):
        pass
    assert _hook_counts(m.hf_model) == n_hooks


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("site", ["pre", "post"])
def test_identity_interventions_change_nothing(kind, site):
    m = tiny_model(kind)
    ids = random_tokens()
    before = _logits(m, ids)
    neurons = ((0, 1), (2, 40), (2, 41))
    with intervene(m.adapter, Intervention(neurons, "multiply", 1.0, site)):
        assert torch.equal(_logits(m, ids), before)
    # fixing a neuron to its own (captured) activation: one position, so one value
    one = ids[:1, :1]
    ref = _logits(m, one)
    a = float(m.adapter.capture(one, sites=(site,))[site][2, 0, 0, 40])
    with intervene(m.adapter, Intervention(((2, 40),), "fix", a, site)):
        assert torch.equal(_logits(m, one), ref)


def test_intervention_kinds_apply():
    x = torch.tensor([-1.0, 0.5, 2.0])
    one = ((0, 0),)
    assert Intervention(one, "zero").apply(x).tolist() == [0, 0, 0]
    assert Intervention(one, "fix", 3).apply(x).tolist() == [3, 3, 3]
    assert Intervention(one, "multiply", 2).apply(x).tolist() == [-2, 1, 4]
    assert Intervention(one, "threshold", 1).apply(x).tolist() == [0, 0, 2]
    assert Intervention(one, "relu").apply(x).tolist() == [0, 0.5, 2]
    assert Intervention.on("L3.17", "L4.1", value=2).label == "fix(L3.17,L4.1)=2"
    with pytest.raises(ValueError, match="unknown intervention kind 'clip'"):
        Intervention(one, "clip")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one neuron"):
        Intervention((), "zero")


def test_next_token_metrics_match_direct_computation():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    tokens = torch.randint(0, 7, (2, 5), generator=g)
    m = next_token_metrics(logits, tokens)
    for b in range(2):
        for t in range(4):
            z = logits[b, t].numpy()
            p = np.exp(z - z.max())
            p /= p.sum()
            y = int(tokens[b, t + 1])
            assert m["loss"][b, t] == pytest.approx(-math.log(p[y]), rel=1e-5)
            assert m["entropy"][b, t] == pytest.approx(-(p * np.log(p)).sum(), rel=1e-5)
            assert int(m["rank"][b, t]) == 1 + int((z > z[y]).sum())


@pytest.mark.parametrize("kind", KINDS)
def test_ln_scale_matches_final_norm(kind):
    m = tiny_model(kind)
    ids = random_tokens()
    norm = m.adapter.final_norm_module()
    seen = []
    h = norm.register_forward_hook(lambda _m, a, o: seen.append((a[0], o)))
    try:
        out = forward_metrics(m, ids)
    finally:
        h.remove()
    x, y = seen[0]
    x64 = x.double()
    direct = torch.sqrt(x64.var(-1, unbiased=False) + norm.eps)
    torch.testing.assert_close(out["ln_scale"], direct[:, :-1])
    # the scale is the one the norm divides by: reconstruct its output
    recon = (x64 - x64.mean(-1, keepdim=True)) / norm_scale(norm, x)[..., None] * norm.weight + norm.bias
    torch.testing.assert_close(recon.float(), y, atol=1e-5, rtol=1e-5)
    logits = _logits(m, ids)
    torch.testing.assert_close(out["loss"], torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    ).reshape(out["loss"].shape), atol=1e-5, rtol=1e-5)


def test_run_interventions_summaries_and_tokens(tmp_path):
    from universal_neurons.rundir import RunDir

    m = tiny_model("gpt2")
    toks = random_tokens(6, 12).numpy()
    ivs = [None, Intervention.on("L2.3", value=3.0), Intervention.on("L2.3", kind="multiply", value=1.0)]
    seen = []
    res = run_interventions(m, [(0, toks[:4]), (4, toks[4:])], ivs, keep_tokens=True,
                            progress=seen.append)
    s = res.summary.set_index("label")
    assert list(s.index) == ["clean", "fix(L2.3)=3", "multiply(L2.3)=1"]
    assert seen == [4 * 12, 2 * 12] and (s["n_tokens"] == 66).all()
    for col in ("loss", "entropy", "ln_scale", "reciprocal_rank"):
        assert s.loc["clean", col] == pytest.approx(s.loc["multiply(L2.3)=1", col], rel=1e-6)
    assert s.loc["clean", "ln_scale"] != pytest.approx(s.loc["fix(L2.3)=3", "ln_scale"])
    # summaries are means of the per-token rows, which match a direct pass
    t = res.tokens[res.tokens["label"] == "clean"]
    assert len(t) == 66 and list(t["seq"][:12]) == [0] * 11 + [1]
    assert s.loc["clean", "loss"] == pytest.approx(t["loss"].astype(float).mean(), rel=1e-9)
    assert s.loc["clean", "reciprocal_rank"] == pytest.approx((1 / t["rank"]).mean(), rel=1e-9)
    direct = forward_metrics(m, torch.as_tensor(toks))
    np.testing.assert_allclose(t["entropy"].to_numpy(), direct["entropy"].reshape(-1).numpy(),
                               rtol=1e-6)
    rd = RunDir(tmp_path / "run")
    res.save(rd.path, "sweep")
    assert (rd.path / "sweep.parquet").exists() and (rd.path / "sweep.csv").exists()
    assert (rd.path / "sweep_tokens.parquet").exists()


def test_norm_scale_of_rmsnorm():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    norm = LlamaRMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 8)
    scale = norm_scale(norm, x)
    torch.testing.assert_close(scale, torch.sqrt(x.double().pow(2).mean(-1) + 1e-5))
    torch.testing.assert_close((x / scale[..., None] * norm.weight).float(), norm(x))
    with pytest.raises(ValueError, match="cannot compute the scale of a Linear"):
        norm_scale(torch.nn.Linear(8, 8), x)
