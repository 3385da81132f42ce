"""Entropy neurons: the weight-based finder and the fixed-activation sweep."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_interventions_models import random_tokens, saved_model, tiny_model

from universal_neurons.analysis.entropy import (
    baseline_neurons,
    baseline_pool,
    entropy_sweep,
    find_entropy_candidates,
    null_space_basis,
    vocab_cos_var,
)
from universal_neurons.analysis.interventions import forward_metrics
from universal_neurons.stages.entropy import EntropyConfig


def _orthonormal(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))[0]


def test_null_space_basis_takes_smallest_directions_within_energy():
    U, V = _orthonormal(8, 0), _orthonormal(20, 1)[:8]
    S = torch.tensor([10, 9, 8, 7, 6, 1.0, 0.5, 0.0], dtype=torch.float64)
    W_U = U @ torch.diag(S) @ V  # [8, 20]
    total = float((S**2).sum())  # 331.25; the smallest 3 hold 1.25 (0.38%), 4 hold 37.25
    for energy, k in ((0.001, 2), (0.004, 3), (0.1, 3), (0.2, 4)):
        P = null_space_basis(W_U, energy)
        assert P.shape == (8, k), (energy, float((S[-k:] ** 2).sum()) / total)
        proj = P @ P.T  # projector onto the span of the k smallest left singular vectors
        torch.testing.assert_close(proj, U[:, -k:] @ U[:, -k:].T, atol=1e-8, rtol=0)


def _weights(W_out: torch.Tensor, W_U: torch.Tensor):
    import types

    return types.SimpleNamespace(W_out=W_out.float(), W_U=W_U.float())


def test_finder_ranks_planted_entropy_and_anti_entropy_pair():
    d_model, d_vocab = 16, 50
    U = _orthonormal(d_model, 2)
    S = torch.linspace(5, 1, d_model, dtype=torch.float64)
    S[-2:] = torch.tensor([0.05, 0.01])  # a 2-dim effective null space
    W_U = U @ torch.diag(S) @ _orthonormal(d_vocab, 3)[:d_model]  # SVD known
    g = torch.Generator().manual_seed(4)
    W_out = 0.3 * torch.randn(2, 12, d_model, generator=g, dtype=torch.float64)
    null_dir = U[:, -2:] @ torch.tensor([0.8, 0.6], dtype=torch.float64)
    W_out[1, 5] = 3.0 * null_dir + 0.05 * torch.randn(d_model, generator=g, dtype=torch.float64)
    W_out[1, 9] = -2.0 * null_dir + 0.3 * torch.randn(d_model, generator=g, dtype=torch.float64)
    cands, pairs = find_entropy_candidates(_weights(W_out, W_U), null_energy=0.001, top_k=5)
    assert cands.attrs["null_dims"] == 2
    assert list(cands["neuron_name"][:2]) == ["L1.5", "L1.9"]
    assert cands["rank"].tolist() == list(range(1, 25))
    best = cands.iloc[0]
    assert best["null_frac"] > 0.99 and best["w_out_norm"] == pytest.approx(float(W_out[1, 5].norm()), rel=1e-5)
    assert {pairs.iloc[0]["neuron_a"], pairs.iloc[0]["neuron_b"]} == {"L1.5", "L1.9"}
    w5, w9 = W_out[1, 5], W_out[1, 9]
    assert pairs.iloc[0]["cos"] == pytest.approx(float(w5 @ w9 / w5.norm() / w9.norm()), abs=1e-5)
    # vocab_var against a direct numpy computation
    row = cands.set_index("neuron_name").loc["L0.3"]
    Wu = W_U.float().double().numpy()
    w = W_out[0, 3].float().double().numpy()
    cos = (w @ Wu) / np.linalg.norm(w) / np.linalg.norm(Wu, axis=0)
    assert row["vocab_var"] == pytest.approx(cos.var(), rel=1e-6)
    assert best["vocab_var"] < cands["vocab_var"].median()
    only_last = find_entropy_candidates(_weights(W_out, W_U), layers=[1], top_k=3)[0]
    assert set(only_last["layer"]) == {1} and len(only_last) == 12


def test_vocab_cos_var_chunks_agree():
    g = torch.Generator().manual_seed(0)
    W, W_U = torch.randn(7, 5, generator=g), torch.randn(5, 11, generator=g)
    torch.testing.assert_close(vocab_cos_var(W, W_U, chunk=2), vocab_cos_var(W, W_U))


def test_baseline_neurons_are_seeded_distinct_and_from_last_layers():
    a = baseline_neurons(4, 10, 8, last_layers=2, seed=1, exclude=[(3, 0)])
    assert a == baseline_neurons(4, 10, 8, last_layers=2, seed=1, exclude=[(3, 0)])
    assert len(set(a)) == 8 and all(layer >= 2 for layer, _ in a) and (3, 0) not in a
    with pytest.raises(ValueError, match="lower --baseline"):
        baseline_neurons(4, 10, 20, last_layers=1)


def test_baseline_pool_is_the_papers_filter():
    """The paper's sample_baseline_neurons (analysis/entropy_neurons.py): pandas quantiles
    over every neuron, then ``layer > max_layer - 2 and l2_penalty <= q90 and vocab_var >=
    q10``; recomputed here with pandas from the raw weights."""
    import types

    import pandas as pd

    g = torch.Generator().manual_seed(11)
    L, d_mlp, d_model, d_vocab = 4, 30, 8, 40
    W_in = torch.randn(L, d_model, d_mlp, generator=g) * torch.linspace(0.2, 2, d_mlp)
    W_out = torch.randn(L, d_mlp, d_model, generator=g)
    W_U = torch.randn(d_model, d_vocab, generator=g)
    pw = types.SimpleNamespace(W_in=W_in, b_in=torch.zeros(L, d_mlp), W_out=W_out, W_U=W_U)
    rows = []
    Wu = W_U.double().numpy()
    Wu = Wu / np.linalg.norm(Wu, axis=0)
    for lay in range(L):
        for n in range(d_mlp):
            wi, wo = W_in[lay, :, n].double().numpy(), W_out[lay, n].double().numpy()
            cos = (wo / np.linalg.norm(wo)) @ Wu
            rows.append({"layer": lay, "neuron": n, "l2_penalty": wi @ wi + wo @ wo,
                         "vocab_var": cos.var()})
    df = pd.DataFrame(rows)
    min_layer = df["layer"].max() - 2
    max_norm, min_var = df["l2_penalty"].quantile(0.9), df["vocab_var"].quantile(0.1)
    want = df[(df["layer"] > min_layer) & (df["l2_penalty"] <= max_norm)
              & (df["vocab_var"] >= min_var)]
    got = baseline_pool(pw, last_layers=2)
    assert got == [tuple(x) for x in want[["layer", "neuron"]].to_numpy().tolist()]
    assert 0 < len(got) < 2 * d_mlp  # the filter removes some neurons of the last layers
    drawn = baseline_neurons(L, d_mlp, 10, 2, seed=3, pool=got)
    assert len(set(drawn)) == 10 and set(drawn) <= set(got)


def test_entropy_defaults_are_the_papers():
    c = EntropyConfig(model="m", out="o")
    assert c.values == (-0.17, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    assert c.baseline_draw == "filtered" and not c.count_special and c.baseline_layers == 2


def test_sweep_leaves_out_special_tokens_and_the_last_position():
    m = tiny_model("gpt2")
    toks = random_tokens(4, 12).numpy()
    toks[:, 0] = 0  # "BOS" at position 0, and once in the middle
    toks[1, 6] = 0
    res = entropy_sweep(m, [(0, toks)], [(2, 5)], [-0.17, 3.0], skip_ids=[0])
    direct = forward_metrics(m, torch.as_tensor(toks))  # rows: positions 0 .. n_ctx - 2
    valid = toks[:, :-1] != 0  # the paper: token != BOS and position != last
    clean = res.summary[res.summary["group"] == "clean"].iloc[0]
    assert clean["n_tokens"] == valid.sum() == 4 * 11 - 5
    for k in ("entropy", "loss", "ln_scale"):
        want = direct[k].double().numpy()[valid].mean()
        assert clean[k] == pytest.approx(want, rel=1e-6), k
    rr = (1 / direct["rank"].double().numpy())[valid].mean()
    assert clean["reciprocal_rank"] == pytest.approx(rr, rel=1e-6)
    every = entropy_sweep(m, [(0, toks)], [(2, 5)], [3.0]).summary
    assert (every["n_tokens"] == 4 * 11).all()


def _plant_entropy_neuron(m, layer: int, neuron: int, scale: float = 3.0) -> None:
    """GPT-2: remove a centred direction u from the (tied) unembedding, make the final LN
    plain, and write the neuron's output along u."""
    hf = m.hf_model
    u = torch.randn(m.adapter.d_model, generator=torch.Generator().manual_seed(7))
    u = u - u.mean()
    u = u / u.norm()
    with torch.no_grad():
        wte = hf.transformer.wte.weight
        wte.sub_(torch.outer(wte @ u, u))
        hf.transformer.ln_f.weight.fill_(1.0)
        hf.transformer.ln_f.bias.zero_()
        hf.transformer.h[layer].mlp.c_proj.weight[neuron] = scale * u


def test_sweep_of_planted_entropy_neuron():
    m = tiny_model("gpt2")
    _plant_entropy_neuron(m, 2, 5)
    cands, _ = find_entropy_candidates(m.adapter.processed_weights(), null_energy=0.01)
    assert cands.iloc[0]["neuron_name"] == "L2.5" and cands.iloc[0]["null_frac"] > 0.99
    toks = random_tokens(4, 12).numpy()
    values = [0.0, 2.0, 4.0, 8.0]
    res = entropy_sweep(m, [(0, toks)], [(2, 5)], values, baseline=[(2, 6), (1, 3)],
                        keep_tokens=True)
    s = res.summary
    assert list(s["group"].value_counts().sort_index()) == [8, 1, 4]  # baseline, clean, target
    t = s[s["group"] == "target"].sort_values("value")
    assert np.all(np.diff(t["ln_scale"]) > 0) and np.all(np.diff(t["entropy"]) > 0)
    clean = s[s["group"] == "clean"].iloc[0]
    direct = forward_metrics(m, torch.as_tensor(toks))
    assert clean["entropy"] == pytest.approx(float(direct["entropy"].double().mean()), rel=1e-6)
    assert clean["ln_scale"] == pytest.approx(float(direct["ln_scale"].mean()), rel=1e-6)
    assert set(res.tokens["label"]) == {"clean", *t["label"]}


def test_entropy_config_validates():
    with pytest.raises(ValueError, match="values must be distinct"):
        EntropyConfig(model="m", out="o", values=(1, 1))
    with pytest.raises(ValueError, match="null_energy"):
        EntropyConfig(model="m", out="o", null_energy=1.5)


def test_entropy_command_end_to_end(tmp_path):
    from universal_neurons.cli import main

    folder, ds = saved_model(tmp_path)
    run = tmp_path / "run"
    argv = ["entropy", "--model", str(folder), "--dataset", str(ds), "--tokens", "32",
            "--values", "0", "4", "--baseline", "2", "--n-targets", "1", "--out", str(run),
            "--quiet"]
    assert main(argv) == 0
    for f in ("candidates.parquet", "candidates.csv", "candidate_pairs.csv", "sweep.parquet",
              "sweep.csv"):
        assert (run / "entropy" / f).exists(), f
    import pandas as pd

    sweep = pd.read_parquet(run / "entropy" / "sweep.parquet")
    target = sweep.loc[sweep["group"] == "target", "neuron"].iloc[0]
    assert (run / "plots" / f"entropy_{target}.png").stat().st_size > 0
    from universal_neurons.data.dataset import open_token_dataset

    toks = np.asarray(open_token_dataset(ds).tokens[:2])  # the 32 tokens run: 2 x 16
    bos = 0  # <|endoftext|>, BOS/EOS/pad of the saved tokenizer
    counted = int((toks[:, :-1] != bos).sum())  # the paper's rows; BOS is in column 0
    assert counted <= 2 * 14
    assert len(sweep) == 1 + 3 * 2 and (sweep["n_tokens"] == counted).all()
    stage = json.loads((run / "manifest.json").read_text())["stages"]["entropy"]
    assert stage["targets"] == [target] and len(stage["baseline"]) == 2
    assert main([*argv[:-3], "--neurons", "L9.0", "--out", str(run), "--quiet"]) == 2
