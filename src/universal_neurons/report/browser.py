"""The neuron browser: one page per model with a searchable, sortable table of every neuron.

The table's data is embedded column by column as JSON (``<script type="application/json"
id="neuron-data">``, escaped by :func:`html.json_script`; see :func:`browser_data`) and
rendered by ``assets/browser.js`` (decoded by ``assets/packed-columns.js``) with
``textContent`` only. The script keeps only the rows in view (plus a few) in the DOM and
sorts and filters permutations of typed arrays, so a table of 100,000 neurons stays
interactive. Floats are rounded to 4 significant digits (as
displayed) to keep pages small; text columns and family lists are dictionary-encoded.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import numpy as np

from universal_neurons.constants import neuron_name, safe_name
from universal_neurons.report.glossary import GLOSSARY_FILE, title
from universal_neurons.report.html import esc, json_script, page
from universal_neurons.report.packing import pack_floats, pack_ints, unpack_floats, unpack_ints
from universal_neurons.report.partners import model_labels

_NEURON_NAME = re.compile(r"L(\d+)\.(\d+)")
# Columns in display order; any other numeric column of the table follows them.
CORE_COLUMNS = [
    "excess_corr", "mean_corr", "max_corr", "min_corr", "mean_baseline", "max_baseline",
    "min_baseline", "w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty",
    "mean", "var", "skew", "kurt", "sparsity", "vocab_mean", "vocab_var", "vocab_skew",
    "vocab_kurt",
]
VISIBLE_BY_DEFAULT = {"name", "layer", "is_universal", "families", "excess_corr", "mean_corr",
                      "max_corr", "mean_baseline", "sparsity", "kurt", "vocab_kurt", "vocab_skew"}


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


def browser_columns(df, model: str, models: Sequence[str],
                    labels: Mapping[str, str] | None = None) -> list[dict]:
    """Column descriptors ``{key, label, type, visible, title}`` for the browser's table;
    a partner's columns (``{partner}_best``, ``_corr``) also carry ``partner`` (its model)
    and ``prefix`` (``b:``, from ``labels``), and are labelled ``b best``, ``b corr``."""
    partners = partner_models(df, model, models)
    labels = labels if labels is not None else model_labels([*models, *partners])
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
        col["visible"] = col["key"] in VISIBLE_BY_DEFAULT or col["key"].endswith("_best")
        col["title"] = title(col["key"])
        for p in partners:
            for suffix in ("best", "corr"):
                if col["key"] == f"{p}_{suffix}":
                    short = labels.get(p, p)
                    col.update(partner=p, prefix=f"{short}:", label=f"{short} {suffix}",
                               title=f"{p}: {col['title']}")
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


def _dictionary(values: list, *, key=lambda v: v) -> dict:
    """``{"dict": distinct values in first-seen order, "codes": packed indices}``."""
    table: dict[Any, int] = {}
    distinct: list = []
    codes: list[float] = []
    for v in values:
        if v is None:
            codes.append(math.nan)
            continue
        k = key(v)
        i = table.get(k)
        if i is None:
            i = table[k] = len(distinct)
            distinct.append(v)
        codes.append(i)
    return {"dict": distinct, "codes": pack_ints(codes)}


def _neuron_names(col) -> dict | None:
    """A column of neuron names (``L3.17``) as ``{"span", "names": packed layer*span+neuron}``."""
    import pandas as pd

    codes, distinct = pd.factorize(col)  # code -1: missing
    found = [_NEURON_NAME.fullmatch(v) if isinstance(v, str) else None for v in distinct.tolist()]
    if not found or any(m is None for m in found):
        return None
    layer = np.array([int(m[1]) for m in found if m], dtype=np.float64)
    neuron = np.array([int(m[2]) for m in found if m], dtype=np.float64)
    span = int(neuron.max()) + 1
    values = np.where(codes >= 0, (layer * span + neuron)[codes], np.nan)
    return {"span": span, "names": pack_ints(values)}


def _column_payload(df, c: dict) -> Any:
    """One column, encoded for ``browser.js`` (see :func:`browser_data`)."""
    key, kind = c["key"], c["type"]
    if key == "name":
        return None  # browser.js spells it from layer and neuron
    col = df[key]
    if key == "families":
        return _dictionary([families_of(v) for v in col.tolist()], key=tuple)
    if kind == "num":
        x = col.to_numpy(dtype="float64", na_value=float("nan"))
        finite = x[np.isfinite(x)]
        if key in ("layer", "neuron") or (np.all(finite == np.rint(finite)) and np.all(np.abs(finite) < 2**31)):
            return pack_ints(np.where(np.isfinite(x), x, np.nan))
        return pack_floats(x)
    if kind == "bool":
        return pack_ints([math.nan if v is None or v != v else int(bool(v)) for v in col.tolist()])
    return _neuron_names(col) or _dictionary(
        [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in col.tolist()])


def browser_data(df, model: str, models: Sequence[str], pages: Iterable[tuple[int, int]], *,
                 labels: Mapping[str, str] | None = None,
                 page_sets: Mapping[str, Collection[tuple[int, int]]] | None = None,
                 compared: Collection[tuple[int, int]] = ()) -> dict:
    """The column-oriented JSON object ``browser.js`` reads.

    ``{model, n, columns: [{key, label, type, visible, title}], values, pages, pageDir, sort}``:
    ``values[i]`` holds column ``i`` for all ``n`` rows, packed by :mod:`.packing`: numbers
    (``num``: integers, or floats to 4 significant digits), ``bool`` as integers 0/1, text
    and ``families`` lists as ``{"dict": [...], "codes": packed}``, columns of neuron names
    (``{partner}_best``) as ``{"span", "names": packed layer*span+neuron}``, and ``null`` for
    ``name`` (spelled from layer and neuron). ``pages`` lists the row indices of neurons that
    have a page, ``compare`` those with a compare page (under ``compareDir``). A partner's
    ``_best`` column links the names that have a page (``page_sets``): its packed values
    carry ``pages``, the sorted codes ``layer*span+neuron`` with a page, and ``pageDir``.
    :func:`browser_rows` decodes it into rows.
    """
    cols = browser_columns(df, model, models, labels)
    with_page, with_compare = set(pages), set(compared)
    values = [_column_payload(df, c) for c in cols]
    for c, v in zip(cols, values):
        if c.get("partner") and isinstance(v, dict) and "span" in v:
            have = (page_sets or {}).get(c["partner"], ())
            v["pages"] = sorted(la * v["span"] + n for la, n in have if n < v["span"])
            v["pageDir"] = neuron_page_dir(c["partner"])
    keys = list(zip(df["layer"].astype(int).tolist(), df["neuron"].astype(int).tolist()))
    has_page = [i for i, k in enumerate(keys) if k in with_page]
    has_compare = [i for i, k in enumerate(keys) if k in with_compare]
    sort = "excess_corr" if "excess_corr" in df.columns else None
    return {"model": model, "n": len(df), "columns": cols, "values": values, "pages": has_page,
            "pageDir": neuron_page_dir(model), "compare": has_compare,
            "compareDir": f"compare/{quote(safe_name(model))}/", "sort": sort}


def _unpack(c: dict, v: Any) -> list:
    if "f" in v:
        return unpack_floats(v)
    if "names" in v:  # shown as b:L3.152 in a partner's column
        pre = c.get("prefix", "")
        return [None if x is None else pre + neuron_name(x // v["span"], x % v["span"])
                for x in unpack_ints(v["names"])]
    if "dict" in v:
        return [None if i is None else v["dict"][i] for i in unpack_ints(v["codes"])]
    ints = unpack_ints(v)
    return [None if x is None else bool(x) for x in ints] if c["type"] == "bool" else ints


def browser_rows(data: dict) -> list[list]:
    """The rows of a :func:`browser_data` object, one list of cell values per neuron."""
    cols = data["columns"]
    out: list[list] = [[] if v is None else _unpack(c, v) for c, v in zip(cols, data["values"])]
    keys = [c["key"] for c in cols]
    if "name" in keys:
        layer, neuron = out[keys.index("layer")], out[keys.index("neuron")]
        out[keys.index("name")] = [neuron_name(a, b) for a, b in zip(layer, neuron)]
    return [list(r) for r in zip(*out)] if out else [[] for _ in range(data["n"])]


def browser_page(model: str, data: dict, *, n_universal: int | None = None) -> str:
    """The complete browser page of one model."""
    summary = f"{data['n']:,} neurons"
    if n_universal is not None:
        summary += f", {n_universal:,} universal"
    body = f"""
<p>{esc(summary)}. Click a column header (or focus it with Tab and press Enter or Space)
to sort; hover over it for its definition (all in the <a href="{GLOSSARY_FILE}">glossary</a>).
Neurons and best partners with a page are links; ⇄ opens the neuron beside its best
partners. Search: <code>L3.17</code> finds that neuron, <code>L3.</code> its layer,
<code>b:L3.152</code> the neurons whose best partner in model <code>b</code> is L3.152;
other words match any text column.</p>
<div class="controls">
  <input type="search" id="search" placeholder="search: L3.17, L3., b:L3.152, family…" aria-label="search">
  <label><input type="checkbox" id="universal-only"> universal only</label>
  <label>family <select id="family"><option value="">all</option></select></label>
  <label>layer <select id="layer"><option value="">all</option></select></label>
  <label>rows <select id="page-size"><option>50</option><option>100</option>
    <option>500</option><option value="all" selected>all</option></select></label>
  <span id="count" role="status"></span>
</div>
<details class="columns"><summary>columns</summary><div id="column-chooser"></div></details>
<div class="viewport" id="viewport"><div id="sizer"><table id="neuron-table"></table></div></div>
<div class="pager" id="pager"><button id="prev">previous</button><span id="page-info"></span>
<button id="next">next</button></div>
"""
    return page(f"Neuron browser: {model}", body,
                nav=[("index.html", "report"), (GLOSSARY_FILE, "glossary")],
                scripts=["packed-columns.js", "browser.js"], data=json_script(data, "neuron-data", finite=True))
