"""Plots of universality over training (``trajectory/`` tables). matplotlib is the optional
``plot`` extra, imported lazily."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from universal_neurons.constants import (
    FIG_TRAJECTORY_PREDICTION,
    FIG_TRAJECTORY_SCATTER,
    FIG_TRAJECTORY_UNIVERSALITY,
)
from universal_neurons.report.plots_roles import _figure, _save

MAX_SCATTER_PANELS = 4


def _x_axis(summary: Any) -> tuple[np.ndarray, str, bool]:
    """Positions of the checkpoints: tokens or steps when every checkpoint names them (log
    scale), else their order."""
    for col, label in (("tokens", "training tokens"), ("step", "training step")):
        if col in summary.columns and summary[col].notna().all() and (summary[col] > 0).all():
            return summary[col].to_numpy(dtype=float), label, True
    return summary["checkpoint_index"].to_numpy(dtype=float), "checkpoint", False


def _axes_x(ax: Any, summary: Any, x: np.ndarray, label: str, log: bool) -> None:
    ax.set_xlabel(label)
    if log:  # limits set, so that a panel whose values are all NaN still draws
        ax.set_xscale("log")
        ax.set_xlim(x.min() / 1.5, x.max() * 1.5)
    else:
        ax.set_xlim(x.min() - 0.5, x.max() + 0.5)
        ax.set_xticks(x)
        ax.set_xticklabels(summary["checkpoint"].astype(str), rotation=45, ha="right")


def plot_universality(summary: Any, path: str | os.PathLike, model: str = "") -> Path:
    """Share universal, emergence and persistence rates (left); median and best excess
    (right), per checkpoint."""
    x, label, log = _x_axis(summary)
    fig, grid = _figure(1, 2, figsize=(10, 3.6))
    left, right = grid[0]
    left.plot(x, 100 * summary["share_universal"], "o-", label="universal")
    left.plot(x, 100 * summary["emergence_rate"], "s--", label="universal for the first time")
    left.plot(x, 100 * summary["persistence_rate"] * summary["share_universal"], "^:",
              label="universal here and at every later checkpoint")
    left.set_ylabel("% of neurons")
    left.legend(fontsize=8)
    right.plot(x, summary["median_excess"], "o-", label="median")
    right.plot(x, summary["max_excess"], "s--", label="best")
    right.set_ylabel("excess correlation")
    right.legend(fontsize=8)
    for ax in (left, right):
        _axes_x(ax, summary, x, label, log)
    fig.suptitle(f"Universality over training{f': {model}' if model else ''}")
    return _save(fig, path)


def plot_prediction(summary: Any, path: str | os.PathLike, model: str = "") -> Path:
    """How each checkpoint predicts the last: correlation of excess (left); precision and
    recall of "universal here" for "universal at the last" (right)."""
    x, label, log = _x_axis(summary)
    fig, grid = _figure(1, 2, figsize=(10, 3.6))
    left, right = grid[0]
    left.plot(x, summary["spearman_last"], "o-", label="Spearman")
    left.plot(x, summary["pearson_last"], "s--", label="Pearson")
    left.set_ylabel("correlation with the last checkpoint")
    right.plot(x, summary["precision_last"], "o-", label="precision")
    right.plot(x, summary["recall_last"], "s--", label="recall")
    right.set_ylabel("universal here -> universal at the last")
    low = np.nanmin(np.r_[summary["spearman_last"], summary["pearson_last"], 0.0].astype(float))
    left.set_ylim(low - 0.05, 1.05)  # correlations may be negative early
    right.set_ylim(-0.05, 1.05)
    for ax in (left, right):
        ax.legend(fontsize=8)
        _axes_x(ax, summary, x, label, log)
    fig.suptitle(f"Early checkpoints predicting the last{f': {model}' if model else ''}")
    return _save(fig, path)


def plot_scatter(neurons: Any, path: str | os.PathLike, model: str = "",
                 threshold: float | None = None) -> Path:
    """Excess correlation at earlier checkpoints against the last, one panel each (at most
    :data:`MAX_SCATTER_PANELS`, spread over training)."""
    order = (neurons[["checkpoint_index", "checkpoint"]].drop_duplicates()
             .sort_values("checkpoint_index"))
    earlier = list(order.itertuples(index=False))[:-1] or list(order.itertuples(index=False))
    pick = np.unique(np.linspace(0, len(earlier) - 1, min(MAX_SCATTER_PANELS, len(earlier)))
                     .round().astype(int))
    fig, grid = _figure(1, len(pick), figsize=(3.4 * len(pick), 3.4))
    for ax, i in zip(grid[0], pick):
        c = earlier[i]
        rows = neurons[neurons["checkpoint_index"] == c.checkpoint_index]
        ax.scatter(rows["excess_corr"], rows["excess_corr_last"], s=3, alpha=0.4,
                   c=np.where(rows["is_universal"], "C3", "C0"))
        if threshold is not None:
            ax.axvline(threshold, color="0.5", lw=0.8, ls=":")
            ax.axhline(threshold, color="0.5", lw=0.8, ls=":")
        ax.set_xlabel(f"excess at {c.checkpoint}")
        ax.set_ylabel("excess at the last checkpoint")
    fig.suptitle(f"Per-neuron excess correlation, early vs last{f': {model}' if model else ''}"
                 " (red: universal early)")
    return _save(fig, path)


def plot_trajectory(neurons: Any, summary: Any, folder: str | os.PathLike, model: str = "",
                    threshold: float | None = None) -> list[Path]:
    """Every trajectory figure into ``folder`` (``plots/``)."""
    folder = Path(folder)
    return [plot_universality(summary, folder / FIG_TRAJECTORY_UNIVERSALITY, model),
            plot_prediction(summary, folder / FIG_TRAJECTORY_PREDICTION, model),
            plot_scatter(neurons, folder / FIG_TRAJECTORY_SCATTER, model, threshold)]
