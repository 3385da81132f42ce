"""Weight statistics against numpy/scipy on TransformerLens's processed weights."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import stats

from helpers import tiny_model, tl_oracle
from universal_neurons.analysis.weights import NEURON_COLUMNS, WeightStats, compute_weight_stats

N_LAYERS, D_MODEL, N_HEADS, D_VOCAB, N_CTX = 3, 32, 4, 96, 16
D_MLP = 4 * D_MODEL
TL_FIELDS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_in", "b_in", "W_out", "W_U")


@pytest.fixture(scope="module")
def models():
    """A random HF GPT-2 (LayerNorm parameters randomised too) and TL's processed copy."""
    hf = tiny_model("gpt2", perturb=0.0, n_layers=N_LAYERS, d_model=D_MODEL, n_heads=N_HEADS,
                    d_mlp=D_MLP, vocab=D_VOCAB, n_ctx=N_CTX, activation_function="gelu_new")
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "ln" in name:
                p.copy_(torch.randn_like(p) * 0.2 + (1.0 if name.endswith("weight") else 0.0))
            else:
                p.copy_(torch.randn_like(p) * 0.1)
    tl = tl_oracle(hf, fold_ln=True, center_writing_weights=True, center_unembed=True)
    tl_pw = SimpleNamespace(**{k: getattr(tl, k).detach().clone() for k in TL_FIELDS},
                            W_gate=None)
    return hf, tl_pw


@pytest.fixture(scope="module")
def tl_stats(models):
    return compute_weight_stats(models[1], top_k=5, chunk_elements=1000,
                                matmul_dtype=torch.float64, compositions=True)


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_neuron_and_vocab_stats_equal_numpy_scipy(models, tl_stats):
    pw = models[1]
    W_in, b_in, W_out = (getattr(pw, k).double().numpy() for k in ("W_in", "b_in", "W_out"))
    W_U, W_E = pw.W_U.double().numpy(), pw.W_E.double().numpy()
    W_U_hat = W_U / np.linalg.norm(W_U, axis=0)  # columns = tokens
    W_E_hat = W_E / np.linalg.norm(W_E, axis=1, keepdims=True)  # rows = tokens
    a = tl_stats.arrays
    for layer in range(N_LAYERS):
        for i in range(D_MLP):
            wi, wo = W_in[layer, :, i], W_out[layer, i]
            expect = {"w_in_norm": np.linalg.norm(wi), "w_out_norm": np.linalg.norm(wo),
                      "input_bias": b_in[layer, i], "in_out_sim": _cos(wi, wo),
                      "l2_penalty": wi @ wi + wo @ wo}
            cos_u = wo @ W_U_hat / np.linalg.norm(wo)
            expect.update(vocab_mean=cos_u.mean(), vocab_var=cos_u.var(),
                          vocab_skew=stats.skew(cos_u),
                          vocab_kurt=stats.kurtosis(cos_u, fisher=False))
            for k, v in expect.items():
                assert a[k][layer, i] == pytest.approx(v, rel=1e-9, abs=1e-12), (k, layer, i)
            order = np.argsort(-cos_u)
            assert a["vocab_top_ids"][layer, i].tolist() == order[:5].tolist()
            assert a["vocab_bottom_ids"][layer, i].tolist() == order[::-1][:5].tolist()
            np.testing.assert_allclose(a["vocab_top_cos"][layer, i], cos_u[order[:5]], rtol=1e-6)
            cos_e = W_E_hat @ wi / np.linalg.norm(wi)
            assert a["embed_top_ids"][layer, i].tolist() == np.argsort(-cos_e)[:5].tolist()
            assert a["embed_bottom_ids"][layer, i].tolist() == np.argsort(cos_e)[:5].tolist()


def test_random_direction_has_kurtosis_about_three():
    torch.manual_seed(1)
    d, v = 64, 20000
    pw = SimpleNamespace(W_in=torch.randn(1, d, 8), b_in=torch.zeros(1, 8), W_gate=None,
                         W_out=torch.randn(1, 8, d), W_U=torch.randn(d, v), W_E=torch.randn(v, d),
                         W_Q=torch.randn(1, 2, d, 4), W_K=torch.randn(1, 2, d, 4),
                         W_V=torch.randn(1, 2, d, 4), W_O=torch.randn(1, 2, 4, d))
    kurt = compute_weight_stats(pw, top_k=3).arrays["vocab_kurt"]
    assert np.all(np.abs(kurt - 3) < 0.3)


def test_neuron_composition_equals_brute_force(models, tl_stats):
    pw = models[1]
    w_in = pw.W_in.double().numpy().transpose(0, 2, 1).reshape(-1, D_MODEL)
    w_out = pw.W_out.double().numpy().reshape(-1, D_MODEL)
    w_in /= np.linalg.norm(w_in, axis=1, keepdims=True)
    w_out /= np.linalg.norm(w_out, axis=1, keepdims=True)
    a = tl_stats.arrays
    for layer in range(N_LAYERS - 1):
        start = (layer + 1) * D_MLP
        for i in (0, 17, D_MLP - 1):
            cos = w_in[start:] @ w_out[layer * D_MLP + i]
            order = np.argsort(-cos)
            assert a["neuron_top_ids"][layer, i].tolist() == (order[:5] + start).tolist()
            assert a["neuron_bottom_ids"][layer, i].tolist() == (order[::-1][:5] + start).tolist()
            np.testing.assert_allclose(a["neuron_top_cos"][layer, i], cos[order[:5]], rtol=1e-6)
    assert np.all(a["neuron_top_ids"][-1] == -1) and np.all(np.isnan(a["neuron_top_cos"][-1]))


def test_attention_composition_equals_loops(models, tl_stats):
    pw = models[1]
    a = tl_stats.arrays
    W_out, W_in = pw.W_out.double().numpy(), pw.W_in.double().numpy()
    for layer, i in ((0, 3), (1, 100), (2, 7)):
        wo, wi = W_out[layer, i], W_in[layer, :, i]
        for tgt in range(N_LAYERS):
            for h in range(N_HEADS):
                for x in "qkv":
                    W = getattr(pw, f"W_{x.upper()}")[tgt, h].double().numpy()  # [d_model, d_head]
                    got = a[f"attn_{x}_comp"][layer, i, tgt, h]
                    if tgt > layer:
                        expect = np.linalg.norm(wo @ W) / np.linalg.norm(wo) / np.linalg.norm(W)
                        assert got == pytest.approx(expect, rel=1e-5)
                    else:
                        assert np.isnan(got)
                WO = pw.W_O[tgt, h].double().numpy()  # [d_head, d_model]
                got = a["attn_o_comp"][layer, i, tgt, h]
                if tgt <= layer:
                    expect = np.linalg.norm(WO @ wi) / np.linalg.norm(WO) / np.linalg.norm(wi)
                    assert got == pytest.approx(expect, rel=1e-5)
                else:
                    assert np.isnan(got)


def test_adapter_processed_weights_give_tl_statistics(models, tl_stats):
    """Our adapter's processed weights (models/) reproduce TL's statistics to 1e-5."""
    adapters = pytest.importorskip("universal_neurons.models.adapters")
    hf, _ = models
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    ours = compute_weight_stats(adapters.adapter_for(hf).processed_weights(), top_k=5,
                                matmul_dtype=torch.float64, compositions=True)
    assert all(torch.equal(before[k], v) for k, v in hf.state_dict().items())  # untouched
    for c in NEURON_COLUMNS:
        got, expect = ours.arrays[c], tl_stats.arrays[c]
        scale = np.abs(expect).max()
        assert np.max(np.abs(got - expect)) <= 1e-5 * scale, c
    for c in ("attn_q_comp", "attn_o_comp", "vocab_top_cos", "neuron_top_cos"):
        np.testing.assert_allclose(ours.arrays[c], tl_stats.arrays[c], rtol=1e-5, atol=1e-6)


def test_float32_matmuls_stay_close(models, tl_stats):
    fast = compute_weight_stats(models[1], top_k=5, matmul_dtype=torch.float32,
                                compositions=True).arrays
    for c in NEURON_COLUMNS:  # skew can be ~0: absolute error (it is of order 1)
        atol = 1e-6 if c == "vocab_skew" else 1e-7
        np.testing.assert_allclose(fast[c], tl_stats.arrays[c], rtol=1e-5, atol=atol, err_msg=c)
    for c in ("vocab_top_cos", "neuron_top_cos", "attn_k_comp", "attn_o_comp"):
        np.testing.assert_allclose(fast[c], tl_stats.arrays[c], atol=1e-6, err_msg=c)


def test_default_is_float32_without_compositions(models, tl_stats):
    """The default keeps what the report and the neuron table read, nothing else."""
    a = compute_weight_stats(models[1], top_k=5).arrays
    assert set(a) == {*NEURON_COLUMNS, "vocab_top_ids", "vocab_top_cos", "vocab_bottom_ids",
                      "vocab_bottom_cos"}
    for c in NEURON_COLUMNS:
        atol = 1e-6 if c == "vocab_skew" else 1e-7
        np.testing.assert_allclose(a[c], tl_stats.arrays[c], rtol=1e-5, atol=atol, err_msg=c)
    np.testing.assert_array_equal(a["vocab_top_ids"], tl_stats.arrays["vocab_top_ids"])
    assert a["vocab_top_ids"].dtype == np.int32 and a["vocab_top_cos"].dtype == np.float32


@pytest.mark.parametrize(("dtype", "tile"), [(torch.float32, 4096), (torch.float64, 4096),
                                             (torch.float32, 1250)])
def test_large_vocab_equals_float64_oracle(dtype, tile, monkeypatch):
    """A vocabulary large enough for the blocked top-k, against numpy/scipy in float64;
    float32 products: vocab moments within 2e-5 relative, cosines within 1e-6. Tiles of
    1,250 columns: the last one (3 columns) has fewer than k."""
    from universal_neurons.analysis import weights

    monkeypatch.setattr(weights, "VOCAB_TILE", tile)
    rng = np.random.default_rng(3)
    d, m, v, k = 64, 24, 5003, 7
    W_U = rng.normal(size=(d, v)) * rng.uniform(0.2, 2, size=v)  # unequal token norms
    W_U -= W_U.mean(1, keepdims=True)
    W_out = rng.normal(size=(2, m, d)) + 0.3 * W_U[:, 0]  # a common direction -> skewed
    pw = SimpleNamespace(W_in=torch.randn(2, d, m), b_in=torch.zeros(2, m), W_gate=None,
                         W_out=torch.from_numpy(W_out).float(), W_U=torch.from_numpy(W_U).float())
    a = compute_weight_stats(pw, top_k=k, matmul_dtype=dtype, chunk_elements=3 * v).arrays
    W_U = pw.W_U.double().numpy()
    W_U_hat = W_U / np.linalg.norm(W_U, axis=0)
    wo = pw.W_out.double().numpy().reshape(-1, d)
    cos = (wo / np.linalg.norm(wo, axis=1, keepdims=True)) @ W_U_hat  # [N, V]
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    expect = {"vocab_mean": cos.mean(1), "vocab_var": cos.var(1),
              "vocab_skew": stats.skew(cos, axis=1),
              "vocab_kurt": stats.kurtosis(cos, axis=1, fisher=False)}
    for c, e in expect.items():
        scale = 1.0 if c == "vocab_skew" else np.abs(e)  # skew may be ~0: absolute
        assert np.all(np.abs(a[c].ravel() - e) <= tol * scale), c
    order = np.argsort(-cos, axis=1)
    np.testing.assert_array_equal(a["vocab_top_ids"].reshape(-1, k), order[:, :k])
    np.testing.assert_array_equal(a["vocab_bottom_ids"].reshape(-1, k), order[:, ::-1][:, :k])
    np.testing.assert_allclose(a["vocab_top_cos"].reshape(-1, k),
                               np.take_along_axis(cos, order[:, :k], 1), atol=1e-6)


def test_blocked_topk_equals_torch_topk():
    from universal_neurons.analysis.weights import _topk_both

    torch.manual_seed(4)
    for V in (64 * 21, 64 * 21 + 13, 5000):
        x = torch.randn(9, V)
        got = _topk_both(x, 10)
        for name, largest in (("top", True), ("bottom", False)):
            t = x.topk(10, dim=1, largest=largest)
            assert torch.equal(got[f"{name}_ids"], t.indices), (V, name)
            assert torch.equal(got[f"{name}_cos"], t.values), (V, name)


def test_gated_mlp_uses_gate_as_input_direction():
    torch.manual_seed(2)
    d, m, v = 16, 8, 30
    pw = SimpleNamespace(W_in=torch.randn(1, d, m), b_in=torch.randn(1, m),
                         W_gate=torch.randn(1, d, m) * 3, W_out=torch.randn(1, m, d),
                         W_U=torch.randn(d, v), W_E=torch.randn(v, d),
                         W_Q=torch.randn(1, 2, d, 4), W_K=torch.randn(1, 2, d, 4),
                         W_V=torch.randn(1, 2, d, 4), W_O=torch.randn(1, 2, 4, d))
    a = compute_weight_stats(pw, top_k=3).arrays
    np.testing.assert_allclose(a["w_in_norm"][0], pw.W_gate[0].double().norm(dim=0).numpy())
    assert np.all(a["input_bias"] == 0)


def test_save_load_and_token_frame(tmp_path, tl_stats):
    class Tok:
        def decode(self, ids):
            return f"<{ids[0]}>"

    tl_stats.save(tmp_path, tokenizer=Tok(), meta={"model": "m"})
    back = WeightStats.load(tmp_path)
    assert set(back.arrays) == set(tl_stats.arrays)
    df = back.frame()
    assert list(df.columns) == ["layer", "neuron", *NEURON_COLUMNS] and len(df) == N_LAYERS * D_MLP
    import pandas as pd

    tokens = pd.read_parquet(tmp_path / "weight_tokens.parquet")
    row = tokens[(tokens.list == "vocab_top") & (tokens.layer == 1) & (tokens.neuron == 2)
                 & (tokens["rank"] == 0)].iloc[0]
    assert row.token == f"<{tl_stats.arrays['vocab_top_ids'][1, 2, 0]}>"
