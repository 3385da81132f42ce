"""Plots of neurons' functional roles: entropy sweeps (paper Fig. 7) and attention
deactivation (Fig. 8). matplotlib is the optional ``plot`` extra, imported lazily."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from universal_neurons.errors import UserError
from universal_neurons.rundir import atomic_path

ENTROPY_PANELS = (("ln_scale", "final norm scale"), ("entropy", "next-token entropy (nats)"),
                  ("loss", "loss (nats)"), ("reciprocal_rank", "reciprocal rank"))


def _figure(nrows: int = 1, ncols: int = 1, **kw: Any) -> tuple[Any, Any]:
    """A pyplot-free ``Figure`` and its axes as a 2-D grid; the global
    matplotlib backend is left alone. UserError naming the extra if matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plots need matplotlib; install it with "
                        "`pip install 'universal-neurons[plot]'`") from None
    fig = Figure(**kw)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    return path


def plot_entropy_sweep(summary: Any, neuron: str, path: str | os.PathLike,
                       model: str = "") -> Path:
    """Metrics vs fixed activation value: ``neuron`` against the baseline neurons (grey,
    mean in black) and the clean model (dashed). ``summary``: ``entropy_sweep`` output."""
    target = summary[(summary["group"] == "target") & (summary["neuron"] == neuron)]
    if target.empty:
        raise ValueError(f"no sweep of neuron {neuron} in the summary")
    base = summary[summary["group"] == "baseline"]
    clean = summary[summary["group"] == "clean"]
    fig, grid = _figure(1, len(ENTROPY_PANELS), figsize=(4 * len(ENTROPY_PANELS), 3.2))
    axes = grid[0]
    for ax, (col, title) in zip(axes, ENTROPY_PANELS):
        for i, (_, g) in enumerate(base.groupby("neuron")):
            g = g.sort_values("value")
            ax.plot(g["value"], g[col], color="0.75", lw=0.8,
                    label="random neurons" if i == 0 else None)
        if not base.empty:
            m = base.groupby("value")[col].mean()
            ax.plot(m.index, m.to_numpy(), color="k", lw=1.5, label="random mean")
        t = target.sort_values("value")
        ax.plot(t["value"], t[col], color="tab:red", lw=2, marker="o", ms=3, label=neuron)
        if not clean.empty:
            ax.axhline(float(clean[col].iloc[0]), color="tab:blue", ls="--", lw=1, label="clean")
        ax.set_xlabel("fixed activation")
        ax.set_title(title)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{model} {neuron}: fixing its activation".strip())
    fig.tight_layout()
    return _save(fig, path)


def plot_heuristic_hist(hist: Any, path: str | os.PathLike, model: str = "") -> Path:
    """Distribution of the heuristic score over (neuron, later head) pairs vs the baseline."""
    fig, grid = _figure(figsize=(6, 3.6))
    ax = grid[0, 0]
    centers = (hist["bin_lo"] + hist["bin_hi"]) / 2
    width = float((hist["bin_hi"] - hist["bin_lo"]).iloc[0])
    ax.bar(centers, hist["count"], width=width, alpha=0.6, label="neurons (w_out)")
    ax.bar(centers, hist["count_baseline"], width=width, alpha=0.6,
           label="random w_out, same norms")
    ax.set_yscale("log")
    ax.set_xlabel(r"$w_{out}^\top W_Q^h k_{BOS} / \sqrt{d_{head}}$")
    ax.set_ylabel("(neuron, head) pairs")
    ax.set_title(f"{model} attention-deactivation heuristic".strip())
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_path_ablation(points: Any, table: Any, path: str | os.PathLike, model: str = "",
                       max_panels: int = 12) -> Path:
    """Per pair: change in the head's BOS attention when the neuron's path to its query is
    ablated, against the neuron's activation."""
    pairs = list(table["pair"])[:max_panels] or ["(none)"]
    cols = min(4, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig, axes = _figure(rows, cols, figsize=(3.4 * cols, 3 * rows))
    for ax, name in zip(axes.ravel(), pairs):
        p = points[points["pair"] == name]
        ax.scatter(p["act"], p["delta_bos_attn"], s=3, alpha=0.4)
        r = table.loc[table["pair"] == name, "corr_act_delta_bos_attn"]
        ax.set_title(f"{name}\nr = {float(r.iloc[0]):.2f}" if len(r) else name, fontsize=8)
        ax.set_xlabel("activation", fontsize=8)
        ax.set_ylabel("Δ attention to BOS", fontsize=8)
    for ax in axes.ravel()[len(pairs):]:
        ax.axis("off")
    fig.suptitle(f"{model} path ablation of neuron → head query".strip())
    fig.tight_layout()
    return _save(fig, path)


def plot_bos_value_norms(value_norms: Any, path: str | os.PathLike, model: str = "") -> Path:
    """Per head: mean |v W_O| of other tokens over that of BOS (log scale)."""
    fig, grid = _figure(figsize=(6, 3.6))
    ax = grid[0, 0]
    labels = [f"L{r.layer}.H{r.head}" for r in value_norms.itertuples()]
    ax.bar(range(len(labels)), value_norms["ratio"], color="tab:purple")
    med = float(value_norms["ratio"].median())
    ax.axhline(med, color="k", ls="--", lw=1, label=f"median {med:.1f}x")
    ax.set_yscale("log")
    if len(labels) <= 48:
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_xlabel("head")
    ax.set_ylabel(r"mean $|W_O v_t|$ / $|W_O v_{BOS}|$")
    ax.set_title(f"{model} BOS value norms".strip())
    ax.legend(fontsize=8)
    return _save(fig, path)
