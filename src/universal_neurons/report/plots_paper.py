"""Figures of the paper's results drawn from tables (``analysis.paper_tables``).

Each function writes one PNG (``plots/paper_<result>.png``) and returns its path.
matplotlib is the optional ``plot`` extra, imported lazily; figures never touch pyplot.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from universal_neurons.report.plots_roles import _figure as _plain_figure
from universal_neurons.report.plots_roles import _save

QUANTITY_TITLES = {"mean_corr": "mean max correlation", "mean_baseline": "baseline (rotation)",
                   "excess_corr": "excess correlation"}


def _figure(nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Any, Any]:
    """A figure with constrained layout (titles, labels and colour bars do not overlap)."""
    return _plain_figure(nrows, ncols, layout="constrained", **kw)


def plot_corr_distributions(dist: pd.DataFrame, path: str | os.PathLike) -> Path:
    """One panel per quantity, one density curve per model (paper Fig. 11)."""
    quantities = [q for q in QUANTITY_TITLES if q in set(dist["quantity"])]
    fig, grid = _figure(1, max(1, len(quantities)), figsize=(4.2 * max(1, len(quantities)), 3.2))
    for ax, q in zip(grid[0], quantities):
        for model, g in dist[dist["quantity"] == q].groupby("model", sort=False):
            centres = (g["bin_left"] + g["bin_right"]) / 2
            ax.plot(centres, g["density"], lw=1.4, label=str(model))
        ax.set_xlabel(QUANTITY_TITLES[q])
        ax.set_ylabel("density")
    grid[0][0].legend(fontsize=7)
    return _save(fig, path)


def plot_depth_specialisation(depth: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Heatmaps of the share of each own layer's best partners in each partner layer,
    pooled over partners; all neurons and universal neurons (paper Fig. 2c)."""
    fig, grid = _figure(1, 2, figsize=(9, 3.8))
    pooled = depth[depth["partner"] == "all"]
    for ax, group in zip(grid[0], ("all", "universal")):
        sub = pooled[pooled["group"] == group]
        mat = sub.pivot(index="layer", columns="partner_layer", values="share").to_numpy()
        im = ax.imshow(mat, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xlabel("best partner's layer")
        ax.set_ylabel("neuron's layer")
        total = int(sub["count"].sum())
        ax.set_title(f"{group} neurons ({total} best-partner matches)")
        fig.colorbar(im, ax=ax, label="share of the layer's matches")
    return _save(fig, path)


def plot_raw_by_layer(raw: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Per statistic, the median by layer with its 25-75% band, universal vs other
    neurons (the paper's Fig. 14)."""
    stats = list(dict.fromkeys(raw["statistic"]))
    ncols = min(4, len(stats))
    nrows = -(-len(stats) // ncols)
    fig, grid = _figure(nrows, ncols, figsize=(3.6 * ncols, 2.8 * nrows))
    for i, s in enumerate(stats):
        ax = grid[i // ncols][i % ncols]
        for universal, color in ((False, "0.45"), (True, "tab:red")):
            g = raw[(raw["statistic"] == s) & (raw["universal"] == universal)].sort_values("layer")
            if g.empty:
                continue
            ax.plot(g["layer"], g["q50"], color=color, marker="o", ms=3,
                    label="universal" if universal else "other")
            ax.fill_between(g["layer"], g["q25"], g["q75"], color=color, alpha=0.2)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("layer")
    for j in range(len(stats), nrows * ncols):
        grid[j // ncols][j % ncols].set_visible(False)
    grid[0][0].legend(fontsize=7)
    return _save(fig, path)


def plot_prediction_skew(tables: dict[str, pd.DataFrame], per_layer: pd.DataFrame,
                         kurtosis: float, path: str | os.PathLike) -> Path:
    """Left: every neuron's vocab skew by layer, coloured by log10 vocab kurtosis, the
    neurons above the kurtosis cut outlined; right: the share of prediction and
    suppression neurons per layer, one line style per model (paper Fig. 6c)."""
    fig, grid = _figure(1, 2, figsize=(10, 3.8))
    ax, ax2 = grid[0]
    rng = np.random.default_rng(0)
    model, table = next(iter(tables.items()))
    x = table["layer"].to_numpy(np.float64) + rng.uniform(-0.3, 0.3, len(table))
    kurt = table["vocab_kurt"].to_numpy(np.float64)
    sc = ax.scatter(x, table["vocab_skew"], c=np.log10(np.maximum(kurt, 1e-3)), s=4,
                    cmap="viridis")
    heavy = kurt > kurtosis
    ax.scatter(x[heavy], table["vocab_skew"].to_numpy()[heavy], s=18, facecolors="none",
               edgecolors="tab:red", label=f"vocab kurtosis > {kurtosis:g}")
    fig.colorbar(sc, ax=ax, label="log10 vocab kurtosis")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("layer")
    ax.set_ylabel("skew of cos(W_U, w_out)")
    ax.set_title(model, fontsize=9)
    if heavy.any():
        ax.legend(fontsize=7)
    for (m, g), ls in zip(per_layer.groupby("model", sort=False), ("-", "--", ":", "-.") * 8):
        ax2.plot(g["layer"], g["share_prediction"], color="tab:blue", ls=ls,
                 label=f"prediction ({m})")
        ax2.plot(g["layer"], g["share_suppression"], color="tab:orange", ls=ls,
                 label=f"suppression ({m})")
    ax2.set_xlabel("layer")
    ax2.set_ylabel("share of the layer's neurons")
    ax2.legend(fontsize=6)
    return _save(fig, path)


def plot_entropy_weights(table: pd.DataFrame, path: str | os.PathLike,
                         l2_all: np.ndarray | None = None,
                         compositions: dict[str, np.ndarray] | None = None,
                         baseline: tuple[str, ...] = ()) -> Path:
    """The entropy neurons (red lines) against all neurons' ``l2_penalty`` (``l2_all``;
    paper Fig. 7a) and the candidates' w_out norm, vocab variance and null-space fraction;
    the histograms of cos(W_U, w_out) over the vocabulary of entropy neurons and of the
    sweep's random neurons (``compositions``, grey; Fig. 7b); the change of next-token
    entropy when an entropy neuron is fixed at -0.17."""
    panels: list[tuple[str, Any]] = []
    if l2_all is not None:
        panels.append(("l2_penalty", l2_all))
    panels += [(s, table[s].dropna()) for s in ("w_out_norm", "vocab_var", "null_frac")
               if s in table.columns]
    n = len(panels) + 1 + (compositions is not None)
    fig, grid = _figure(1, n, figsize=(3.6 * n, 3.2))
    axes = list(grid[0])
    ent = table[table["is_entropy"]]
    for ax, (s, values) in zip(axes, panels):
        ax.hist(values, bins=40, color="0.6",
                label="all neurons" if s == "l2_penalty" else "last-layer candidates")
        for i, v in enumerate(ent[s] if s in ent else []):
            ax.axvline(v, color="tab:red", lw=1.2, label="entropy neurons" if i == 0 else None)
        ax.set_xlabel(s)
        ax.set_yscale("log")
        ax.legend(fontsize=6)
    if compositions is not None:
        ax = axes[len(panels)]
        for name, c in compositions.items():
            counts, edges = np.histogram(c, bins=60)
            mids = (edges[:-1] + edges[1:]) / 2
            grey = name in baseline
            ax.plot(mids, np.maximum(counts, 0.5), color="0.6" if grey else None,
                    lw=0.5 if grey else 1.5, label=None if grey else name)
        ax.set_yscale("log")
        ax.set_xlabel("cos(W_U, w_out)")
        ax.set_ylabel("vocab count")
        ax.legend(fontsize=6, title="grey: random", title_fontsize=6)
    ax = axes[-1]
    swept = ent.dropna(subset=["d_entropy_at_min"])
    ax.bar(swept["neuron_name"], swept["d_entropy_at_min"], color="tab:red")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_ylabel("entropy change at -0.17 (nats)")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return _save(fig, path)


def plot_attention_panel(points: pd.DataFrame, panel: pd.DataFrame, path: str | os.PathLike,
                         max_pairs: int = 6) -> Path:
    """Per pair, every token's change of BOS attention against the change of the head's
    output norm, titled with the Spearman correlation and the fractional BOS change."""
    pairs = list(panel["pair"])[:max_pairs]
    ncols = min(3, max(1, len(pairs)))
    nrows = max(1, -(-len(pairs) // ncols))
    fig, grid = _figure(nrows, ncols, figsize=(4 * ncols, 3.4 * nrows))
    for i, pair in enumerate(pairs):
        ax = grid[i // ncols][i % ncols]
        g = points[points["pair"] == pair]
        r = panel[panel["pair"] == pair].iloc[0]
        ax.scatter(g["delta_bos_attn"], g["delta_out_norm"], s=3, alpha=0.4)
        ax.set_title(f"{pair}\nSpearman {r['spearman_bos_norm']:.2f}, "
                     f"BOS attn {100 * r['frac_delta_bos_attn']:+.1f}%", fontsize=8)
        ax.set_xlabel("Δ BOS attention")
        ax.set_ylabel(f"Δ output norm ({r['norm_measure']})")
    for j in range(len(pairs), nrows * ncols):
        grid[j // ncols][j % ncols].set_visible(False)
    return _save(fig, path)

