"""Universality of each neuron from its correlation summaries against partner models.

For neuron ``i`` of a model and each partner ``m`` (paper, section 3):
``max_corr_m = max_j rho(i, j)`` over all neurons ``j`` of ``m`` (every layer) and
``baseline_m = max_j rho_bar(i, j)`` against ``m``'s rotated activations. Over partners:
``mean/max/min_corr`` and ``mean/max/min_baseline``; ``excess_corr = mean_corr -
mean_baseline``; the neuron is universal when ``excess_corr > threshold`` (0.5).

With ``K`` baseline draws (``--rotations K``) each partner's baseline is the mean of its
``K`` draws; the null of neuron ``i`` is the ``K`` draw values of the mean baseline over
partners; ``baseline_std`` is their standard deviation, ``p_value`` the empirical p-value of
``mean_corr`` against them and ``q_value`` its Benjamini-Hochberg q-value over the model's
neurons (``analysis/calibration.py``). With one draw (the default) all three are NaN: the
smallest p-value one draw can give is 0.5.

Missing values (dead neurons) are NaN and never universal. Without a baseline
(``--baseline none``) the baseline columns are NaN and ``excess_corr = mean_corr``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from universal_neurons.analysis.calibration import bh_qvalues, empirical_pvalues
from universal_neurons.constants import neuron_name

CORE_COLUMNS = ("layer", "neuron", "max_corr", "mean_corr", "min_corr", "max_baseline",
                "mean_baseline", "min_baseline", "excess_corr", "is_universal")


def _np(x: Any) -> np.ndarray:
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def universality_table(n_layers: int, d_mlp: int, partners: Mapping[str, Mapping[str, Any]],
                       partner_d_mlp: Mapping[str, int], *, threshold: float = 0.5,
                       baseline: bool = True):
    """One row per neuron (``layer``-major) of a model against ``partners``.

    ``partners[name]`` holds that partner's summary (``max``, ``argmax``, ``baseline_max``,
    per neuron, as written by the correlate stage); ``partner_d_mlp[name]`` its ``d_mlp``
    (to name the best-matching neuron ``L{layer}.{neuron}``). Returns a pandas DataFrame
    with :data:`CORE_COLUMNS`, ``baseline_std, p_value, q_value`` and, per partner, ``{name}_best``, ``{name}_corr``,
    ``{name}_baseline``.
    """
    import pandas as pd

    if not partners:
        raise ValueError("universality needs at least one partner model")
    n = n_layers * d_mlp
    names = list(partners)
    corr = np.stack([_np(partners[p]["max"]).astype(np.float64) for p in names], 1)  # [n, P]
    if corr.shape[0] != n:
        raise ValueError(f"summaries have {corr.shape[0]} neurons, expected {n_layers}x{d_mlp}")
    if baseline:
        draws = np.stack([_baseline_draws(partners[p]) for p in names], 2)  # [K, n, P]
    else:
        draws = np.full((1, *corr.shape), np.nan)
    base = draws[0] if len(draws) == 1 else draws.mean(0)  # [n, P]
    with np.errstate(invalid="ignore"):
        mean_corr = corr.mean(1)
        mean_base = base.mean(1)
        excess = mean_corr - mean_base if baseline else mean_corr.copy()
        null = draws.mean(2).T  # [n, K]: the mean baseline over partners, per draw
        std = null.std(1, ddof=1) if len(draws) > 1 else np.full(n, np.nan)
    # one draw gives p in {0.5, 1}: no evidence either way, so no p-value is reported
    p_value = (empirical_pvalues(mean_corr, null) if baseline and len(draws) > 1
               else np.full(n, np.nan))
    cols: dict[str, Any] = {
        "layer": np.repeat(np.arange(n_layers), d_mlp),
        "neuron": np.tile(np.arange(d_mlp), n_layers),
        "max_corr": corr.max(1), "mean_corr": mean_corr, "min_corr": corr.min(1),
        "max_baseline": base.max(1), "mean_baseline": mean_base, "min_baseline": base.min(1),
        "excess_corr": excess,
        "is_universal": np.nan_to_num(excess, nan=-np.inf) > threshold,
        "baseline_std": std, "p_value": p_value, "q_value": bh_qvalues(p_value),
    }
    for j, p in enumerate(names):
        idx = _np(partners[p]["argmax"]).astype(np.int64)
        d = partner_d_mlp[p]
        cols[f"{p}_best"] = [neuron_name(int(i) // d, int(i) % d) if i >= 0 else None
                             for i in idx]
        cols[f"{p}_corr"] = corr[:, j]
        cols[f"{p}_baseline"] = base[:, j]
    return pd.DataFrame(cols)


def _baseline_draws(summary: Mapping[str, Any]) -> np.ndarray:
    """``Float64[K, n]``: a partner's baseline maxima of every draw."""
    if "baseline_max_draws" in summary:
        return _np(summary["baseline_max_draws"]).astype(np.float64)
    return _np(summary["baseline_max"]).astype(np.float64)[None]


def write_neuron_table(path: str | os.PathLike, df) -> None:
    """Write ``df`` to ``neurons/<model>.parquet`` (+CSV), keeping other stages' columns.

    If the table exists with the same neurons, its columns that ``df`` does not provide are
    kept (joined on ``layer, neuron``); columns ``df`` provides are replaced.
    """
    from pathlib import Path

    import pandas as pd

    from universal_neurons.rundir import write_table

    p = Path(path)
    if p.exists():
        try:
            old = pd.read_parquet(p)
        except Exception:  # unreadable: replace it
            old = None
        if old is not None and {"layer", "neuron"} <= set(old.columns) and len(old) == len(df):
            keep = [c for c in old.columns if c not in df.columns or c in ("layer", "neuron")]
            df = df.merge(old[keep], on=["layer", "neuron"], how="left")
    write_table(p, df)
