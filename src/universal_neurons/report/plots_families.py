"""Plots of neuron families (family counts) and prediction neurons (paper Fig. 6).

matplotlib is the optional ``plot`` extra (``pip install 'universal-neurons[plot]'``),
imported here only when a plot is drawn; figures use the Agg canvas.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from universal_neurons.report.figure_io import new_figure as _figure
from universal_neurons.report.figure_io import save_png as _save


def plot_family_counts(counts: Any, path: str | os.PathLike, model: str) -> None:
    """Horizontal bars of neurons per family; ``counts`` has ``family, n_neurons`` and
    optionally ``n_universal`` (drawn darker on top)."""
    counts = counts.sort_values("n_neurons")
    fig = _figure(figsize=(6.5, 0.4 * len(counts) + 1.5))
    ax = fig.add_subplot()
    y = range(len(counts))
    ax.barh(y, counts["n_neurons"], color="#c7d4e8", label="explained neurons")
    if "n_universal" in counts:
        ax.barh(y, counts["n_universal"], color="#2f5d9b", label="universal")
    ax.set_yticks(list(y), counts["family"].tolist())
    ax.set_xlabel("neurons")
    ax.set_title(f"neuron families: {model}")
    for i, n in enumerate(counts["n_neurons"]):
        ax.annotate(f"{int(n)}", (n, i), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3, linestyle="--")
    _save(fig, path)


def plot_percentile_panels(curves: Mapping[str, Mapping[str, Any]], path: str | os.PathLike
                           ) -> None:
    """Two panels (vocab kurtosis, log scale; vocab skew): per model, per-layer median and
    5–95% / 25–75% bands. ``curves[model][col]`` is :func:`analysis.prediction.
    percentile_curves` output (index = layer)."""
    from matplotlib import colormaps
    from matplotlib.ticker import MaxNLocator

    cmap = colormaps["tab10"]
    fig = _figure(figsize=(11, 4.5))
    labels = {"vocab_kurt": r"kurtosis of $\cos(W_U, w_{out})$",
              "vocab_skew": r"skew of $\cos(W_U, w_{out})$"}
    for j, col in enumerate(("vocab_kurt", "vocab_skew")):
        ax = fig.add_subplot(1, 2, j + 1)
        for i, (model, per_col) in enumerate(curves.items()):
            c = per_col[col]
            x = c.index.to_numpy()
            color = cmap(i % 10)
            ax.fill_between(x, c["p5"], c["p95"], color=color, alpha=0.15, linewidth=0)
            ax.fill_between(x, c["p25"], c["p75"], color=color, alpha=0.3, linewidth=0)
            ax.plot(x, c["p50"], color=color, label=f"{model} median")
            ax.plot(x, c["p99"], color=color, linestyle=":", linewidth=1)
            ax.plot(x, c["p1"], color=color, linestyle=":", linewidth=1)
        if col == "vocab_kurt":
            ax.set_yscale("log")
            ax.axhline(3, color="grey", linewidth=0.8, linestyle="--")
        else:
            ax.axhline(0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(labels[col])
        ax.grid(alpha=0.25, linestyle="--")
        if j == 0:
            ax.legend(fontsize=8, title="bands 5-95%, 25-75%; dotted 1/99%", title_fontsize=7)
    _save(fig, path)


def plot_prediction_curves(frames: Mapping[str, Any], path: str | os.PathLike,
                           percentiles: Sequence[float] | None = None) -> None:
    """Per-layer percentile bands of ``vocab_kurt`` (log scale) and ``vocab_skew`` (paper
    Fig. 6a-b); one colour per model, bands 5–95% / 25–75% and the median."""
    from universal_neurons.analysis.prediction import PERCENTILES, percentile_curves

    pct = PERCENTILES if percentiles is None else percentiles
    curves = {m: {c: percentile_curves(df, c, pct) for c in ("vocab_kurt", "vocab_skew")}
              for m, df in frames.items() if {"layer", "vocab_kurt", "vocab_skew"} <= set(df)}
    if not curves:
        raise ValueError("no model has vocab_kurt and vocab_skew columns to plot")
    plot_percentile_panels(curves, path)
