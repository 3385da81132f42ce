"""The stage tables shown on the front page: which, under what heading, and the neurons
they name.

Each table is cut to its first :data:`FRONT_ROWS` rows (the stages write them best first).
A neuron is *named* by a table when a row has integer ``layer`` and ``neuron`` columns, or
a text cell spells ``L3.17`` (also inside a pair such as ``L1.296->L2.H0``). Its model is
the row's ``model`` column, else the model whose file-name form the table's path contains,
else the run's first (reference) model. The same rule finds the neurons that must get a
page (``build.select_pages``) and draws the links, so every neuron named on the front page
links to its page.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from universal_neurons.constants import (
    ATTENTION_DIR,
    ENTROPY_DIR,
    FAMILIES_DIR,
    FAMILY_COUNTS,
    PREDICTION_DIR,
    PREDICTION_TOKENS,
    PROPERTIES_COMPARISON,
    PROPERTIES_DIR,
    neuron_name,
    safe_name,
)
from universal_neurons.report.html import NOT_COMPUTED, esc, fmt, link
from universal_neurons.report.neuron_page import neuron_href, token_code
from universal_neurons.report.partners import model_labels, names_in_text
from universal_neurons.report.rundata import NamedTable, RunData

FRONT_ROWS = 15
"""Rows of each stage table shown on the front page."""
SKIP_TABLES = ("_tokens", "_points", "_vr")
"""Per-token and per-feature tables (large, for plots) are not shown..."""
KEEP_TABLES = ("_prediction_tokens",)
"""...except these."""
NAME = re.compile(r"\bL(\d+)\.(\d+)\b")

TITLES = {  # file stem (model part removed) -> heading
    "comparison": "Universal vs other neurons: each statistic compared",
    "counts": "Neurons per family",
    "prediction_tokens": "Tokens promoted or suppressed by prediction, suppression and "
                         "partition neurons",
    "candidates": "Entropy neuron candidates (large norm in the null space of W_U)",
    "candidate_pairs": "Pairs of entropy candidates",
    "heuristic_top": "Neuron -> head pairs with the largest deactivation heuristic",
    "heuristic_hist": "Distribution of the deactivation heuristic",
    "heuristic_summary": "Deactivation heuristic: summary",
    "path_ablation": "Path ablation of neuron -> head pairs",
    "bos_value_norms": "Value norms of BOS vs other tokens, per head",
    "sweep": "Entropy sweep: final-norm scale, entropy, loss and rank at fixed activations",
    "summary": "Summary",
}


@dataclass
class FrontTable:
    section: str
    table: NamedTable
    model: str | None  # the model the file name names, if any
    title: str
    source: str  # run-relative path of the file


def _glob(template: str) -> str:
    """``{model}_counts.csv`` -> ``*_counts.*`` (the file and its CSV/parquet copies)."""
    return re.sub(r"\{[a-z_]+\}", "*", Path(template).stem) + ".*"


def _file_model(path: Path, models: Sequence[str]) -> str | None:
    """The model whose file-name form (``safe_name``) starts a part of ``path``."""
    best = None
    for m in models:
        s = safe_name(m)
        if any(part == s or part.startswith(s + "_") or part.startswith(s + ".")
               for part in path.parts):
            if best is None or len(s) > len(safe_name(best)):
                best = m
    return best


def title_of(name: str, model: str | None) -> str:
    """A human heading for a table file: ``tiny-a_counts.csv`` -> "Neurons per family: tiny-a"."""
    stem = Path(name).name.split(".", 1)[0]
    if model is not None and stem.startswith(safe_name(model)):
        stem = stem[len(safe_name(model)):].lstrip("_")
    title = TITLES.get(stem) or (stem.replace("_", " ").strip().capitalize() or name)
    return f"{title}: {model}" if model else title


def front_tables(run: RunData) -> dict[str, list[FrontTable]]:
    """The tables of each front-page section, first :data:`FRONT_ROWS` rows of each."""
    specs = {
        "claims": [(PROPERTIES_DIR, _glob(PROPERTIES_COMPARISON))],
        "families": [(FAMILIES_DIR, _glob(FAMILY_COUNTS))],
        "prediction": [(PREDICTION_DIR, "*"), (FAMILIES_DIR, _glob(PREDICTION_TOKENS))],
        "entropy": [(ENTROPY_DIR, "*")],
        "attention": [(ATTENTION_DIR, "*")],
    }
    out: dict[str, list[FrontTable]] = {}
    for sec, where in specs.items():
        found = []
        for folder, pattern in where:
            for t in run.tables_in(folder, pattern, FRONT_ROWS):
                if any(k in t.name for k in SKIP_TABLES) and not any(k in t.name for k in KEEP_TABLES):
                    continue
                model = _file_model(Path(t.name), run.models)
                found.append(FrontTable(sec, t, model, title_of(t.name, model),
                                        f"{folder}/{t.name}"))
        out[sec] = found
    return out


def _row_model(row: Mapping, t: FrontTable, models: Sequence[str]) -> str | None:
    m = row.get("model")
    if isinstance(m, str) and m in models:
        return m
    return t.model or (models[0] if models else None)


def _int(v) -> int | None:
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return int(f) if f == f and f == int(f) and f >= 0 else None


def table_neurons(t: FrontTable, models: Sequence[str]) -> list[tuple[str, int, int]]:
    """``(model, layer, neuron)`` of every neuron the shown rows of ``t`` name."""
    df = t.table.frame
    out: dict[tuple[str, int, int], None] = {}
    has_pair = {"layer", "neuron"} <= set(df.columns)
    for row in df.to_dict("records"):
        model = _row_model(row, t, models)
        if model is None:
            continue
        if has_pair:
            layer, neuron = _int(row["layer"]), _int(row["neuron"])
            if layer is not None and neuron is not None:
                out[(model, layer, neuron)] = None
        for v in row.values():
            if isinstance(v, str):
                for _, who, a, b in names_in_text(v, model, model_labels(models)):
                    if who is not None:
                        out[(who, a, b)] = None
    return list(out)


def featured_neurons(tables: Mapping[str, Sequence[FrontTable]],
                     models: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
    """Per model, the neurons the front page's tables name, in the order they appear."""
    out: dict[str, dict[tuple[int, int], None]] = {m: {} for m in models}
    for ts in tables.values():
        for t in ts:
            for m, layer, neuron in table_neurons(t, models):
                out.setdefault(m, {})[(layer, neuron)] = None
    return {m: list(v) for m, v in out.items()}


def _name_links(text: str, model: str | None, pages: Mapping[str, Collection],
                models: Sequence[str] = ()) -> str:
    """Escaped ``text`` with each neuron name that has a page turned into a link (a name
    after a model label, ``b:L3.152``, links to that model's page)."""
    out, at, raw = [], 0, esc(text)  # labels and names hold no character that esc changes
    for m, who, layer, neuron in names_in_text(raw, model, model_labels(models)):
        if who is not None and (layer, neuron) in pages.get(who, ()):
            out.append(raw[at:m.start()])
            out.append(link(neuron_href(who, layer, neuron, from_neuron_page=False), m.group(0)))
            at = m.end()
    return "".join(out) + raw[at:]


def table_html(t: FrontTable, models: Sequence[str], pages: Mapping[str, Collection],
               token_text: Callable[[int], str] | None = None,
               not_computed: Collection[str] = ()) -> str:
    """``t`` as an HTML table: neuron names linked to their pages, tokens shown with the
    token display (re-decoded from ``token_id`` with ``token_text`` when given), family
    rows in ``not_computed`` marked so."""
    df = t.table.frame
    cols = [str(c) for c in df.columns]
    has_pair = {"layer", "neuron"} <= set(cols)
    body = []
    for row in df.to_dict("records"):
        model = _row_model(row, t, models)
        cells = []
        for c in cols:
            v = row[c]
            if c == "neuron" and has_pair and model is not None:
                layer, neuron = _int(row["layer"]), _int(v)
                if layer is not None and neuron is not None:
                    name = neuron_name(layer, neuron)
                    html = (link(neuron_href(model, layer, neuron, from_neuron_page=False), str(neuron))
                            if (layer, neuron) in pages.get(model, ()) else esc(neuron))
                    cells.append(f'<td title="{esc(name)}">{html}</td>')
                    continue
            if c == "token" and (isinstance(v, str) or _int(row.get("token_id")) is not None):
                tid = _int(row.get("token_id"))
                text = token_text(tid) if token_text is not None and tid is not None else str(v)
                cells.append(f"<td>{token_code(text)}</td>")
                continue
            if (c in ("n_neurons", "frac", "n_universal") and row.get("family") in not_computed):
                cells.append(f'<td class="missing">{NOT_COMPUTED}</td>')
                continue
            cells.append(f"<td>{_name_links(v, model, pages, models)}</td>" if isinstance(v, str)
                         else f"<td>{fmt(v)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    n_rows = t.table.n_rows
    if n_rows is not None and n_rows > len(df):
        note = f"first {len(df)} of {n_rows:,} rows"
    elif n_rows is None and len(df) >= FRONT_ROWS:
        note = f"first {len(df)} rows"
    else:
        note = f"{len(df)} rows" if len(df) != 1 else "1 row"
    return (f'<div class="scroll"><h3>{esc(t.title)}</h3><table><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>"
            f'<p class="note">{note}; file <code>{esc(t.source)}</code></p></div>')


VOCAB_FAMILIES = ("prediction", "suppression", "partition")
"""Families from the neuron table's ``vocab_*`` moments (not from the explain stage)."""


def families_not_computed(run: RunData, model: str | None,
                          families: Collection[str] = ()) -> set[str]:
    """Families among ``families`` (the counts table's) that were never computed for
    ``model``, whose counts say "not computed" rather than 0: without
    ``explanations/<model>_vr.parquet`` every family but the vocabulary ones; with it, the
    families none of whose feature columns it has (``analysis.families``' selectors;
    ``alphabet``: ``current/alpha:*``; ``topic``: ``current/topic:*``; ``position``:
    ``position_mi`` and ``fire_rate``)."""
    if model is None:
        return set()
    from universal_neurons.constants import EXPLANATIONS_DIR

    p = run.path / EXPLANATIONS_DIR / f"{safe_name(model)}_vr.parquet"
    if not p.is_file():
        return {f for f in families if f not in VOCAB_FAMILIES}
    try:
        import pandas as pd
        import pyarrow.parquet as pq

        from universal_neurons.analysis.families import _VR_FAMILIES, _columns

        names = pq.read_schema(p).names
        empty = pd.DataFrame(columns=names)
        out = {fam for fam, (kind, groups) in _VR_FAMILIES.items()
               if not _columns(empty, kind, groups)}
        if not _columns(empty, "current", ("alpha",)):
            out.add("alphabet")
        if not _columns(empty, "current", ("topic",)):
            out.add("topic")
        if not {"position_mi", "fire_rate"} <= set(names):
            out.add("position")
        return out
    except Exception:  # noqa: BLE001 - unknown layout: show the counts as written
        return set()
