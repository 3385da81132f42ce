"""Which neurons stand in for "universal" when too few pass the threshold (issue: a small
suite such as the bundled one has only a handful of neurons with excess correlation > 0.5).

When fewer than :data:`MIN_UNIVERSAL` neurons of a model pass the threshold, the
properties and families stages also compute their results for the top
:data:`FALLBACK_PERCENT` % of neurons by excess correlation, ``ceil(P / 100 * n)`` neurons
of the ``n`` with a finite ``excess_corr`` (the rule of ``--top-percent``), and label every
such row with :func:`fallback_label`, e.g. ``"top 5% by excess correlation: 103 neurons
(only 4 pass 0.5)"``. The label goes in a ``selection`` column (tables) or field (JSON).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MIN_UNIVERSAL = 10
"""Fewest universal neurons for the claims and the universal-family counts to stand alone."""
FALLBACK_PERCENT = 5.0
"""Top percent by excess correlation used instead when fewer pass the threshold."""
SELECTION = "selection"
"""Column (tables) or field (JSON) naming the neurons a result was computed for."""


def top_percent_mask(excess: np.ndarray, percent: float) -> np.ndarray:
    """``Bool[n]``: the ``ceil(percent / 100 * n_valid)`` largest finite values of
    ``excess`` (ties: the earlier row first); NaN never selected."""
    excess = np.asarray(excess, dtype=np.float64)
    valid = np.flatnonzero(~np.isnan(excess))
    n = math.ceil(percent / 100 * len(valid))
    mask = np.zeros(len(excess), dtype=bool)
    mask[valid[np.argsort(-excess[valid], kind="stable")[:n]]] = True
    return mask


def needs_fallback(n_universal: int, min_universal: int = MIN_UNIVERSAL) -> bool:
    """Whether ``n_universal`` neurons are too few to stand alone."""
    return n_universal < min_universal


def threshold_label(n_universal: int, threshold: float | None) -> str:
    """The ordinary selection, e.g. ``"excess correlation > 0.5: 4 neurons"``."""
    rule = "is_universal" if threshold is None else f"excess correlation > {threshold:g}"
    return f"{rule}: {n_universal} neuron{'s' if n_universal != 1 else ''}"


def fallback_label(percent: float, n_selected: int, n_universal: int,
                   threshold: float | None) -> str:
    """E.g. ``"top 5% by excess correlation: 103 neurons (only 4 pass 0.5)"``."""
    cut = "the threshold" if threshold is None else f"{threshold:g}"
    return (f"top {percent:g}% by excess correlation: {n_selected} neurons "
            f"(only {n_universal} pass {cut})")


def correlate_record(manifest: dict, key: str) -> Any:
    """``manifest["stages"]["correlate"][key]`` if every level is there, else None."""
    stages = manifest.get("stages") if isinstance(manifest, dict) else None
    stage = stages.get("correlate") if isinstance(stages, dict) else None
    return stage.get(key) if isinstance(stage, dict) else None


def recorded_threshold(manifest: dict) -> float | None:
    """The excess-correlation threshold the correlate stage recorded, or None."""
    config = correlate_record(manifest, "config")
    value = config.get("threshold") if isinstance(config, dict) else None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def select_neurons(table: Any, threshold: float | None, percent: float | None = FALLBACK_PERCENT,
                   min_universal: int = MIN_UNIVERSAL) -> tuple[np.ndarray, str, bool]:
    """``(Bool[n] mask over the rows of a neuron table, its label, whether it is the
    fallback)``: the ``is_universal`` rows, or, when fewer than ``min_universal`` pass and
    ``percent`` is set, the top ``percent`` % by ``excess_corr``."""
    universal = table["is_universal"].fillna(False).astype(bool).to_numpy()
    n_universal = int(universal.sum())
    if not percent or not needs_fallback(n_universal, min_universal):
        return universal, threshold_label(n_universal, threshold), False
    top = top_percent_mask(table["excess_corr"].to_numpy(np.float64), percent)
    return top, fallback_label(percent, int(top.sum()), n_universal, threshold), True
