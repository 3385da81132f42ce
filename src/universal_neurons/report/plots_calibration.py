"""The threshold curve: share of universal neurons against the excess threshold.

Reads ``RUN/universality/threshold_curve.parquet`` (written by the correlate stage) and
draws one line per model, with its jackknife band when correlate ran with ``--blocks``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from universal_neurons.report.figure_io import colors as _colors
from universal_neurons.report.figure_io import new_figure as _figure
from universal_neurons.report.figure_io import save_png as _save


def plot_threshold_curve(curve, path: Path, threshold: float | None = None) -> bool:
    """Lines of ``share`` vs ``threshold`` per model (``curve``: the threshold-curve table);
    a dashed line at the run's ``threshold``. False if there is nothing to plot."""
    if curve is None or len(curve) == 0:
        return False
    models = list(dict.fromkeys(curve["model"]))
    fig = _figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for model, color in zip(models, _colors(len(models))):
        c = curve[curve["model"] == model].sort_values("threshold")
        x, y = c["threshold"].to_numpy(), 100 * c["share"].to_numpy()
        ax.plot(x, y, marker="o", ms=3, color=color, label=model)
        lo, hi = c["share_ci_low"].to_numpy(), c["share_ci_high"].to_numpy()
        if np.isfinite(lo).any():
            ax.fill_between(x, 100 * lo, 100 * hi, color=color, alpha=0.2, lw=0)
    if threshold is not None:
        ax.axvline(threshold, color="0.4", ls="--", lw=1)
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_ylim(bottom=0, top=100)
    ax.set_xlabel("excess correlation threshold")
    ax.set_ylabel("universal neurons (%)")
    ax.set_title("universal share vs threshold" + (" (band: 95% block jackknife)"
                                                   if curve["share_ci_low"].notna().any()
                                                   else ""))
    ax.legend(fontsize=7)
    _save(fig, path)
    return True
