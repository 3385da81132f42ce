"""Entropy neurons (Gurnee et al. 2024, §5.2): neurons that change the final norm's scale.

An entropy neuron writes mostly into the (effective) null space of the unembedding: its
output barely moves the logits directly, but it grows or shrinks the residual stream's
norm, so the final LayerNorm divides the logits by a different scale and the next-token
distribution gets flatter or sharper. Two tools:

* :func:`find_entropy_candidates` ranks neurons from weights alone (TL-processed): large
  ``w_out`` norm, low ``vocab_var`` (variance over the vocabulary of ``cos(W_U[:, v],
  w_out)``) and a large share of ``w_out`` in the effective null space of ``W_U``. That
  space is spanned by the left singular vectors of ``W_U [d_model, d_vocab]`` with the
  smallest singular values whose squared singular values together hold at most
  ``null_energy`` (default 1%) of ``sum(S²)``. ``null_frac = |P w_out|² / |w_out|²``
  (a random direction gets ≈ ``null_dims / d_model``); candidates are ranked by
  ``null_norm = |P w_out|``, the part of the output that can only act through the norm.
  The cosine between candidates' ``w_out`` finds entropy/anti-entropy pairs (paper: −0.886).
* :func:`entropy_sweep` fixes each target neuron (and, as a baseline, random neurons of
  the last layers) to each of several values at every position and measures the final
  norm's scale, entropy, loss and reciprocal rank (paper Fig. 7).

As in the paper (``slurm/entropy_intervention.sh``, ``analysis/entropy_neurons.py``):

* the values are ``-0.17, 0, 1, ..., 6`` (-0.17 ≈ GELU's minimum);
* the means are over rows whose input token is not BOS/EOS/pad (the paper: ``token !=
  50256`` for GPT-2, ``token > 1`` for Pythia) and not the last position (``position !=
  511``: it has no next token); ``count_special=True`` counts the special-token rows too;
* the baseline neurons (:func:`baseline_neurons`, ``draw="filtered"``) are drawn from the
  last two layers among neurons with ``l2_penalty = |w_in|² + |w_out|²`` at most its 90th
  percentile and ``vocab_var`` at least its 10th percentile (percentiles over every neuron
  of the model), so that they look like ordinary neurons of those layers;
  ``draw="uniform"`` draws from all neurons of those layers.

(An earlier version swept 0-6, counted the BOS row and drew baselines uniformly.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from universal_neurons.analysis.interventions import Intervention, run_interventions
from universal_neurons.constants import neuron_name

log = logging.getLogger(__name__)

CANDIDATE_COLUMNS = ("layer", "neuron", "neuron_name", "w_out_norm", "vocab_var", "null_frac",
                     "null_norm", "rank")


def null_space_basis(W_U: Tensor, null_energy: float = 0.01) -> Tensor:
    """Orthonormal basis ``[d_model, k]`` of ``W_U``'s effective null space (see module doc).

    ``W_U: [d_model, d_vocab]``. ``k`` is the largest count of smallest singular directions
    whose ``sum(S²)`` is at most ``null_energy * sum(S²)`` (at least 1).
    """
    U, S, _ = torch.linalg.svd(W_U.double(), full_matrices=False)  # S descending
    e = (S**2).flip(0).cumsum(0)  # energy of the k smallest
    k = max(int((e <= null_energy * e[-1]).sum()), 1)
    return U[:, -k:]


def vocab_cos_var(W_out: Tensor, W_U: Tensor, chunk: int = 1024) -> Tensor:
    """Variance over the vocabulary (ddof 0) of ``cos(W_U[:, v], w_out)`` per row of
    ``W_out: [n, d_model]`` -> ``[n]`` (float64), as ``analysis.weights`` defines it."""
    U_hat = W_U.double() / W_U.double().norm(dim=0, keepdim=True).clamp_min(1e-30)
    out = []
    for s in range(0, W_out.shape[0], chunk):
        w = W_out[s:s + chunk].double()
        cos = (w / w.norm(dim=-1, keepdim=True).clamp_min(1e-30)) @ U_hat  # [rows, d_vocab]
        out.append(cos.var(-1, unbiased=False))
    return torch.cat(out)


def find_entropy_candidates(weights: Any, layers: Sequence[int] | None = None,
                            null_energy: float = 0.01, top_k: int = 20) -> tuple[Any, Any]:
    """Rank neurons as entropy-neuron candidates from ``weights`` (``ProcessedWeights``).

    Returns ``(candidates, pairs)``: one row per neuron of ``layers`` (default all) with
    :data:`CANDIDATE_COLUMNS`, sorted by ``null_norm`` (``rank`` 1 = best); and the
    pairwise ``cos(w_out, w_out')`` of the ``top_k`` best, most negative first.
    """
    import pandas as pd

    W_out = weights.W_out  # [L, d_mlp, d_model]
    L, d_mlp, _ = W_out.shape
    layers = list(range(L)) if layers is None else sorted(set(layers))
    P = null_space_basis(weights.W_U, null_energy)  # [d_model, k]
    W = W_out[layers].reshape(-1, W_out.shape[-1]).double()  # [n, d_model]
    norm = W.norm(dim=-1)
    null_norm = (W @ P).norm(dim=-1)
    df = pd.DataFrame({
        "layer": np.repeat(layers, d_mlp), "neuron": np.tile(np.arange(d_mlp), len(layers)),
        "w_out_norm": norm.numpy(), "vocab_var": vocab_cos_var(W, weights.W_U).numpy(),
        "null_frac": (null_norm**2 / norm.clamp_min(1e-30) ** 2).numpy(),
        "null_norm": null_norm.numpy(),
    })
    df.insert(2, "neuron_name", [neuron_name(a, b) for a, b in zip(df["layer"], df["neuron"])])
    df = df.sort_values("null_norm", ascending=False, kind="stable").reset_index(drop=True)
    df["rank"] = np.arange(1, len(df) + 1)
    df.attrs["null_dims"] = P.shape[1]
    top = df.head(top_k)
    w_top = W_out[top["layer"].to_numpy(copy=True), top["neuron"].to_numpy(copy=True)].double()
    w_hat = w_top / w_top.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    cos = (w_hat @ w_hat.T).numpy()
    i, j = np.triu_indices(len(top), k=1)
    names = top["neuron_name"].to_numpy()
    pairs = pd.DataFrame({"neuron_a": names[i], "neuron_b": names[j], "cos": cos[i, j],
                          "rank_a": i + 1, "rank_b": j + 1}).sort_values("cos", kind="stable")
    log.info("entropy candidates: null space of W_U = %d of %d dims (%.3g of its energy)",
             P.shape[1], W_out.shape[-1], null_energy)
    return df, pairs.reset_index(drop=True)


BASELINE_MAX_L2_QUANTILE = 0.9
BASELINE_MIN_VOCAB_VAR_QUANTILE = 0.1


def baseline_pool(weights: Any, last_layers: int = 2) -> list[tuple[int, int]]:
    """The paper's baseline candidates: ``(layer, neuron)`` of the last ``last_layers`` layers
    with ``l2_penalty <= q90`` and ``vocab_var >= q10``, the quantiles (pandas' linear
    interpolation) over every neuron of the model. ``weights``: ``ProcessedWeights``."""
    from universal_neurons.analysis.weights import input_weights

    W_in, _ = input_weights(weights)  # [L, d_model, d_mlp]
    W_out = weights.W_out  # [L, d_mlp, d_model]
    L, d_mlp, d_model = W_out.shape
    l2 = (W_in.double().norm(dim=1) ** 2 + W_out.double().norm(dim=-1) ** 2).reshape(-1)
    var = vocab_cos_var(W_out.reshape(-1, d_model), weights.W_U)
    ok = ((l2 <= torch.quantile(l2, BASELINE_MAX_L2_QUANTILE))
          & (var >= torch.quantile(var, BASELINE_MIN_VOCAB_VAR_QUANTILE))).reshape(L, d_mlp)
    first = max(L - last_layers, 0)
    return [(lay, int(j)) for lay in range(first, L) for j in torch.nonzero(ok[lay]).flatten()]


def baseline_neurons(n_layers: int, d_mlp: int, n: int, last_layers: int = 2, seed: int = 0,
                     exclude: Iterable[tuple[int, int]] = (),
                     pool: Sequence[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """``n`` distinct random ``(layer, neuron)`` (seeded), excluding ``exclude``; sorted.

    Drawn from ``pool`` (e.g. :func:`baseline_pool`, the paper's) or, if None, uniformly from
    the last ``last_layers`` layers.
    """
    if pool is None:
        first = max(n_layers - last_layers, 0)
        pool = [(lay, j) for lay in range(first, n_layers) for j in range(d_mlp)]
    skip = set(exclude)
    pool = [p for p in pool if p not in skip]
    if n > len(pool):
        raise ValueError(f"asked for {n} baseline neurons but only {len(pool)} other neurons "
                         f"qualify in the last {last_layers} layers; lower --baseline")
    pick = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return sorted(pool[i] for i in pick)


def entropy_sweep(model: Any, batches: Iterable[Any], targets: Sequence[tuple[int, int]],
                  values: Sequence[float], baseline: Sequence[tuple[int, int]] = (),
                  keep_tokens: bool = False, progress: Callable[[int], None] | None = None,
                  skip_ids: Sequence[int] = ()):
    """Fix each target and baseline neuron (one at a time) to each value; one pass.

    ``skip_ids``: rows whose input token is one of these are not counted (see
    :func:`~universal_neurons.analysis.interventions.run_interventions`).

    Returns :class:`~universal_neurons.analysis.interventions.InterventionResults` whose
    ``summary`` has, besides the metrics, ``group`` (``clean``/``target``/``baseline``) and
    ``neuron``. Per-token rows (``keep_tokens``) are kept for the clean and target runs only.
    """
    ivs: list[Intervention | None] = [None]
    group, who = ["clean"], [""]
    for g, neurons in (("target", targets), ("baseline", baseline)):
        for ln in neurons:
            for v in values:
                ivs.append(Intervention((ln,), "fix", float(v)))
                group.append(g)
                who.append(neuron_name(*ln))
    keep = {iv.label if iv else "clean" for iv, g in zip(ivs, group) if g != "baseline"}
    res = run_interventions(model, batches, ivs, keep_tokens=keep if keep_tokens else False,
                            progress=progress, skip_ids=skip_ids)
    res.summary.insert(1, "group", group)
    res.summary.insert(2, "neuron", who)
    return res
