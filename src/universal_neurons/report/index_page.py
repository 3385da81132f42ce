"""The report's front page: summary, figures, claims, families, entropy, attention."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from universal_neurons.constants import (
    FIG_ATTENTION_BOS_VALUE_NORMS,
    FIG_ATTENTION_HEURISTIC,
    FIG_ATTENTION_PATH_ABLATION,
    FIG_CORR_VS_BASELINE,
    FIG_ENTROPY,
    FIG_FAMILIES,
    FIG_PREDICTION_CURVES,
    FIG_PROPERTIES_PERCENTILES,
    FIG_UNIVERSAL_BY_LAYER,
    FIGURE_SECTIONS,
    REPORT_PAPER_PAGE,
    figure_section,
)
from universal_neurons.report.browser import browser_file
from universal_neurons.report.front import (
    FrontTable,
    families_not_computed,
    front_tables,
    table_html,
)
from universal_neurons.report.html import (
    STYLESHEET,
    esc,
    fmt,
    frame_table,
    link,
    page,
    section,
    table,
)
from universal_neurons.report.neuron_page import neuron_href
from universal_neurons.report.paper_page import read_paper_index, selection_note
from universal_neurons.report.rundata import RunData, paper_reference
from universal_neurons.report.svg import hbar_svg
from universal_neurons.report.tokens import LEGEND
from universal_neurons.report.trajectory_section import trajectory_section

# Figures are shown in the section ``constants.FIGURE_SECTIONS`` gives their file; the rest
# under "Other figures". Stage tables: see ``front``.
MAX_PROBLEMS = 20
SECTIONS = ("properties", "families", "prediction", "entropy", "attention", "trajectory")
"""The report's own sections, in order; a section named only in ``constants.FIGURE_SECTIONS``
gets one of its own after them (so new figures need no change here)."""
SECTION_TITLES = {"properties": "Properties of universal neurons", "families": "Neuron families",
                  "prediction": "Prediction and suppression neurons",
                  "entropy": "Entropy neurons", "attention": "Attention (de)activation neurons",
                  "paper": "Figures of the paper"}
FIGURE_TITLES = {
    FIG_CORR_VS_BASELINE: "Excess correlation against the rotated baseline: {model}",
    FIG_UNIVERSAL_BY_LAYER: "Universal neurons by layer",
    FIG_PROPERTIES_PERCENTILES: "Properties of universal neurons (percentiles among all neurons)",
    FIG_FAMILIES: "Neurons per family: {model}",
    FIG_PREDICTION_CURVES: "Prediction and suppression neurons by layer",
    FIG_ENTROPY: "Entropy neuron {neuron}: effect of its activation",
    FIG_ATTENTION_HEURISTIC: "Deactivation heuristic of neuron -> head pairs",
    FIG_ATTENTION_PATH_ABLATION: "Path ablation of neuron -> head pairs",
    FIG_ATTENTION_BOS_VALUE_NORMS: "Value norms of BOS vs other tokens",
}
"""Captions of figure files (``{field}`` filled from the name); others get one from the name."""


def figure_sections() -> list[str]:
    """:data:`SECTIONS`, then any other section ``constants.FIGURE_SECTIONS`` names."""
    return list(dict.fromkeys((*SECTIONS, *FIGURE_SECTIONS.values())))


def _template_regex(template: str) -> str:
    return "".join(f"(?P<{p[1:-1]}>.+)" if p.startswith("{") else re.escape(p)
                   for p in re.split(r"(\{[a-z_]+\})", template))


def figure_title(name: str) -> str:
    """A caption for a figure file: ``corr_vs_baseline_tiny-a.png`` -> "Excess correlation
    against the rotated baseline: tiny-a"; ``paper_raw_by_layer.png`` -> "Raw by layer
    (paper)"."""
    base = Path(name).name
    if base in FIGURE_TITLES:
        return FIGURE_TITLES[base]
    for template, title in FIGURE_TITLES.items():
        m = re.fullmatch(_template_regex(template), base) if "{" in template else None
        if m:
            return title.format(**m.groupdict())
    stem = Path(base).stem
    if stem.startswith("paper_"):
        return stem[len("paper_"):].replace("_", " ").capitalize() + " (paper)"
    return stem.replace("_", " ").capitalize()


@dataclass
class ModelSummary:
    name: str
    n_neurons: int | None = None
    n_universal: int | None = None
    n_layers: int | None = None
    n_pages: int = 0
    top: list[tuple[int, int, float]] = field(default_factory=list)  # (layer, neuron, excess)

    @property
    def pct_universal(self) -> float | None:
        if not self.n_neurons or self.n_universal is None:
            return None
        return 100.0 * self.n_universal / self.n_neurons


TOP_LISTED = 10
"""Neurons listed per model under "Most universal neurons"."""


def summarize(name: str, df, pages, n_top: int = TOP_LISTED) -> ModelSummary:
    s = ModelSummary(name, n_pages=len(pages))
    if df is None:
        return s
    s.n_neurons = len(df)
    s.n_layers = int(df["layer"].max()) + 1 if len(df) else 0
    if "is_universal" in df.columns:
        s.n_universal = int(df["is_universal"].fillna(False).astype(bool).sum())
    if "excess_corr" in df.columns:
        top = df.nlargest(n_top, "excess_corr")
        s.top = [(int(r.layer), int(r.neuron), float(r.excess_corr)) for r in top.itertuples()]
    return s


def _figure(rel: str, name: str) -> str:
    title = figure_title(name)
    return (f'<figure><a href="{esc(rel)}" title="{esc(name)}"><img src="{esc(rel)}" '
            f'alt="{esc(title)}" loading="lazy"></a><figcaption>{esc(title)}</figcaption></figure>')


def _figures(plots: Sequence[tuple[str, str]]) -> str | None:
    if not plots:
        return None
    return f'<div class="figures">{"".join(_figure(rel, name) for rel, name in plots)}</div>'


def _join(*parts: str | None) -> str | None:
    present = [p for p in parts if p]
    return "".join(present) if present else None


def _summary_html(run: RunData, models: Sequence[ModelSummary]) -> str:
    m = run.manifest
    facts = [("run directory", esc(run.path.name)), ("models", esc(", ".join(s.name for s in models)))]
    tokens, streamed = run.n_tokens(), run.dataset_tokens()
    text = "not recorded" if tokens is None else f"{tokens:,} kept"
    if tokens is not None and streamed is not None:
        text += f" of {streamed:,} streamed (BOS, padding and newlines dropped)"
    facts.append(("tokens", esc(text)))
    stages = m.get("stages") if isinstance(m.get("stages"), dict) else {}
    if stages:
        facts.append(("stages", esc(", ".join(f"{k} ({v.get('finished_at', '?')})" if isinstance(v, dict)
                                              else str(k) for k, v in stages.items()))))
    versions = m.get("versions")
    if isinstance(versions, dict) and versions:
        facts.append(("versions", esc(", ".join(f"{k} {v}" for k, v in versions.items()))))
    out = table(facts, None, raw_columns=(0, 1), cls="facts")
    rows, bars = [], []
    for s in models:
        ref = paper_reference(s.name)
        pct = s.pct_universal
        browse = link(quote(browser_file(s.name)), "browse") if s.n_neurons else ""
        dash = "\u2013"  # not computed (e.g. a non-reference model) / not in the paper
        rows.append((esc(s.name), fmt(s.n_layers), fmt(s.n_neurons),
                     dash if s.n_universal is None else fmt(s.n_universal),
                     dash if pct is None else share_text(pct, _recorded_share(run, s.name)),
                     dash if ref is None else f"{ref:.2f}%", browse))
        if pct is not None:
            bars.append((s.name, pct, ref))
    threshold = run.universal_threshold()
    rule = ("as marked in the neuron tables" if threshold is None
            else f"excess correlation &gt; {threshold:g}")
    out += f"<h3>Universal neurons ({rule})</h3>"
    out += table(rows, ["model", "layers", "neurons", "universal", "% universal",
                        "paper", "browser"], raw_columns=range(7))
    out += ('<p class="note">Paper (Gurnee et al. 2024): GPT2-small-a 4.16%, GPT2-medium-a '
            "1.23%, Pythia-160m 1.26%; red ticks mark them where the model is the same.</p>")
    if bars:
        out += hbar_svg(bars)
    return out


def share_text(pct: float, recorded: Mapping | None) -> str:
    """``"4.16%"``, with the correlate stage's 95% block-jackknife interval (``--blocks``) and
    the count significant at q < 0.05 (``--rotations``) when it recorded them."""
    text = f"{pct:.2f}%"
    if not isinstance(recorded, Mapping):
        return text
    lo, hi = recorded.get("fraction_ci_low"), recorded.get("fraction_ci_high")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
        text += f" (95% CI {100 * lo:.2f}\u2013{100 * hi:.2f}%)"
    if isinstance(recorded.get("n_significant"), int):
        text += f"; {recorded['n_significant']:,} with q &lt; 0.05"
    return text


def _recorded_share(run: RunData, model: str) -> Mapping | None:
    from universal_neurons.analysis.selection import correlate_record

    universal = correlate_record(run.manifest, "universal")
    return universal.get(model) if isinstance(universal, dict) else None


def _top_html(models: Sequence[ModelSummary], pages: Mapping[str, set]) -> str | None:
    parts = []
    for s in models:
        if not s.top:
            continue
        rows = []
        for layer, neuron, excess in s.top:
            name = f"L{layer}.{neuron}"
            cell = esc(name)
            if (layer, neuron) in pages.get(s.name, ()):
                cell = link(neuron_href(s.name, layer, neuron, from_neuron_page=False), name)
            rows.append((cell, fmt(excess)))
        parts.append(f"<div><h3>{esc(s.name)}</h3>{table(rows, ['neuron', 'excess_corr'], raw_columns=(0, 1))}</div>")
    return f'<div class="grid">{"".join(parts)}</div>' if parts else None


def _front(sec: str, tables: Mapping[str, Sequence[FrontTable]], run: RunData,
           pages: Mapping[str, set], token_text: Callable[[int], str] | None) -> str | None:
    parts = []
    for t in tables.get(sec, ()):
        skip: set[str] = set()
        if sec == "families" and "family" in t.table.frame.columns:
            skip = families_not_computed(run, t.model, set(t.table.frame["family"].astype(str)))
        parts.append(table_html(t, run.models, pages, token_text, skip))
    return f'<div class="grid">{"".join(parts)}</div>' if parts else None


def render_index(run: RunData, models: Sequence[ModelSummary], plots: Sequence[tuple[str, str]],
                 pages: Mapping[str, set], problems: Sequence[str] = (),
                 tables: Mapping[str, Sequence[FrontTable]] | None = None,
                 token_text: Callable[[int], str] | None = None) -> str:
    """The HTML of ``report/index.html``. ``plots`` are ``(relative URL, display name)``;
    ``tables`` are :func:`front.front_tables` (read here when not given); ``token_text``
    decodes a token id (the tables' ``token`` cells are re-decoded with it)."""
    if tables is None:
        tables = front_tables(run)
    secs = figure_sections()
    groups: dict[str, list[tuple[str, str]]] = {k: [] for k in (*secs, "other")}
    for rel, name in plots:
        key = figure_section(Path(name).name)
        groups[key if key in groups else "other"].append((rel, name))
    claims = run.claims()
    claims_html = None
    if claims is not None:
        claims_html = f'<div class="scroll"><h3>Claims of the paper, tested</h3>{frame_table(claims)}</div>'
        claims_html = _join(selection_note([claims]), claims_html)
    families_note = selection_note([t.table.frame for t in tables.get("families", ())])

    def body_of(sec: str) -> str | None:  # figures first, then the tables
        figures = _figures(groups[sec])
        if sec == "properties":
            return _join(figures, claims_html, front("claims"))
        if sec == "families":
            return _join(figures, families_note, front("families"))
        return _join(figures, front(sec))

    def section_of(sec: str) -> str:
        if sec == "trajectory":  # a section of its own making (report.trajectory_section)
            return trajectory_section(run.path, groups["trajectory"], run.problems)
        return section(ids.get(sec, sec), SECTION_TITLES.get(sec, sec.replace("_", " ").capitalize()),
                       body_of(sec))

    def front(sec: str) -> str | None:
        return _front(sec, tables, run, pages, token_text)

    ids = {"properties": "claims"}  # the properties section's HTML id
    sections = [
        section("summary", "Summary", _summary_html(run, models)),
        section("top", "Most universal neurons", _top_html(models, pages),
                missing="not computed (no excess_corr column)"),
        *(section_of(sec) for sec in secs if sec in SECTIONS or groups[sec]),
        section("figures", "Other figures", _figures(groups["other"]),
                missing="no other figures in plots/"),
    ]
    if problems:
        shown = list(dict.fromkeys(problems))[:MAX_PROBLEMS]
        items = "".join(f"<li>{esc(p)}</li>" for p in shown)
        if len(problems) > len(shown):
            items += f"<li>… {len(problems) - len(shown):,} more (see the log)</li>"
        sections.append(section("problems", "Problems while building this report", f"<ul>{items}</ul>"))
    nav = [("#summary", "summary"), ("#claims", "properties"), ("#families", "families"),
           ("#prediction", "prediction"), ("#entropy", "entropy"), ("#attention", "attention")]
    nav += [(f"#{sec}", sec.replace("_", " ")) for sec in secs if sec not in SECTIONS and groups[sec]]
    nav.append(("#figures", "other figures"))
    if read_paper_index(run.path) is not None:
        nav.append((REPORT_PAPER_PAGE, "the paper's results"))
    nav += [(quote(browser_file(s.name)), f"browser: {s.name}") for s in models if s.n_neurons]
    nav.append(("glossary.html", "glossary"))
    body = "".join(sections) + f'<p class="note">{LEGEND}</p>'
    return page("Universal neurons report", body, nav=nav, css_href=STYLESHEET)
