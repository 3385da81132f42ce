"""One neuron's page: statistics, histogram, top examples, tokens, partners, explanations."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from urllib.parse import quote

from universal_neurons.constants import neuron_name, safe_name
from universal_neurons.report.browser import browser_file, families_of
from universal_neurons.report.details import NeuronDetail
from universal_neurons.report.examples import example_html, examples_html, token_span
from universal_neurons.report.glossary import GLOSSARY_FILE, term_html
from universal_neurons.report.html import STYLESHEET, esc, fmt, page, section, table
from universal_neurons.report.partners import neuron_ref_html
from universal_neurons.report.svg import histogram_svg
from universal_neurons.report.tokens import LEGEND, token_html

__all__ = ["example_html", "neuron_file", "neuron_href", "render_neuron_page", "token_code",
           "token_span"]

FAMILY_COLUMNS = ("families", "family_scores", "family_features")
STAT_GROUPS = {
    "correlation": ["excess_corr", "mean_corr", "max_corr", "min_corr", "mean_baseline",
                    "max_baseline", "min_baseline", "is_universal"],
    "weights": ["w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty"],
    "activation": ["mean", "var", "skew", "kurt", "sparsity"],
    "vocabulary (W_U w_out)": ["vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt"],
}


def neuron_file(model: str, layer: int, neuron: int) -> str:
    """Path of a neuron page relative to ``report/`` (on disk)."""
    return f"neurons/{safe_name(model)}/{neuron_name(layer, neuron)}.html"


def neuron_href(model: str, layer: int, neuron: int, *, from_neuron_page: bool) -> str:
    """URL of a neuron page, from another neuron page or from ``report/``."""
    rel = f"{quote(safe_name(model))}/{neuron_name(layer, neuron)}.html"
    return f"../{rel}" if from_neuron_page else f"neurons/{rel}"


def _stats_html(row: Mapping, skip: Collection[str] = ()) -> str | None:
    blocks, used = [], {"layer", "neuron", *FAMILY_COLUMNS, *skip}
    for title, keys in STAT_GROUPS.items():
        present = [(k, row[k]) for k in keys if k in row]
        used |= set(keys)
        if present:
            blocks.append(f"<div><h3>{esc(title)}</h3>{_stat_table(present)}</div>")
    rest = [(k, v) for k, v in row.items() if k not in used and _scalar(v)
            and not k.endswith(("_best", "_corr", "_baseline", "_best_layer"))]
    if rest:
        blocks.append(f"<div><h3>other</h3>{_stat_table(rest)}</div>")
    return f'<div class="grid">{"".join(blocks)}</div>' if blocks else None


def _stat_table(items) -> str:
    """Statistic names link to the glossary, with the definition as hover text."""
    return table(((term_html(k, "../../"), fmt(v)) for k, v in items), ["statistic", "value"],
                 raw_columns=(0, 1))


def _scalar(v) -> bool:
    return v is None or isinstance(v, (str, int, float, bool)) or (hasattr(v, "item") and getattr(v, "ndim", 0) == 0)


def _page_href(model: str, layer: int, neuron: int) -> str:
    return neuron_href(model, layer, neuron, from_neuron_page=True)


def _matches(model: str, items, pages, labels) -> str:
    return ", ".join(f"{neuron_ref_html(model, la, n, labels, pages, _page_href)} ({fmt(v, 3)})"
                     for la, n, v in items)


def _partners_html(detail: NeuronDetail, pages: Mapping[str, Collection[tuple[int, int]]],
                   labels: Mapping[str, str] | None = None) -> str | None:
    if not detail.partners:
        return None
    labels = labels or {}
    rows = []
    for p in detail.partners:
        rows.append((esc(p.model), neuron_ref_html(p.model, p.layer, p.neuron, labels, pages, _page_href),
                     fmt(p.corr), fmt(p.baseline), _matches(p.model, p.top, pages, labels),
                     _matches(p.model, p.bottom, pages, labels)))
    out = table(rows, ["model", "best neuron", "correlation", "rotated baseline",
                       "top matches", "most anti-correlated"], raw_columns=range(6))
    hists = [f"<div>{histogram_svg(p.hist.edges, p.hist.counts, label=p.hist.label, height=120)}</div>"
             for p in detail.partners if p.hist is not None and len(p.hist.counts)]
    if hists:
        out += f'<div class="grid">{"".join(hists)}</div>'
    return out


def _histogram_html(detail: NeuronDetail) -> str | None:
    h = detail.histogram
    if h is None:
        return None
    note = ""
    if h.underflow or h.overflow:
        note = (f'<p class="note">{fmt(h.underflow)} values below and {fmt(h.overflow)} above '
                "the range shown</p>")
    return histogram_svg(h.edges, h.counts, label=h.label) + note


def _examples_html(detail: NeuronDetail) -> str | None:
    return examples_html(detail.examples)


def token_code(token: str) -> str:
    """A token for a table cell: escaped, every space, newline and byte made visible."""
    return f'<code class="t">{token_html(token)}</code>'


def _token_table(items, header) -> str:
    return table(((token_code(t), fmt(v)) for t, v in items), header, raw_columns=(0, 1))


def _vocab_html(detail: NeuronDetail) -> str | None:
    parts = []
    if detail.promoted is not None:
        parts.append("<div><h3>promoted</h3>"
                     f"{_token_table(detail.promoted, ['token', 'cos(W_U, w_out)'])}</div>")
    if detail.suppressed is not None:
        parts.append("<div><h3>suppressed</h3>"
                     f"{_token_table(detail.suppressed, ['token', 'cos(W_U, w_out)'])}</div>")
    if detail.token_means:
        rows = ((token_code(t), fmt(m), fmt(c)) for t, m, c in detail.token_means)
        parts.append(f"<div><h3>highest mean activation ({esc(detail.token_means_scope)})</h3>"
                     f"{table(rows, ['token', 'mean', 'count'], raw_columns=(0, 1, 2))}</div>")
    if not parts:
        return None
    legend = "" if detail.examples else f'<p class="note">{LEGEND}</p>'  # else under the examples
    return f'<div class="grid">{"".join(parts)}</div>{legend}'


def _float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("-inf")


def _scores(v) -> dict | list | None:
    """A JSON object/list cell (string, dict, list or array) as Python, else None."""
    if v is None or (isinstance(v, float) and v != v):
        return None
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return None
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (dict, list)):
        return v
    return None


EXPLANATION_FIELDS = ("rank", "kind", "feature", "group", "vr", "mean_in", "mean_out", "frac_in")


def _explanations_html(row: Mapping, extra_columns: Collection[str],
                       rows: Sequence[Mapping] | None = None) -> str | None:
    fams = families_of(row.get("families")) if "families" in row else None
    scores = _scores(row.get("family_scores"))
    if isinstance(scores, list) and fams and len(scores) == len(fams):
        scores = dict(zip(fams, scores))
    features = _scores(row.get("family_features"))
    features = features if isinstance(features, dict) else {}
    parts = []
    if isinstance(scores, dict) and scores:
        items = sorted(scores.items(), key=lambda kv: -_float(kv[1]))
        parts.append(table(((f, v, features.get(f)) for f, v in items),
                           ["family", "score", "explaining feature"]))
    elif fams:
        parts.append("<p>" + ", ".join(f'<span class="badge">{esc(f)}</span>' for f in fams) + "</p>")
    elif fams is not None:
        parts.append('<p class="missing">no family explains this neuron</p>')
    derived = ("top_explanation", "top_vr") if rows else ()  # summaries of the rows below
    other = [(c, row.get(c)) for c in extra_columns if c in row and _scalar(row.get(c))
             and c not in (*FAMILY_COLUMNS, *derived)]
    if other:
        parts.append(table(other, ["explanation", "value"]))
    if rows:
        keys = [k for k in EXPLANATION_FIELDS if k in rows[0]] or [k for k in rows[0] if k not in ("layer", "neuron")]
        parts.append('<p class="note">Features ranked by variance reduction (VR, the share of '
                     "the activation's variance the split explains).</p>")
        parts.append(table(([r.get(k) for k in keys] for r in rows), keys))
    return "".join(parts) if parts else None


def render_neuron_page(model: str, layer: int, neuron: int, row: Mapping, detail: NeuronDetail,
                       pages: Mapping[str, Collection[tuple[int, int]]],
                       explanation_columns: Collection[str] = (),
                       explanation_rows: Sequence[Mapping] | None = None, *,
                       labels: Mapping[str, str] | None = None, links: str = "") -> str:
    """The HTML of ``neurons/<model>/L{layer}.{neuron}.html``. ``labels``: short model
    labels for partner names (``b:L3.152``); ``links``: HTML placed under the heading
    (``navigation.navigation_html``: previous/next, family neighbours, compare view)."""
    name = neuron_name(layer, neuron)
    badges = []
    if row.get("is_universal") is True or row.get("is_universal") == 1:
        badges.append('<span class="badge universal">universal</span>')
    for f in families_of(row.get("families")):
        badges.append(f'<span class="badge">{esc(f)}</span>')
    head = f"<p>model {esc(model)} · layer {layer} · neuron {neuron} {' '.join(badges)}</p>"
    body = head + links + "".join([
        section("statistics", "Statistics", _stats_html(row, explanation_columns)),
        section("partners", "Best match in each sibling model", _partners_html(detail, pages, labels)),
        section("histogram", "Activation histogram", _histogram_html(detail)),
        section("examples", "Examples", _examples_html(detail)),
        section("tokens", "Tokens", _vocab_html(detail)),
        section("explanations", "Explanations",
                _explanations_html(row, explanation_columns, explanation_rows)),
    ])
    nav = [("../../index.html", "report"), (f"../../{quote(browser_file(model))}", f"browser: {model}"),
           (f"../../{GLOSSARY_FILE}", "glossary")]
    return page(f"{model} {name}", body, nav=nav, css_href=f"../../{STYLESHEET}")
