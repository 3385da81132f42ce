"""Figures of the paper's results drawn from activations and the unembedding
(``analysis.paper_activations``): class-split histograms, unigram roles, corpus-source
neurons and prediction neurons conditioned on the next token.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from universal_neurons.analysis.paper_activations import ROLES
from universal_neurons.report.plots_roles import _figure as _plain_figure
from universal_neurons.report.plots_roles import _save


def _figure(nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Any, Any]:
    """A figure with constrained layout (titles, labels and colour bars do not overlap)."""
    return _plain_figure(nrows, ncols, layout="constrained", **kw)


def _grid(n: int, ncols: int = 3, size: tuple[float, float] = (4.0, 3.0)):
    ncols = min(ncols, max(1, n))
    nrows = max(1, -(-n // ncols))
    fig, grid = _figure(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows))
    axes = [grid[i // ncols][i % ncols] for i in range(nrows * ncols)]
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def plot_class_split(cos: np.ndarray, masks: np.ndarray, titles: Sequence[str],
                     features: Sequence[str], path: str | os.PathLike) -> Path:
    """Per neuron (row of ``cos: [n, vocab]``), the histogram of its cosines with the
    unembedding split by its best token class (``masks: Bool[n, vocab]``), overlaid as in
    the paper."""
    fig, axes = _grid(len(titles))
    for ax, c, m, title, feat in zip(axes, cos, masks, titles, features):
        edges = np.histogram_bin_edges(c, bins=60)
        ax.hist(c[m], bins=edges, alpha=0.5, color="tab:red", label=feat)
        ax.hist(c[~m], bins=edges, alpha=0.5, color="tab:blue", label=f"not {feat}")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("cos(W_U, w_out)")
        ax.legend(fontsize=6)
    return _save(fig, path)


def plot_unigram_roles(roles: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Mean activation (± std) per token role for each unigram neuron."""
    neurons = list(dict.fromkeys(roles["neuron_name"]))
    fig, grid = _figure(1, 1, figsize=(max(5.0, 1.1 * len(neurons) + 2), 3.6))
    ax = grid[0][0]
    width = 0.8 / len(ROLES)
    colors = ("tab:blue", "tab:orange", "tab:green", "0.6")
    for r, (role, color) in enumerate(zip(ROLES, colors)):
        sub = roles[roles["role"] == role].set_index("neuron_name").reindex(neurons)
        x = np.arange(len(neurons)) - 0.4 + width * (r + 0.5)
        ax.bar(x, sub["mean"], width, yerr=sub["std"], color=color, label=role.replace("_", " "),
               capsize=2)
    labels = [f"{n}\n{roles[roles['neuron_name'] == n]['feature'].iloc[0]}" for n in neurons]
    ax.set_xticks(np.arange(len(neurons)), labels, fontsize=7)
    ax.set_ylabel("activation")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_source_neurons(table: pd.DataFrame, path: str | os.PathLike, top: int = 3) -> Path:
    """Left: per corpus source, the variance reduction of its ``top`` best-explained
    neurons; right: mean activation by source of each source's best neuron."""
    fig, grid = _figure(1, 2, figsize=(11, 3.8))
    ax, ax2 = grid[0]
    sources = list(dict.fromkeys(table["source"]))
    best = table[table["rank"] < top].sort_values(["source", "rank"])
    width = 0.8 / top
    for k in range(top):
        sub = best[best["rank"] == k].set_index("source").reindex(sources)
        x = np.arange(len(sources)) - 0.4 + width * (k + 0.5)
        ax.bar(x, sub["vr"], width, label=f"#{k + 1}")
        for xi, name in zip(x, sub["neuron_name"]):
            ax.text(xi, 0, str(name), rotation=90, fontsize=6, va="bottom", ha="center")
    ax.set_xticks(np.arange(len(sources)), sources, fontsize=8)
    ax.set_ylabel("variance reduction (source vs rest)")
    ax.legend(fontsize=7)
    tops = list(dict.fromkeys(best[best["rank"] == 0]["neuron_name"]))
    mat = (table[table["neuron_name"].isin(tops)]
           .pivot(index="neuron_name", columns="source", values="mean").reindex(tops)[sources])
    im = ax2.imshow(mat.to_numpy(), aspect="auto", cmap="coolwarm")
    ax2.set_xticks(np.arange(len(sources)), sources, fontsize=8)
    ax2.set_yticks(np.arange(len(tops)), tops, fontsize=8)
    fig.colorbar(im, ax=ax2, label="mean activation")
    return _save(fig, path)


def plot_prediction_conditional(acts: np.ndarray, inside: np.ndarray, titles: Sequence[str],
                                path: str | os.PathLike) -> Path:
    """Per neuron (column of ``acts: [rows, k]``), activation histograms (densities) when
    the next token is in its token set (``inside: Bool[rows, k]``) and when not."""
    fig, axes = _grid(len(titles))
    for j, (ax, title) in enumerate(zip(axes, titles)):
        a, m = acts[:, j], inside[:, j]
        edges = np.histogram_bin_edges(a, bins=60)
        ax.hist(a[~m], bins=edges, density=True, alpha=0.5, color="0.5", label="next not in set")
        if m.any():
            ax.hist(a[m], bins=edges, density=True, alpha=0.6, color="tab:red",
                    label=f"next in set ({int(m.sum())})")
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("activation")
        ax.legend(fontsize=6)
    return _save(fig, path)


def _token_label(token: str) -> str:
    """A token as matplotlib text: quoted with escapes (spaces and newlines visible), ``$``
    not read as mathtext."""
    return repr(token).replace("$", r"\$")


def plot_topic_neurons(table: pd.DataFrame, path: str | os.PathLike, n: int = 5) -> Path:
    """The paper's place-neuron heatmap (``topic_neurons.ipynb``): one column per topic
    neuron (the first ``n`` of ``table``, ``paper_topics.top_token_table``), rows its top
    tokens by mean activation, colour the mean over the column's largest, each cell
    annotated with its token."""
    rows = table[table["rank"] >= 0]
    neurons = list(dict.fromkeys(rows["neuron_name"]))[:n]
    k = int(rows["rank"].max()) + 1 if len(rows) else 1
    values = np.full((k, len(neurons)), np.nan)
    labels = [[""] * len(neurons) for _ in range(k)]
    for j, name in enumerate(neurons):
        for r in rows[rows["neuron_name"] == name].itertuples():
            values[int(r.rank), j] = r.mean_norm
            labels[int(r.rank)][j] = _token_label(str(r.token))
    fig, grid = _figure(1, 1, figsize=(1.9 * max(len(neurons), 1) + 1.6, 0.36 * k + 1.4))
    ax = grid[0][0]
    im = ax.imshow(values, aspect="auto", cmap="magma", vmin=0, vmax=1)
    for r in range(k):
        for j in range(len(neurons)):
            v = values[r, j]
            ax.text(j, r, labels[r][j], ha="center", va="center", fontsize=7,
                    color="black" if np.isfinite(v) and v > 0.6 else "white")
    feats = [rows[rows["neuron_name"] == m]["feature"].iloc[0] for m in neurons]
    ax.set_xticks(np.arange(len(neurons)),
                  [f"{m}\n{f.split(':', 1)[-1]}" for m, f in zip(neurons, feats)], fontsize=7)
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, label="mean token activation / neuron max")
    return _save(fig, path)
