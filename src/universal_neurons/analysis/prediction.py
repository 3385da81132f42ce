"""Prediction, suppression and partition neurons from the vocabulary composition (§5.1).

Per neuron, the distribution over the vocabulary of ``cos(W_U[:, v], w_out)`` (TL-processed
weights) is summarised by its moments ``vocab_mean, vocab_var, vocab_skew, vocab_kurt``
(kurtosis *not* excess: a random direction gives ≈ 3). They are taken from the neuron
table when the weights stage wrote them, else computed here with
``analysis.weights`` (the same code).

Labels (:class:`PredictionThresholds`, defaults in brackets):

* **prediction**: ``vocab_kurt > kurtosis`` [10, the paper's cut] and ``vocab_skew > 0``:
  a heavy right tail, the neuron writes in the direction of a small set of tokens and
  promotes them;
* **suppression**: ``vocab_kurt > kurtosis`` and ``vocab_skew < 0``: it suppresses a small
  set of tokens;
* **partition**: not the above and ``vocab_var >= partition_var_ratio × median vocab_var``
  of the model's neurons [5]: a light-tailed but wide distribution, the neuron pushes one
  large part of the vocabulary up and the rest down (our heuristic; the paper describes
  these neurons without a numeric cut).

The score of a label is ``vocab_kurt`` (prediction/suppression) or the variance ratio
(partition). :func:`token_sets` lists the tokens each labelled neuron promotes (highest
cosine) or suppresses (lowest); :func:`~universal_neurons.report.plots_families.plot_prediction_curves` draws per-layer
percentiles of kurtosis and skew (paper Fig. 6a-b) for one or many models.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

MOMENT_COLUMNS = ("vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt")
CLASSES = ("prediction", "suppression", "partition")
PERCENTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99)


@dataclass(frozen=True)
class PredictionThresholds:
    kurtosis: float = 10.0
    """vocab_kurt above this (non-excess) -> prediction (skew > 0) or suppression (skew < 0)."""
    partition_var_ratio: float = 5.0
    """vocab_var at least this many times the model's median -> partition."""

    def __post_init__(self) -> None:
        if self.kurtosis <= 3 or self.partition_var_ratio <= 1:
            raise ValueError(f"thresholds must exceed the Gaussian values: kurtosis > 3 and "
                             f"partition_var_ratio > 1, got {self.kurtosis}, "
                             f"{self.partition_var_ratio}")


def _unit_weights(pw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w_out_hat [layers*d_mlp, d_model], W_U_hat [d_model, vocab])`` in float64."""
    W_out = pw.W_out.detach().to("cpu", torch.float64)  # [L, d_mlp, d_model]
    w_out = W_out.reshape(-1, W_out.shape[-1])
    W_U = pw.W_U.detach().to("cpu", torch.float64)  # [d_model, vocab]
    return w_out / w_out.norm(dim=1, keepdim=True), W_U / W_U.norm(dim=0, keepdim=True)


def vocab_composition(pw: Any, neurons: Sequence[int] | None = None, top_k: int = 20,
                      chunk_elements: int = 1 << 24) -> dict[str, np.ndarray]:
    """Moments and top/bottom-``top_k`` tokens of ``cos(W_U, w_out)`` for flat ``neurons``
    (``layer * d_mlp + neuron``; None = all), via ``analysis.weights``.

    Returns ``vocab_{mean,var,skew,kurt}: [n]`` and ``vocab_{top,bottom}_{ids,cos}: [n, k]``.
    """
    # the weights stage's own routine (moments + top/bottom-k of a_hat @ b_hat), so both
    # stages agree to the last bit
    from universal_neurons.analysis.weights import _top_bottom

    w_out_hat, W_U_hat = _unit_weights(pw)
    if neurons is not None:
        w_out_hat = w_out_hat[torch.as_tensor(np.asarray(neurons), dtype=torch.long)]
    out = _top_bottom(w_out_hat, W_U_hat, min(top_k, W_U_hat.shape[1]), chunk_elements,
                      moments=True)
    return {f"vocab_{k}": v.cpu().numpy() for k, v in out.items()}


def vocab_moments(pw: Any) -> pd.DataFrame:
    """``layer, neuron`` + :data:`MOMENT_COLUMNS` for every neuron of ``pw``."""
    n_layers, d_mlp = pw.W_out.shape[:2]
    comp = vocab_composition(pw, top_k=1)
    layer, neuron = np.divmod(np.arange(n_layers * d_mlp), d_mlp)
    return pd.DataFrame({"layer": layer, "neuron": neuron, **{c: comp[c] for c in MOMENT_COLUMNS}})


def classify(df: pd.DataFrame, thresholds: PredictionThresholds = PredictionThresholds()
             ) -> pd.DataFrame:
    """``prediction_class`` ('' or one of :data:`CLASSES`) and ``prediction_score`` per row
    of a frame with :data:`MOMENT_COLUMNS` (one model)."""
    missing = [c for c in MOMENT_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"classify needs columns {', '.join(missing)}")
    kurt, skew, var = (df[c].to_numpy(np.float64) for c in ("vocab_kurt", "vocab_skew",
                                                             "vocab_var"))
    heavy = kurt > thresholds.kurtosis
    med = np.nanmedian(var) if np.isfinite(var).any() else np.nan
    ratio = var / med if med and np.isfinite(med) else np.full_like(var, np.nan)
    cls = np.full(len(df), "", dtype=object)
    cls[heavy & (skew > 0)] = "prediction"
    cls[heavy & (skew < 0)] = "suppression"
    part = ~heavy & (np.nan_to_num(ratio, nan=0.0) >= thresholds.partition_var_ratio)
    cls[part] = "partition"
    score = np.where(heavy, kurt, np.where(part, ratio, np.nan))
    return pd.DataFrame({"layer": df["layer"].to_numpy(), "neuron": df["neuron"].to_numpy(),
                         "prediction_class": cls, "prediction_score": score})


def token_sets(pw: Any, labelled: pd.DataFrame, strings: Sequence[str], k: int = 20
               ) -> pd.DataFrame:
    """Tokens each labelled neuron promotes / suppresses, long format.

    ``labelled``: rows with ``layer, neuron, prediction_class``. Prediction neurons list
    their top-``k`` tokens by cosine (``direction = promotes``), suppression neurons their
    bottom-``k`` (``suppresses``), partition neurons both. Columns: ``layer, neuron,
    prediction_class, direction, rank, token_id, token, cos``.
    """
    cols = ["layer", "neuron", "prediction_class", "direction", "rank", "token_id", "token", "cos"]
    lab = labelled[labelled["prediction_class"].isin(CLASSES)]
    if lab.empty:
        return pd.DataFrame(columns=cols)
    d_mlp = pw.W_out.shape[1]
    flat = lab["layer"].to_numpy(np.int64) * d_mlp + lab["neuron"].to_numpy(np.int64)
    comp = vocab_composition(pw, flat, top_k=k)
    parts = []
    for which, direction, classes in (("top", "promotes", ("prediction", "partition")),
                                      ("bottom", "suppresses", ("suppression", "partition"))):
        sel = lab["prediction_class"].isin(classes).to_numpy()
        ids, cos = comp[f"vocab_{which}_ids"][sel], comp[f"vocab_{which}_cos"][sel]
        n, kk = ids.shape
        parts.append(pd.DataFrame({
            "layer": np.repeat(lab["layer"].to_numpy()[sel], kk),
            "neuron": np.repeat(lab["neuron"].to_numpy()[sel], kk),
            "prediction_class": np.repeat(lab["prediction_class"].to_numpy()[sel], kk),
            "direction": direction, "rank": np.tile(np.arange(kk), n),
            "token_id": ids.reshape(-1),
            "token": [strings[int(i)] if int(i) < len(strings) else "" for i in ids.reshape(-1)],
            "cos": cos.reshape(-1)}))
    out = pd.concat(parts, ignore_index=True)[cols]
    return out.sort_values(["layer", "neuron", "direction", "rank"], ignore_index=True)


def percentile_curves(df: pd.DataFrame, col: str, percentiles: Sequence[float] = PERCENTILES
                      ) -> pd.DataFrame:
    """``[layers, percentiles]`` table of ``col`` per layer, plus a ``mean`` column."""
    g = df.groupby("layer")[col]
    out = pd.DataFrame({f"p{p:g}": g.quantile(p / 100) for p in percentiles})
    out["mean"] = g.mean()
    return out
