"""The neuron browser: one page per model with a searchable, sortable table of every neuron.

The table's data is embedded as JSON (``<script type="application/json" id="neuron-data">``,
escaped by :func:`html.json_script`) and rendered by ``assets/browser.js`` with
``textContent`` only. Floats are rounded to 4 significant digits to keep pages small.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import quote

from universal_neurons.constants import neuron_name, safe_name
from universal_neurons.report.html import esc, json_script, page

# Columns in display order; any other numeric column of the table follows them.
CORE_COLUMNS = [
    "excess_corr", "mean_corr", "max_corr", "min_corr", "mean_baseline", "max_baseline",
    "min_baseline", "w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty",
    "mean", "var", "skew", "kurt", "sparsity", "vocab_mean", "vocab_var", "vocab_skew",
    "vocab_kurt",
]
VISIBLE_BY_DEFAULT = {"name", "layer", "is_universal", "families", "excess_corr", "mean_corr",
                      "max_corr", "mean_baseline", "sparsity", "kurt", "vocab_kurt", "vocab_skew"}
TITLES = {
    "excess_corr": "mean_corr - mean_baseline",
    "mean_corr": "mean over sibling models of the best correlation",
    "mean_baseline": "the same for a randomly rotated basis",
    "in_out_sim": "cos(w_in, w_out)",
    "l2_penalty": "|w_in|^2 + |w_out|^2",
    "sparsity": "activation frequency",
}


def browser_file(model: str) -> str:
    """File name of a model's browser page inside ``report/``."""
    return f"browser-{safe_name(model)}.html"


def neuron_page_dir(model: str) -> str:
    """Relative URL (from ``report/``) of the folder of a model's neuron pages, ending in ``/``."""
    return f"neurons/{quote(safe_name(model))}/"


def partner_models(df, model: str, models: Sequence[str]) -> list[str]:
    """Sibling models that have ``{partner}_best`` / ``{partner}_corr`` columns in ``df``."""
    cols = set(df.columns)
    named = [m for m in models if m != model and (f"{m}_corr" in cols or f"{m}_best" in cols)]
    if named:
        return named
    return [c[: -len("_best")] for c in df.columns if c.endswith("_best")]


def _column_type(series) -> str:
    from pandas.api import types

    if types.is_bool_dtype(series):
        return "bool"
    if types.is_numeric_dtype(series):
        return "num"
    return "str"


def browser_columns(df, model: str, models: Sequence[str]) -> list[dict]:
    """Column descriptors ``{key, label, type, visible, title}`` for the browser's table."""
    partners = partner_models(df, model, models)
    skip = {"layer", "neuron", "families", "family_scores", "family_features", "is_universal"}
    for p in partners:
        skip.add(f"{p}_baseline")  # on the neuron pages; the table keeps _best and _corr
    out: list[dict[str, Any]] = [{"key": "name", "label": "neuron", "type": "str"},
           {"key": "layer", "label": "layer", "type": "num"},
           {"key": "neuron", "label": "index", "type": "num"}]
    if "is_universal" in df.columns:
        out.append({"key": "is_universal", "label": "universal", "type": "bool"})
    if "families" in df.columns:
        out.append({"key": "families", "label": "families", "type": "list"})
    ordered = [c for c in CORE_COLUMNS if c in df.columns]
    ordered += [c for c in df.columns if c not in ordered and c not in skip]
    for c in ordered:
        kind = _column_type(df[c])
        sample = df[c].dropna().head(100).tolist() if kind == "str" else []
        if any(isinstance(v, (list, dict)) or hasattr(v, "shape") for v in sample):
            continue  # nested values belong on the neuron pages, not in the table
        out.append({"key": c, "label": c, "type": kind})
    for col in out:
        col["visible"] = col["key"] in VISIBLE_BY_DEFAULT or col["key"].endswith("_corr")
        col["title"] = TITLES.get(col["key"], col["key"])
    return out


def families_of(value) -> list[str]:
    """A row's ``families`` cell as a list of strings (list/array, ``a, b`` string, or empty)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [f.strip() for f in value.replace(";", ",").split(",") if f.strip()]
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if v is not None and str(v)]
    if isinstance(value, float):  # NaN from a left join
        return []
    return [str(value)]


def round_sig_array(values, digits: int = 4) -> list[float | None]:
    """Floats rounded to ``digits`` significant digits (vectorised); NaN/inf -> None."""
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    out = x.copy()
    ok = np.isfinite(x) & (x != 0)
    e = (digits - 1 - np.floor(np.log10(np.abs(x[ok])))).astype(np.int64)
    v = x[ok]
    pos = e >= 0  # scale by exact powers of ten both ways, so repr() stays short
    v[pos] = np.round(v[pos] * 10.0 ** e[pos]) / 10.0 ** e[pos]
    v[~pos] = np.round(v[~pos] / 10.0 ** -e[~pos]) * 10.0 ** -e[~pos]
    out[ok] = v
    return [None if not math.isfinite(f) else f for f in out.tolist()]


def _column_values(df, c: dict) -> list:
    key, kind = c["key"], c["type"]
    if key == "name":
        return [neuron_name(a, b) for a, b in zip(df["layer"].tolist(), df["neuron"].tolist())]
    col = df[key]
    if key == "families":
        return [families_of(v) for v in col.tolist()]
    if kind == "num":
        if key in ("layer", "neuron"):
            return [int(v) for v in col.tolist()]
        return round_sig_array(col.to_numpy(dtype="float64", na_value=float("nan")))
    if kind == "bool":
        return [None if v is None or v != v else bool(v) for v in col.tolist()]
    return [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in col.tolist()]


def browser_data(df, model: str, models: Sequence[str], pages: Iterable[tuple[int, int]]) -> dict:
    """The JSON object ``browser.js`` reads: columns, rows (lists), which rows have a page."""
    cols = browser_columns(df, model, models)
    with_page = set(pages)
    columns = [_column_values(df, c) for c in cols]
    rows = [list(r) for r in zip(*columns)]
    has_page = [1 if (int(a), int(b)) in with_page else 0
                for a, b in zip(df["layer"].tolist(), df["neuron"].tolist())]
    sort = "excess_corr" if "excess_corr" in df.columns else None
    return {"model": model, "columns": cols, "rows": rows, "pages": has_page,
            "pageDir": neuron_page_dir(model), "sort": sort}


def browser_page(model: str, data: dict, *, n_universal: int | None = None) -> str:
    """The complete browser page of one model."""
    summary = f"{len(data['rows']):,} neurons"
    if n_universal is not None:
        summary += f", {n_universal:,} universal"
    body = f"""
<p>{esc(summary)}. Click a column header to sort; neurons with a page are links. Search
terms like <code>L3.</code> match neuron names by prefix, others any text column.</p>
<div class="controls">
  <input type="search" id="search" placeholder="search: L3. or L3.17, family, feature…" aria-label="search">
  <label><input type="checkbox" id="universal-only"> universal only</label>
  <label>family <select id="family"><option value="">all</option></select></label>
  <label>layer <select id="layer"><option value="">all</option></select></label>
  <label>rows <select id="page-size"><option>50</option><option selected>100</option>
    <option>500</option><option value="all">all</option></select></label>
  <span id="count"></span>
</div>
<details class="columns"><summary>columns</summary><div id="column-chooser"></div></details>
<div class="scroll"><table id="neuron-table"></table></div>
<div class="pager"><button id="prev">previous</button><span id="page-info"></span>
<button id="next">next</button></div>
"""
    return page(f"Neuron browser: {model}", body, nav=[("index.html", "report")],
                scripts=["browser.js"], data=json_script(data, "neuron-data", finite=True))
