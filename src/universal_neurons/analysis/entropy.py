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
  norm's scale, entropy, loss and reciprocal rank (paper Fig. 6).

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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from universal_neurons.analysis.interventions import Intervention, run_interventions
from universal_neurons.constants import neuron_name

log = logging.getLogger(__name__)

STAGE = "entropy"

CANDIDATE_COLUMNS = ("layer", "neuron", "neuron_name", "w_out_norm", "vocab_var", "null_frac",
                     "null_norm", "rank")


@dataclass(frozen=True)
class EntropyConfig:
    """Settings of the ``entropy`` stage (saved in the run manifest)."""

    model: str
    """Model spec (alias, bundled member, HF id, folder)."""
    out: str
    """Run directory."""
    neurons: tuple[str, ...] = ()
    """Target neurons (``L{layer}.{neuron}``); empty = find candidates, sweep the best."""
    values: tuple[float, ...] = (-0.17, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    """Activation values each neuron is fixed to (the paper's)."""
    find: bool = False
    """Rank candidates from weights even when ``neurons`` are given."""
    dataset: str | None = None
    """Token dataset folder; None = the bundled test split tokenized for the model."""
    tokens: int = 16_384
    """Tokens to run (rounded up to whole sequences)."""
    n_ctx: int | None = None
    """Context of the default dataset (default ``min(512, model n_ctx)``)."""
    batch_size: int = 8
    device: str = "cpu"
    n_baseline: int = 20
    """Random baseline neurons (fixed to the same values)."""
    baseline_layers: int = 2
    """The baseline neurons come from the last this-many layers."""
    seed: int = 0
    """Seed of the baseline neurons."""
    baseline_draw: Literal["filtered", "uniform"] = "filtered"
    """``filtered`` (the paper): l2 penalty <= its 90th percentile and vocab_var >= its 10th;
    ``uniform``: any neuron of the last layers."""
    count_special: bool = False
    """Count rows whose token is BOS/EOS/pad in the means (the paper does not)."""
    null_energy: float = 0.01
    """Share of W_U's spectrum energy (sum S²) the effective null space may hold."""
    find_layers: int | None = 2
    """Rank candidates in the last this-many layers (None = all layers)."""
    top_k: int = 20
    """Candidates whose pairwise w_out cosines are reported."""
    n_targets: int = 2
    """Best candidates swept when no neurons are given."""
    keep_tokens: bool = False
    """Also save per-token metrics of the clean and target runs."""
    plots: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "neurons", tuple(self.neurons))
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if not self.values:
            raise ValueError("values must not be empty; pass e.g. --values 0 1 2 3 4 5 6")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"values must be distinct, got {self.values}")
        if self.n_baseline < 0 or self.baseline_layers < 1:
            raise ValueError(f"n_baseline must be >= 0 and baseline_layers >= 1, got "
                             f"{self.n_baseline} and {self.baseline_layers}")
        if not 0.0 < self.null_energy < 1.0:
            raise ValueError(f"null_energy must be in (0, 1), got {self.null_energy}")
        if min(self.tokens, self.batch_size, self.top_k, self.n_targets) < 1:
            raise ValueError(f"tokens, batch_size, top_k and n_targets must be >= 1, got "
                             f"{self.tokens}, {self.batch_size}, {self.top_k}, {self.n_targets}")
        if self.baseline_draw not in ("filtered", "uniform"):
            raise ValueError(f"baseline_draw must be filtered or uniform, got "
                             f"{self.baseline_draw!r}")
        if self.find_layers is not None and self.find_layers < 1:
            raise ValueError(f"find_layers must be >= 1 (or None for all), got {self.find_layers}")


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


@dataclass
class EntropyResult:
    """What :func:`run_entropy` wrote: candidate tables (None unless searched), the sweep
    (:class:`InterventionResults`), the targets swept, plot paths and the run directory."""

    candidates: Any
    pairs: Any
    sweep: Any
    targets: list[tuple[int, int]]
    plots: list[Path]
    rundir: Path


def run_entropy(config: EntropyConfig) -> EntropyResult:
    """The ``entropy`` stage: find candidates (if asked or no neurons given), sweep fixed
    activation values of the targets and baseline neurons, save tables and plots.

    Writes ``RUN/entropy/{candidates,candidate_pairs,sweep}.parquet`` (+ CSV copies),
    ``RUN/entropy/sweep_tokens.parquet`` (``keep_tokens``), ``RUN/plots/entropy_<neuron>.png``
    and the ``entropy`` stage of ``RUN/manifest.json``.
    """
    from universal_neurons.analysis.interventions import open_dataset, token_progress
    from universal_neurons.constants import (
        ENTROPY_CANDIDATE_PAIRS,
        ENTROPY_CANDIDATES,
        ENTROPY_DIR,
        ENTROPY_SWEEP,
        FIG_ENTROPY,
        PLOTS_DIR,
        parse_neuron_name,
    )
    from universal_neurons.errors import UserError
    from universal_neurons.models.loading import load_model
    from universal_neurons.rundir import RunDir, write_table

    t0 = time.perf_counter()
    targets = [parse_neuron_name(n) for n in config.neurons]
    model = load_model(config.model, device=config.device)
    a = model.adapter
    for layer, n in targets:
        if not (0 <= layer < a.n_layers and 0 <= n < a.d_mlp):
            raise UserError(f"neuron {neuron_name(layer, n)} does not exist in {model.name} "
                            f"({a.n_layers} layers of {a.d_mlp} neurons)")
    run = RunDir(config.out)
    out_dir = run / ENTROPY_DIR
    candidates = pairs = None
    if config.find or not targets:
        first = 0 if config.find_layers is None else max(a.n_layers - config.find_layers, 0)
        candidates, pairs = find_entropy_candidates(
            a.processed_weights(), range(first, a.n_layers), config.null_energy, config.top_k)
        candidates.insert(0, "model", model.name)
        write_table(out_dir / ENTROPY_CANDIDATES, candidates)
        write_table(out_dir / ENTROPY_CANDIDATE_PAIRS, pairs)
        if not targets:
            targets = [(int(r.layer), int(r.neuron))
                       for r in candidates.head(config.n_targets).itertuples()]
            log.info("sweeping the best candidates: %s",
                     ", ".join(neuron_name(*t) for t in targets))
    pool = (baseline_pool(a.processed_weights(), config.baseline_layers)
            if config.baseline_draw == "filtered" and config.n_baseline else None)
    n_pool = (len(pool) if pool is not None
              else a.d_mlp * min(config.baseline_layers, a.n_layers))
    n_base = min(config.n_baseline, max(0, n_pool - len(targets)))
    baseline = baseline_neurons(a.n_layers, a.d_mlp, n_base, config.baseline_layers,
                                config.seed, exclude=targets, pool=pool)
    ds, n_seq = open_dataset(model, config.dataset, config.tokens, config.n_ctx, config.progress)
    n_runs = 1 + (len(targets) + len(baseline)) * len(config.values)
    log.info("entropy sweep: %d runs x %d tokens", n_runs, n_seq * ds.n_ctx)
    with token_progress(n_seq * ds.n_ctx, "entropy sweep", config.progress) as update:
        from universal_neurons.data.tokens import special_ids

        skip = () if config.count_special else special_ids(model.tokenizer).tolist()
        sweep = entropy_sweep(model, ds.iter_batches(config.batch_size, 0, n_seq), targets,
                              config.values, baseline, config.keep_tokens, update, skip)
    sweep.summary.insert(0, "model", model.name)
    sweep.save(out_dir, ENTROPY_SWEEP)
    plots: list[Path] = []
    if config.plots:
        from universal_neurons.report.plots_roles import plot_entropy_sweep

        for t in targets:
            name = neuron_name(*t)
            path = run / PLOTS_DIR / FIG_ENTROPY.format(neuron=name)
            plots.append(plot_entropy_sweep(sweep.summary, name, path, model.name))
    run.record_stage(
        STAGE, config, model=model.name, targets=[neuron_name(*t) for t in targets],
        baseline=[neuron_name(*b) for b in baseline],
        null_dims=candidates.attrs.get("null_dims") if candidates is not None else None,
        tokens={"sequences": n_seq, "n_ctx": ds.n_ctx, "evaluated": int(sweep.summary["n_tokens"].iloc[0])},
        dataset={"path": str(ds.path), "source": ds.meta.get("source"),
                 "tokenizer_fingerprint": ds.fingerprint},
        seconds=round(time.perf_counter() - t0, 2))
    return EntropyResult(candidates, pairs, sweep, targets, plots, run.path)
