"""Plots of the properties of universal neurons (paper Fig. 3 and the universality scatter).

matplotlib is an optional extra (``pip install 'universal-neurons[plot]'``), imported only
here and only when a plot is drawn; figures use the Agg canvas (no display needed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from universal_neurons.constants import (
    FIG_CORR_VS_BASELINE,
    FIG_PROPERTIES_PERCENTILES,
    FIG_UNIVERSAL_BY_LAYER,
    PLOTS_DIR,
    safe_name,
)
from universal_neurons.report.figure_io import colors as _colors
from universal_neurons.report.figure_io import new_figure as _figure
from universal_neurons.report.figure_io import save_png as _save

log = logging.getLogger(__name__)

PAPER_STATISTICS = ("sparsity", "skew", "kurt", "input_bias", "l2_penalty", "w_in_norm",
                    "w_out_norm", "in_out_sim", "vocab_kurt")
MAX_POINTS_PER_LAYER = 4000





def plot_percentiles(percentiles, path: Path, statistics: Sequence[str] = PAPER_STATISTICS) -> bool:
    """Box plots of within-layer percentiles per statistic: universal (filled) vs other
    (light) neurons, one colour per model (paper Fig. 3). False if nothing to plot."""
    stats = [s for s in statistics if s in percentiles.columns and percentiles[s].notna().any()]
    if not stats:
        return False
    models = list(dict.fromkeys(percentiles["model"]))
    colors = _colors(len(models))
    fig = _figure(figsize=(min(18.0, 2 + len(stats) * (0.5 + 0.4 * len(models))), 4.8))
    ax = fig.add_subplot()
    width = 0.8 / (2 * len(models))
    for j, (model, color) in enumerate(zip(models, colors)):
        sub = percentiles[percentiles["model"] == model]
        for g, (universal, alpha) in enumerate(((True, 0.85), (False, 0.25))):
            part = sub[sub["universal"] == universal]
            data = [part[s].dropna().to_numpy() for s in stats]
            pos = np.arange(len(stats)) - 0.4 + width * (2 * j + g + 0.5)
            keep = [i for i, d in enumerate(data) if len(d)]
            if not keep:
                continue
            bp = ax.boxplot([data[i] for i in keep], positions=pos[keep], widths=width * 0.9,
                            patch_artist=True, showfliers=False, manage_ticks=False)
            for box in bp["boxes"]:
                box.set(facecolor=color, alpha=alpha, edgecolor=color)
            for med in bp["medians"]:
                med.set(color="black")
    ax.axhline(50, color="gray", lw=0.8, ls="--")
    ax.set_xticks(range(len(stats)), stats, rotation=30, ha="right")
    ax.set_ylim(0, 100)
    ax.set_ylabel("percentile within layer")
    ax.set_title("Statistics of universal (dark) vs other (light) neurons")
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=c, label=m) for m, c in zip(models, colors)]
    handles += [Patch(facecolor="gray", alpha=0.85, label="universal"),
                Patch(facecolor="gray", alpha=0.25, label="other")]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _save(fig, path)
    return True


def plot_universal_by_layer(tables: Mapping[str, Any], universal: Mapping[str, np.ndarray],
                            path: Path) -> bool:
    """Percentage of universal neurons in each layer, one line per model."""
    fig = _figure(figsize=(6.5, 4))
    ax = fig.add_subplot()
    drawn = False
    for (model, df), color in zip(tables.items(), _colors(len(tables))):
        if model not in universal:
            continue
        share = (df.assign(u=universal[model]).groupby("layer")["u"].mean() * 100)
        ax.plot(share.index, share.to_numpy(), marker="o", color=color, label=model)
        drawn = True
    if not drawn:
        return False
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom=0)
    ax.set_xlabel("layer")
    ax.set_ylabel("universal neurons (%)")
    ax.set_title("Share of universal neurons by layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_corr_vs_baseline(model: str, df, universal: np.ndarray, path: Path,
                          threshold: float = 0.5, seed: int = 0) -> bool:
    """Per layer: mean (over partners) max correlation vs its rotated baseline."""
    if not {"mean_corr", "mean_baseline"} <= set(df.columns) or df["mean_baseline"].isna().all():
        return False
    layers = sorted(df["layer"].unique())
    cols = min(4, len(layers))
    rows = -(-len(layers) // cols)
    fig = _figure(figsize=(3.2 * cols, 3.0 * rows))
    rng = np.random.default_rng(seed)
    for k, layer in enumerate(layers):
        ax = fig.add_subplot(rows, cols, k + 1)
        sel = np.flatnonzero(df["layer"].to_numpy() == layer)
        if len(sel) > MAX_POINTS_PER_LAYER:
            sel = np.sort(rng.choice(sel, MAX_POINTS_PER_LAYER, replace=False))
        x, y = df["mean_baseline"].to_numpy()[sel], df["mean_corr"].to_numpy()[sel]
        u = universal[sel]
        ax.scatter(x[~u], y[~u], s=3, alpha=0.4, color="tab:gray", label="other")
        ax.scatter(x[u], y[u], s=5, alpha=0.8, color="tab:red", label="universal")
        ax.plot([0, 1], [0, 1], color="black", lw=0.7)
        ax.plot([0, 1 - threshold], [threshold, 1], color="tab:red", lw=0.7, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"layer {layer}", fontsize=9)
        if k % cols == 0:
            ax.set_ylabel("mean max correlation")
        if k >= (rows - 1) * cols:
            ax.set_xlabel("mean baseline")
        if k == 0:
            ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{model}: correlation vs rotated baseline (dashed: excess = {threshold:g})")
    _save(fig, path)
    return True


def plot_properties(run: str | Path, tables: Mapping[str, Any], percentiles,
                    threshold: float = 0.5) -> list[str]:
    """Every properties plot into ``RUN/plots/``; returns the written paths (run-relative)."""
    run = Path(run)
    out = run / PLOTS_DIR
    files = []
    if plot_percentiles(percentiles, out / FIG_PROPERTIES_PERCENTILES):
        files.append(f"{PLOTS_DIR}/{FIG_PROPERTIES_PERCENTILES}")
    universal = {m: percentiles.loc[percentiles["model"] == m, "universal"].to_numpy()
                 for m in tables}
    if plot_universal_by_layer(tables, universal, out / FIG_UNIVERSAL_BY_LAYER):
        files.append(f"{PLOTS_DIR}/{FIG_UNIVERSAL_BY_LAYER}")
    for model, df in tables.items():
        name = FIG_CORR_VS_BASELINE.format(model=safe_name(model))
        if plot_corr_vs_baseline(model, df, universal[model], out / name, threshold):
            files.append(f"{PLOTS_DIR}/{name}")
    files += _threshold_curve(run, threshold)
    log.info("wrote %d plots to %s", len(files), out)
    return files


def _threshold_curve(run: Path, threshold: float) -> list[str]:
    """The threshold-curve figure, when the correlate stage wrote its table."""
    import pandas as pd

    from universal_neurons.constants import FIG_THRESHOLD_CURVE, THRESHOLD_CURVE
    from universal_neurons.report.plots_calibration import plot_threshold_curve

    if not (run / THRESHOLD_CURVE).is_file():
        return []
    if plot_threshold_curve(pd.read_parquet(run / THRESHOLD_CURVE),
                            run / PLOTS_DIR / FIG_THRESHOLD_CURVE, threshold):
        return [f"{PLOTS_DIR}/{FIG_THRESHOLD_CURVE}"]
    return []
