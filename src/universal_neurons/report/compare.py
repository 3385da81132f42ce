"""The compare view: a neuron beside its best partner in each sibling model.

``report/compare/<model>/L{l}.{n}.html`` has one column per model (the neuron first, then
its best match in each sibling, with their correlation and rotated baseline) and one row
per part of a neuron page: key statistics, activation histogram, top examples, promoted
and suppressed tokens. Each part is drawn by the neuron page's own building blocks
(``neuron_page``), on the first :data:`COMPARE_EXAMPLES` examples and
:data:`COMPARE_TOKENS` tokens, so the page stays small with five columns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from universal_neurons.constants import neuron_name, safe_name
from universal_neurons.report import neuron_page as blocks
from universal_neurons.report.details import NeuronDetail
from universal_neurons.report.glossary import GLOSSARY_FILE, term_html
from universal_neurons.report.html import STYLESHEET, esc, fmt, page
from universal_neurons.report.partners import neuron_ref_html
from universal_neurons.report.tokens import LEGEND

COMPARE_DIR = "compare"
COMPARE_EXAMPLES = 5
"""Top examples shown per neuron in the compare view."""
COMPARE_TOKENS = 8
"""Promoted and suppressed tokens shown per neuron in the compare view."""
COMPARE_STATS = ("excess_corr", "sparsity", "kurt", "skew", "vocab_kurt", "vocab_skew",
                 "w_out_norm", "in_out_sim")
"""Statistics shown in the compare view (those a neuron's table has)."""


def compare_file(model: str, layer: int, neuron: int) -> str:
    """Path of a compare page relative to ``report/`` (on disk)."""
    return f"{COMPARE_DIR}/{safe_name(model)}/{neuron_name(layer, neuron)}.html"


def compare_href(model: str, layer: int, neuron: int, *, depth: int) -> str:
    """URL of a compare page from a page ``depth`` folders below ``report/`` (0: the
    browser and front page; 2: neuron and compare pages)."""
    return "../" * depth + f"{COMPARE_DIR}/{quote(safe_name(model))}/{neuron_name(layer, neuron)}.html"


@dataclass
class Column:
    """One model's neuron in the compare view."""

    model: str
    layer: int
    neuron: int
    row: Mapping
    detail: NeuronDetail | None
    corr: float | None = None  # with the first column's neuron (None for the first)
    baseline: float | None = None


def _compact(d: NeuronDetail | None) -> NeuronDetail | None:
    if d is None:
        return None
    return dataclasses.replace(
        d, examples=None if d.examples is None else d.examples[:COMPARE_EXAMPLES],
        promoted=None if d.promoted is None else d.promoted[:COMPARE_TOKENS],
        suppressed=None if d.suppressed is None else d.suppressed[:COMPARE_TOKENS],
        token_means=None, partners=[])


MISSING = '<p class="missing">not computed</p>'


def _cell(html: str | None, cls: str = "cell") -> str:
    return f'<div class="{cls}">{html if html is not None else MISSING}</div>'


def _head(c: Column, first: bool, labels: Mapping[str, str],
          pages: Mapping[str, Collection[tuple[int, int]]]) -> str:
    name = neuron_ref_html(c.model, c.layer, c.neuron, labels, pages, _neuron_href)
    if first:
        sub = "this neuron"
    elif c.corr is None:
        sub = "best match"
    else:
        sub = f"correlation {esc(fmt(c.corr, 3))}"
        if c.baseline is not None:
            sub += f" (rotated baseline {esc(fmt(c.baseline, 3))})"
    univ = c.row.get("is_universal")
    badge = ' <span class="badge universal">universal</span>' if univ is True or univ == 1 else ""
    return f"<h3>{name}{badge}</h3><p class=\"note\">{esc(c.model)} · {sub}</p>"


def _stats(columns: Sequence[Column], labels: Mapping[str, str]) -> str | None:
    """One table: a row per statistic, a column per neuron."""
    present = [k for k in COMPARE_STATS if any(k in c.row for c in columns)]
    if not present:
        return None
    head = "".join(f"<th>{esc(labels.get(c.model, c.model))}:{esc(neuron_name(c.layer, c.neuron))}</th>"
                   for c in columns)
    body = "".join(f"<tr><td>{term_html(k, '../../')}</td>"
                   + "".join(f'<td class="num">{fmt(c.row.get(k))}</td>' for c in columns) + "</tr>"
                   for k in present)
    return (f'<div class="scroll"><table><thead><tr><th>statistic</th>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _without_note(html: str | None) -> str | None:
    """A neuron-page block without its leading/trailing explanatory note (said once here)."""
    if html is None:
        return None
    if html.startswith('<p class="note">'):
        html = html[html.index("</p>") + 4:]
    tail = html.rfind('<p class="note">')
    if tail > 0 and html.endswith("</p>"):
        html = html[:tail]
    return html


def _neuron_href(model: str, layer: int, neuron: int) -> str:
    return f"../../neurons/{quote(safe_name(model))}/{neuron_name(layer, neuron)}.html"


def render_compare_page(columns: Sequence[Column], labels: Mapping[str, str],
                        pages: Mapping[str, Collection[tuple[int, int]]]) -> str:
    """The HTML of ``compare/<model>/L{l}.{n}.html``; ``columns[0]`` is the neuron itself."""
    first = columns[0]
    details = [_compact(c.detail) for c in columns]
    rows: list[tuple[str, list[str | None]]] = [
        ("", [_head(c, i == 0, labels, pages) for i, c in enumerate(columns)]),
        ("Activation histogram", [None if d is None else blocks._histogram_html(d) for d in details]),
        (f"Top activating examples (first {COMPARE_EXAMPLES})",
         [None if d is None else _without_note(blocks._examples_html(d)) for d in details]),
        ("Promoted and suppressed tokens",
         [None if d is None else _without_note(blocks._vocab_html(d)) for d in details]),
    ]
    grid = []
    for title, cells in rows:
        if title:
            grid.append(f'<h2 class="row">{esc(title)}</h2>')
        grid.extend(_cell(c, "cell" if title else "cell head") for c in cells)
        if not title:
            stats = _stats(columns, labels)
            grid.append(f'<h2 class="row">Statistics</h2><div class="wide">{stats or MISSING}</div>')
    n = len(columns)
    body = (f"<p>{esc(first.model)} {esc(neuron_name(first.layer, first.neuron))} beside its best "
            f"match in each sibling model (the sibling neuron whose activations correlate most "
            f"with it). Definitions: <a href=\"../../{GLOSSARY_FILE}\">glossary</a>.</p>"
            f'<div class="compare" style="--cols:{n}">{"".join(grid)}</div>'
            f'<p class="note">Examples: background opacity is proportional to the activation '
            f"relative to the neuron's largest; the outlined token is the example's maximum. "
            f"{LEGEND}</p>")
    me = _neuron_href(first.model, first.layer, first.neuron)
    nav = [("../../index.html", "report"), (me, f"neuron page: {neuron_name(first.layer, first.neuron)}")]
    title = f"Compare {first.model} {neuron_name(first.layer, first.neuron)}"
    return page(title, body, nav=nav, css_href=f"../../{STYLESHEET}")
