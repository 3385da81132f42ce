"""``report/paper.html``: the run's paper index (``RUN/paper/index.json``) as a page.

One row per result of the paper: where it is in the paper, the paper's value, this run's
value (or why it is not computed, and the neurons it was computed for when they stand in
for universal neurons), the files and the command. Figures link to the report's copies
under ``plots/``; other files are named relative to the run directory.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from universal_neurons.constants import (
    PAPER_DIR,
    PAPER_INDEX_JSON,
    PAPER_INDEX_MD,
    PLOTS_DIR,
    REPORT_INDEX,
)
from universal_neurons.report.html import STYLESHEET, esc, link, page, table

log = logging.getLogger(__name__)


def read_paper_index(run: Path) -> dict[str, Any] | None:
    """``RUN/paper/index.json``, or None when absent or unreadable."""
    p = Path(run) / PAPER_DIR / PAPER_INDEX_JSON
    if not p.is_file():
        return None
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        log.warning("%s unreadable (%s); no paper page", p, e)
        return None
    return obj if isinstance(obj, dict) and isinstance(obj.get("results"), list) else None


def _file_cell(rel: str) -> str:
    if rel.startswith(f"{PLOTS_DIR}/") and rel.lower().endswith((".png", ".svg", ".jpg")):
        return link("/".join(quote(part) for part in rel.split("/")), rel)
    return f"<code>{esc(rel)}</code>"


def _run_cell(e: dict[str, Any]) -> str:
    if e.get("status") != "computed":
        return f'<span class="missing">not computed: {esc(e.get("reason") or "")}</span>'
    out = esc(e.get("text") or "")
    if e.get("selection"):
        out += f'<br><span class="note">selection: {esc(e["selection"])}</span>'
    for n in e.get("notes") or ():
        out += f'<br><span class="note">{esc(n)}</span>'
    return out


def render_paper_page(index: dict[str, Any]) -> str:
    """The HTML of ``report/paper.html`` from a paper index."""
    rows = []
    for e in index["results"]:
        if not isinstance(e, dict):
            continue
        files = "<br>".join(_file_cell(str(f)) for f in e.get("files") or ()) or "\u2013"
        rows.append((f"<code>{esc(e.get('id'))}</code>", esc(e.get("where") or ""),
                     esc(e.get("paper") or ""), _run_cell(e), files,
                     f"<code>{esc(e.get('command') or '')}</code>"))
    n_done = sum(isinstance(e, dict) and e.get("status") == "computed" for e in index["results"])
    intro = (f'<p>Every result of Gurnee et al. 2024 next to this run\'s (reference model: '
             f'{esc(index.get("reference") or "unknown")}): {n_done} of {len(rows)} computed. '
             f"The same table is in <code>{PAPER_DIR}/{PAPER_INDEX_MD}</code> and "
             f"<code>{PAPER_DIR}/{PAPER_INDEX_JSON}</code> of the run directory.</p>")
    body = intro + '<div class="scroll">' + table(
        rows, ["id", "paper", "paper's value", "this run", "files", "command"],
        raw_columns=range(6)) + "</div>"
    return page("The paper's results on this run", body, nav=[(REPORT_INDEX, "report")],
                css_href=STYLESHEET)


def selection_note(frames: list[Any]) -> str | None:
    """A note naming the stand-in neurons of tables with a ``selection`` column whose label
    starts with "top" (``analysis.selection``: too few universal neurons), or None."""
    labels: dict[str, None] = {}
    for df in frames:
        if df is not None and "selection" in getattr(df, "columns", ()):
            for v in df["selection"].dropna().astype(str):
                if v.startswith("top"):
                    labels[v] = None
    if not labels:
        return None
    return ('<p class="note"><strong>Too few universal neurons:</strong> rows whose '
            "<code>selection</code> (or <code>n_selected</code> column) says so were computed "
            f"for the {esc('; '.join(labels))}.</p>")
