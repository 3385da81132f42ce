"""The report's "Universality over training" section (the trajectory stage's tables and
figures). Empty when the run has no trajectory."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from universal_neurons.constants import (
    TRAJECTORY_NEURONS,
    TRAJECTORY_SUMMARY,
    figure_section,
    trajectory_file,
)
from universal_neurons.report.html import esc, fmt, section, table

log = logging.getLogger(__name__)

SECTION = "trajectory"
"""The section id, and the ``constants.FIGURE_SECTIONS`` value of its figures."""
TOP_EMERGED = 10
"""Earliest-universal neurons listed."""


def _read(path: Path, problems: list[str]) -> Any:
    import pandas as pd

    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except Exception as e:  # a damaged table must not break the report
        problems.append(f"cannot read {path.name}: {str(e)[:120]}")
        log.warning("cannot read %s: %s", path, e)
        return None


def _missing(value: Any) -> bool:
    import pandas as pd

    return value is None or bool(pd.isna(value))


def _pct(value: Any) -> str:
    return "" if _missing(value) else f"{100 * float(value):.2f}%"


def _position(row: Any) -> str:
    for col in ("tokens", "step"):
        v: Any = getattr(row, col, None)
        if not _missing(v):
            return f"{int(v):,} {col}"
    return ""


def summary_html(summary: Any) -> str:
    """One row per checkpoint: share universal, median excess, emergence, persistence and
    how it predicts the last checkpoint."""
    rows = [(esc(r.checkpoint), esc(_position(r)), fmt(r.n_universal), _pct(r.share_universal),
             fmt(r.median_excess), fmt(r.n_emerged), _pct(r.persistence_rate),
             fmt(r.spearman_last), fmt(r.pearson_last), fmt(r.precision_last),
             fmt(r.recall_last)) for r in summary.itertuples(index=False)]
    head = ["checkpoint", "position", "universal", "% universal", "median excess",
            "new universal", "persist", "Spearman w/ last", "Pearson w/ last",
            "precision for last", "recall for last"]
    note = ("<p class=\"note\">Member a's neurons (same seed, same index) at each checkpoint, "
            "against the other members at that checkpoint. <em>new universal</em>: universal "
            "for the first time; <em>persist</em>: of the universal ones, the share universal at "
            "every later checkpoint; the last four columns: how the excess correlation (and "
            "being universal) here predicts it at the last checkpoint.</p>")
    return table(rows, head, raw_columns=range(len(head))) + note


def emerged_html(neurons: Any, n: int = TOP_EMERGED) -> str | None:
    """The neurons that became universal earliest and stayed, by excess at the last."""
    if neurons is None or "stays_universal" not in neurons.columns:
        return None
    last = neurons["checkpoint_index"].max()
    stay = neurons[(neurons["checkpoint_index"] == last) & neurons["stays_universal"]]
    if stay.empty:
        return None
    stay = stay.sort_values(["first_universal_index", "excess_corr"], ascending=[True, False])
    rows = [(esc(f"L{r.layer}.{r.neuron}"), esc(r.first_universal), fmt(r.excess_corr))
            for r in stay.head(n).itertuples(index=False)]
    return ("<h3>Universal early and ever after</h3>"
            + table(rows, ["neuron", "universal since", "excess at the last"],
                    raw_columns=(0, 1, 2)))


def _figures(plots: Sequence[tuple[str, str]]) -> str:
    return "".join(f'<figure><a href="{esc(rel)}"><img src="{esc(rel)}" alt="{esc(name)}" '
                   f'loading="lazy"></a><figcaption>{esc(name)}</figcaption></figure>'
                   for rel, name in plots if figure_section(Path(name).name) == SECTION)


def trajectory_section(run_dir: str | Path, plots: Sequence[tuple[str, str]] = (),
                       problems: list[str] | None = None) -> str:
    """The section's HTML, or ``""`` when the run has neither trajectory tables nor figures.
    ``plots`` are the report's ``(relative URL, name)`` figures (only the trajectory ones are
    shown); read failures are appended to ``problems``."""
    problems = problems if problems is not None else []
    root = Path(run_dir)
    summary = _read(root / trajectory_file(TRAJECTORY_SUMMARY), problems)
    figures = _figures(plots)
    if summary is None and not figures:
        return ""
    parts = []
    if summary is not None:
        parts.append(summary_html(summary))
        parts.append(emerged_html(_read(root / trajectory_file(TRAJECTORY_NEURONS), problems))
                     or "")
    parts.append(figures)
    return section(SECTION, "Universality over training", "".join(parts))
