"""The heuristic score of attention-deactivation neurons (Gurnee et al. 2024, §5.3).

Every (neuron, later head) pair is scored from weights and one forward pass of the BOS
token: ``h = w_out · W_Q^h · k_BOS / sqrt(d_head)`` (TransformerLens-processed
``W_out``/``W_Q``; ``k_BOS`` = the head's key of BOS at position 0, bias included, where
rotary is the identity). A large positive h means the neuron, when it fires, pushes the
head's query towards the BOS key (the head attends to BOS = is switched off). The baseline
replaces each ``w_out`` by a random direction of the same norm.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from universal_neurons.constants import neuron_name
from universal_neurons.errors import UserError


def bos_id(tokenizer: Any) -> int:
    """The BOS id (EOS if there is no BOS), as in :mod:`universal_neurons.data.dataset`."""
    i = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if i is None:
        raise UserError("the tokenizer has neither a BOS nor an EOS token; attention "
                        "analyses need the BOS token every sequence starts with")
    return int(i)


@torch.no_grad()
def bos_keys(model: Any, bos: int | None = None) -> Tensor:
    """Every head's key of BOS at position 0 (bias included; rotary is the identity there).

    Returns ``Float[layers, heads, d_head]`` (float32, CPU).
    """
    adapter = model.adapter
    bos = bos_id(model.tokenizer) if bos is None else bos
    sites = [adapter.attention_modules(layer) for layer in range(adapter.n_layers)]
    keys: list[Tensor | None] = [None] * adapter.n_layers
    handles = []

    def make(i: int):
        def hook(_m, _args, out):
            keys[i] = sites[i].heads("k", out)[0, 0].detach().float().cpu()
        return hook

    device = next(model.hf_model.parameters()).device
    try:
        for i, s in enumerate(sites):
            handles.append(s.projection("k").register_forward_hook(make(i)))
        model.hf_model(torch.tensor([[bos]], device=device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(keys)  # type: ignore[arg-type]


def heuristic_scores(W_out: Tensor, W_Q: Tensor, k_bos: Tensor) -> Tensor:
    """``h[l, n, m, h] = W_out[l, n] · W_Q[m, h] · k_bos[m, h] / sqrt(d_head)``.

    ``W_out: [layers, d_mlp, d_model]``, ``W_Q: [layers, heads, d_model, d_head]``,
    ``k_bos: [layers, heads, d_head]`` -> ``Float[layers, d_mlp, layers, heads]``, NaN where
    the head is not after the neuron (``m <= l``).
    """
    W_out, W_Q, k_bos = W_out.float(), W_Q.float(), k_bos.float()
    u = torch.einsum("mhdk,mhk->mhd", W_Q, k_bos) / math.sqrt(W_Q.shape[-1])  # [L, H, D]
    s = torch.einsum("lnd,mhd->lnmh", W_out, u)
    L = W_out.shape[0]
    later = torch.arange(L)[None, :] > torch.arange(L)[:, None]  # [l, m]: m > l
    return s.masked_fill(~later[:, None, :, None], float("nan"))


def random_like_norms(W_out: Tensor, seed: int = 0, center: bool = True) -> Tensor:
    """Random directions with the norms of ``W_out: [layers, d_mlp, d_model]`` (Gaussian,
    centred over ``d_model`` when ``center`` -- as TL centres W_out -- then rescaled)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(W_out.shape, generator=g, dtype=torch.float32)
    if center:
        r = r - r.mean(-1, keepdim=True)
    return r / r.norm(dim=-1, keepdim=True) * W_out.float().norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class HeadPair:
    """A neuron and a head in a later layer."""

    layer: int
    neuron: int
    head_layer: int
    head: int

    def __post_init__(self) -> None:
        if self.head_layer <= self.layer:
            raise ValueError(f"head layer {self.head_layer} must come after neuron layer "
                             f"{self.layer} in pair {self.name}")

    @property
    def name(self) -> str:
        return f"{neuron_name(self.layer, self.neuron)}->L{self.head_layer}.H{self.head}"

    @classmethod
    def parse(cls, text: str) -> HeadPair:
        """``"L3.17:L5.2"`` or ``"L3.17->L5.H2"`` (neuron, then head layer and head)."""
        m = re.fullmatch(r"\s*L?(\d+)\.(\d+)\s*(?::|->)\s*L?(\d+)\.H?(\d+)\s*", text)
        if not m:
            raise ValueError(f"bad neuron-head pair {text!r}; write e.g. L3.17:L5.2 "
                             "(neuron L3.17, head 2 of layer 5)")
        return cls(*(int(g) for g in m.groups()))


def top_pairs(scores: Tensor, k: int, neurons: Sequence[tuple[int, int]] | None = None
              ) -> list[HeadPair]:
    """The ``k`` most positive and ``k`` most negative pairs of ``scores: [L, d_mlp, L, H]``
    (restricted to ``neurons`` if given), most extreme first, positive ones first."""
    s = scores
    if neurons is not None:
        keep = torch.zeros(scores.shape[:2], dtype=torch.bool)
        for layer, n in neurons:
            keep[layer, n] = True
        s = s.masked_fill(~keep[:, :, None, None], float("nan"))
    flat = s.reshape(-1)
    valid = ~flat.isnan()
    out: list[HeadPair] = []
    for sign in (1.0, -1.0):
        vals = torch.where(valid, sign * flat, torch.tensor(-math.inf))
        kk = min(k, int(valid.sum()))
        for i in torch.topk(vals, kk).indices.tolist():
            idx = np.unravel_index(i, tuple(scores.shape))
            p = HeadPair(*(int(j) for j in idx))
            if p not in out:
                out.append(p)
    return out


def heuristic_tables(scores: Tensor, baseline: Tensor, W_out_norm: Tensor, k: int = 100,
                     bins: int = 101) -> tuple[Any, Any, dict[str, float]]:
    """Top pairs (``k`` per sign), a histogram of scores vs baseline on shared bins, and
    summary quantiles. ``W_out_norm: [layers, d_mlp]``."""
    import pandas as pd

    real, base = scores[~scores.isnan()].double(), baseline[~baseline.isnan()].double()
    rows = []
    base_std = float(base.std())
    for p in top_pairs(scores, k):
        s = float(scores[p.layer, p.neuron, p.head_layer, p.head])
        rows.append({"pair": p.name, "layer": p.layer, "neuron": p.neuron,
                     "neuron_name": neuron_name(p.layer, p.neuron), "head_layer": p.head_layer,
                     "head": p.head, "score": s, "score_over_baseline_std": s / base_std,
                     "w_out_norm": float(W_out_norm[p.layer, p.neuron])})
    lim = float(torch.cat([real.abs(), base.abs()]).max())
    edges = np.linspace(-lim, lim, bins + 1)
    hist = pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:],
                         "count": np.histogram(real.numpy(), edges)[0],
                         "count_baseline": np.histogram(base.numpy(), edges)[0]})
    summary = {"n_pairs": int(real.numel()), "std": float(real.std()), "baseline_std": base_std,
               **{f"q{q:g}": float(torch.quantile(real.float(), q / 100)) for q in (0.1, 1, 50, 99, 99.9)},
               **{f"baseline_q{q:g}": float(torch.quantile(base.float(), q / 100))
                  for q in (0.1, 1, 50, 99, 99.9)}}
    return pd.DataFrame(rows), hist, summary
