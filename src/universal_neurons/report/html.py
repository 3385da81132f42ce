"""HTML building blocks for the static report: escaping, embedded JSON, tables, pages.

Every string that reaches a page goes through :func:`esc` (text and attribute values) or
:func:`json_script` (data for the browser's JavaScript). Nothing here reads a run
directory; the callers pass plain values.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

NOT_COMPUTED = "not computed"

# JSON placed inside <script> must not be able to close the element or open a comment.
_JSON_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}


def esc(value: Any) -> str:
    """Escape ``value`` for HTML text or a double/single-quoted attribute (``None`` -> '')."""
    if value is None:
        return ""
    return html.escape(str(value), quote=True)


def json_for_script(obj: Any, *, finite: bool = False) -> str:
    """``obj`` as JSON that is safe inside ``<script>``: ``<``, ``>``, ``&``, U+2028/9 escaped.

    NaN and infinities become ``null`` (JSON has no spelling for them); ``finite=True``
    skips that walk for data already free of them (a ValueError if it is not).
    """
    text = json.dumps(obj if finite else _finite(obj), ensure_ascii=False, allow_nan=False,
                      separators=(",", ":"))
    for ch, rep in _JSON_ESCAPES.items():
        text = text.replace(ch, rep)
    return text


def json_script(obj: Any, element_id: str, *, finite: bool = False) -> str:
    """A ``<script type="application/json">`` element holding ``obj`` (read it with JSON.parse)."""
    return (f'<script type="application/json" id="{esc(element_id)}">'
            f"{json_for_script(obj, finite=finite)}</script>")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):  # numpy scalar
        return _finite(obj.item())
    return obj


def fmt(value: Any, digits: int = 4) -> str:
    """A compact, escaped display string for a cell: numbers to ``digits`` significant digits."""
    if value is None:
        return ""
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value != 0 and (abs(value) >= 1e6 or abs(value) < 1e-3):
            return f"{value:.{max(digits - 1, 1)}e}"
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return esc(value)


def table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None, *, cls: str = "",
          raw_columns: Iterable[int] = ()) -> str:
    """An HTML table; cells are formatted with :func:`fmt` except ``raw_columns`` (already HTML).

    ``header=None`` leaves out the header row.
    """
    raw = set(raw_columns)
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>"
    body = []
    for row in rows:
        cells = "".join(f"<td>{v if i in raw else fmt(v)}</td>" for i, v in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    cls_attr = f' class="{esc(cls)}"' if cls else ""
    return f"<table{cls_attr}>{head}<tbody>{''.join(body)}</tbody></table>"


def frame_table(df, *, max_rows: int = 500, cls: str = "") -> str:
    """A pandas DataFrame as an escaped HTML table (first ``max_rows`` rows, with a note)."""
    shown = df.head(max_rows)
    out = table(shown.itertuples(index=False, name=None), [str(c) for c in df.columns], cls=cls)
    if len(df) > max_rows:
        out += f'<p class="note">first {max_rows} of {len(df):,} rows</p>'
    return out


def section(sid: str, title: str, content: str | None, *, missing: str = NOT_COMPUTED) -> str:
    """A titled section; when ``content`` is ``None`` it says ``missing`` instead."""
    body = content if content is not None else f'<p class="missing">{esc(missing)}</p>'
    return f'<section id="{esc(sid)}"><h2>{esc(title)}</h2>{body}</section>'


def link(href: str, text: str, *, cls: str = "") -> str:
    cls_attr = f' class="{esc(cls)}"' if cls else ""
    return f'<a href="{esc(href)}"{cls_attr}>{esc(text)}</a>'


@cache
def asset(name: str) -> str:
    """The text of ``report/assets/<name>`` (CSS and JavaScript inlined into pages)."""
    return resources.files("universal_neurons.report").joinpath("assets", name).read_text("utf-8")


STYLESHEET = "report.css"
"""The shared stylesheet at the report's root (``page(css_href=...)`` links it)."""


def page(title: str, body: str, *, nav: Sequence[tuple[str, str]] = (), scripts: Sequence[str] = (),
         data: str = "", css_href: str | None = None) -> str:
    """A complete HTML document: CSS (inline, or linked from ``css_href``, a relative URL of
    :data:`STYLESHEET`), ``data`` blocks, inline ``scripts``.

    ``nav`` is ``(href, label)`` pairs. ``scripts`` are asset names (e.g. ``"browser.js"``).
    """
    nav_html = ""
    if nav:
        nav_html = "<nav>" + " · ".join(link(h, t) for h, t in nav) + "</nav>"
    js = "".join(f"<script>{_script_safe(asset(s))}</script>" for s in scripts)
    style = (f'<link rel="stylesheet" href="{esc(css_href)}">' if css_href
             else f"<style>{asset(STYLESHEET)}</style>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title>{style}</head>"
        f"<body>{nav_html}<main><h1>{esc(title)}</h1>{body}</main>{data}{js}</body></html>\n"
    )


def _script_safe(js: str) -> str:
    if "</script" in js.lower() or "<!--" in js:
        raise ValueError("inline script contains '</script' or '<!--'")
    return js
