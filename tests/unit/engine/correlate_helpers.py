"""Helpers for the correlation-engine tests: synthetic activations, tiny GPT-2 suites saved
as HF folders, token datasets, and numpy float64 oracles (no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from universal_neurons.engine.rotation import baseline_basis

WORDS = ("the cat dog sat ran on a mat rug red blue big small old new quick slow fox bird "
         "tree house river stone light dark day night one two three").split()


def documents(n: int = 120, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        lines = [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 14)))).capitalize() + "."
                 for _ in range(int(rng.integers(2, 6)))]
        docs.append(("\n\n" if i % 3 == 0 else "\n").join(lines))
    return docs


def make_tokenizer(out: Path, seed: int = 0, vocab_size: int = 512):
    from universal_neurons.zoo.tokenizer import train_tokenizer

    return train_tokenizer(documents(300, seed=seed + 1), out, vocab_size=vocab_size)


def make_model(out: Path, tokenizer, seed: int, n_layer: int = 2, d_model: int = 32,
               d_mlp: int = 64, n_ctx: int = 64, base: Path | None = None,
               noise: float = 0.0) -> Path:
    """A random GPT-2 saved with its tokenizer. With ``base``: a copy of that model with its
    MLP neurons permuted per layer and neuron ``j``'s input weights perturbed by noise of
    scale ``noise * j / d_mlp`` (so some neurons match the base closely, others not)."""
    from transformers import GPT2LMHeadModel

    from helpers import tiny_model

    if base is None:
        model = tiny_model("gpt2", seed=seed, perturb=0.2, n_layers=n_layer, d_model=d_model,
                           n_heads=4, d_mlp=d_mlp, vocab=len(tokenizer), n_ctx=n_ctx)
    else:
        torch.manual_seed(seed)
        model = GPT2LMHeadModel.from_pretrained(base)
        with torch.no_grad():
            for block in model.transformer.h:
                fc, proj = block.mlp.c_fc, block.mlp.c_proj  # Conv1D: [d_model, d_mlp], [d_mlp, d_model]
                d = fc.weight.shape[1]
                perm = torch.randperm(d)
                scale = noise * torch.arange(d) / d
                fc.weight.copy_(fc.weight[:, perm] + torch.randn_like(fc.weight) * scale)
                fc.bias.copy_(fc.bias[perm])
                proj.weight.copy_(proj.weight[perm])
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def make_dataset(out: Path, tokenizer, n_ctx: int = 32, tokens: int | None = None, seed: int = 0):
    from universal_neurons.data.dataset import build_token_dataset
    from universal_neurons.data.sources import TextSource

    docs = documents(200, seed=seed)
    src = TextSource(name="test-docs", read=lambda: iter(docs))
    return build_token_dataset(src, tokenizer, out, n_ctx=n_ctx, tokens=tokens,
                               show_progress=False)


def synthetic(n: int, sizes: list[int], seed: int = 0, dead: tuple[int, ...] = ()) -> np.ndarray:
    """``Float32[n, sum(sizes)]``: shared latent factors (so some neurons correlate strongly
    across models), offsets far from zero, heavy tails; columns in ``dead`` constant."""
    rng = np.random.default_rng(seed)
    lat = rng.standard_normal((n, 6))
    cols = []
    for k in sizes:
        w = rng.standard_normal((6, k)) * rng.uniform(0.2, 2, k)
        noise = rng.standard_normal((n, k)) ** 3 * 0.3 + rng.standard_normal((n, k))
        cols.append(lat @ w + noise * rng.uniform(0.1, 1.5, k) + rng.uniform(-3, 5, k))
    z = np.concatenate(cols, 1).astype(np.float32)
    for j in dead:
        z[:, j] = 1.7
    return z


def corr64(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Float64 Pearson correlations ``[x.shape[1], y.shape[1]]`` (NaN for constant columns)."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = np.corrcoef(x.T, y.T)[: x.shape[1], x.shape[1]:]
    sx, sy = x.std(0), y.std(0)
    c[sx <= 1e-6 * np.abs(x.mean(0)) + 1e-10, :] = np.nan
    c[:, sy <= 1e-6 * np.abs(y.mean(0)) + 1e-10] = np.nan
    return c


def rotate(y: np.ndarray, name: str, n_layers: int, d: int, kind: str = "rotation",
           seed: int = 0) -> np.ndarray:
    """Explicitly rotate each layer of ``y: [n, L*d]`` by the run's baseline basis."""
    y = y.astype(np.float64)
    return np.concatenate([y[:, i * d:(i + 1) * d] @ baseline_basis(kind, seed, name, i, d).numpy()
                           for i in range(n_layers)], 1)


def nanmax_rows(c: np.ndarray) -> np.ndarray:
    out = np.full(c.shape[0], np.nan)
    ok = ~np.all(np.isnan(c), 1)
    out[ok] = np.nanmax(c[ok], 1)
    return out


def brute_force_table(acts: dict[str, np.ndarray], shapes: dict[str, tuple[int, int]], ref: str,
                      partners: list[str], kind: str = "rotation", seed: int = 0,
                      threshold: float = 0.5) -> dict[str, np.ndarray]:
    """The paper's definitions on explicit activations, in float64 numpy."""
    x = acts[ref]
    maxes, bases = [], []
    for p in partners:
        L, d = shapes[p]
        maxes.append(nanmax_rows(corr64(x, acts[p])))
        bases.append(nanmax_rows(corr64(x, rotate(acts[p], p, L, d, kind, seed))))
    mc, mb = np.stack(maxes, 1), np.stack(bases, 1)
    excess = mc.mean(1) - mb.mean(1)
    return {"max_corr": mc.max(1), "mean_corr": mc.mean(1), "min_corr": mc.min(1),
            "mean_baseline": mb.mean(1), "excess_corr": excess,
            "is_universal": np.nan_to_num(excess, nan=-np.inf) > threshold,
            "per_partner": mc, "per_partner_baseline": mb}


def captured(suite, site="post", keep_all=False) -> dict[str, np.ndarray]:
    """Every model's activations on the kept tokens, ``[n_kept, L * d]`` float32."""
    from universal_neurons.data.dataset import open_token_dataset
    from universal_neurons.data.tokens import keep_mask
    from universal_neurons.models.loading import load_model

    ds = open_token_dataset(suite["dataset"])
    tokens = np.asarray(ds.tokens, dtype=np.int64)
    keep = keep_mask(tokens, suite["tokenizer"], keep_all).reshape(-1)
    out = {}
    for path in suite["models"]:
        m = load_model(path)
        acts = m.adapter.capture(torch.from_numpy(tokens), sites=(site,))[site]  # [L, b, p, d]
        rows = acts.permute(1, 2, 0, 3).reshape(keep.size, -1).numpy()
        out[m.name] = rows[keep]
    return out


def assert_hists_agree(got, want, exact: np.ndarray, tol: float = 1e-4) -> None:
    """Two correlation histograms ``[n, bins]`` on ``[-1, 1]`` computed in different
    reduction orders agree as far as the engine promises: the same count per row, and at
    every bin edge the net number of values that crossed it is at most the number of exact
    (float64) correlations within ``tol`` of that edge. ``tol`` is the engine's tested
    error against float64 (docs/engine.md): a value can land on different sides of an edge
    in the two runs only if its exact value lies that close to the edge."""
    got, want = np.asarray(got, dtype=np.int64), np.asarray(want, dtype=np.int64)
    assert got.shape == want.shape
    n, bins = got.shape
    np.testing.assert_array_equal(got.sum(1), want.sum(1))
    crossed = np.abs(np.cumsum(got - want, axis=1)[:, :-1])  # [n, bins - 1] interior edges
    edges = np.linspace(-1.0, 1.0, bins + 1)[1:-1]
    near = np.zeros((n, bins - 1), dtype=np.int64)
    for e, edge in enumerate(edges):
        near[:, e] = np.sum(np.abs(exact - edge) <= tol, axis=1)  # NaN compares False
    bad = np.argwhere(crossed > near)
    assert bad.size == 0, (f"{len(bad)} (row, edge) pairs moved more values than lie within "
                           f"{tol} of the edge, first {bad[:3].tolist()}")


def tiling_budget(plan, keep: float = 0.5) -> str:
    """A ``--max-memory`` that forces several passes: room for only ``keep`` of the cross
    co-moments of ``plan`` (one pass), even at a batch of one sequence (the planner may
    lower it). Below 1 / (row layers) it forces column tiles."""
    fwd = plan.bytes["forward"]
    return str(plan.total_bytes - int(plan.bytes["cross"] * (1 - keep)) - fwd
               + fwd // plan.batch_size)
