"""Links between neuron pages: previous/next neuron (by layer, then index, among the pages
of the same model), the other neurons of the same family, and the compare view."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from universal_neurons.constants import neuron_name
from universal_neurons.report.html import esc, link

Key = tuple[int, int]
FAMILY_NEIGHBOURS = 8
"""Other members of a family linked from a neuron page (the highest family scores)."""


@dataclass
class Navigation:
    """Per model: its pages in (layer, index) order and each family's members with a page."""

    order: dict[str, list[Key]] = field(default_factory=dict)
    position: dict[str, dict[Key, int]] = field(default_factory=dict)
    families: dict[str, dict[str, list[Key]]] = field(default_factory=dict)
    family_sizes: dict[str, dict[str, int]] = field(default_factory=dict)

    def prev_next(self, model: str, key: Key) -> tuple[Key | None, Key | None]:
        order, i = self.order.get(model, []), self.position.get(model, {}).get(key)
        if i is None:
            return None, None
        return (order[i - 1] if i > 0 else None, order[i + 1] if i + 1 < len(order) else None)


def _score(scores, family: str) -> float:
    if isinstance(scores, str):
        try:
            scores = json.loads(scores)
        except ValueError:
            return float("-inf")
    v = scores.get(family) if isinstance(scores, dict) else None
    return float(v) if isinstance(v, (int, float)) and v == v else float("-inf")


def build_navigation(frames: Mapping[str, Any], pages: Mapping[str, Collection[Key]]) -> Navigation:
    """The :class:`Navigation` of a report: ``frames`` are the neuron tables (their
    ``families`` and ``family_scores`` columns, as the families stage writes them)."""
    from universal_neurons.report.browser import families_of

    nav = Navigation()
    for m, keys in pages.items():
        order = sorted(set(keys))
        nav.order[m] = order
        nav.position[m] = {k: i for i, k in enumerate(order)}
        df = frames.get(m)
        if df is None or "families" not in getattr(df, "columns", ()):
            continue
        have = set(order)
        scores = df["family_scores"].tolist() if "family_scores" in df.columns else [None] * len(df)
        members: dict[str, list[tuple[float, Key]]] = {}
        sizes: dict[str, int] = {}
        for la, n, fams, sc in zip(df["layer"].tolist(), df["neuron"].tolist(),
                                   df["families"].tolist(), scores):
            for f in families_of(fams):
                sizes[f] = sizes.get(f, 0) + 1
                if (int(la), int(n)) in have:
                    members.setdefault(f, []).append((_score(sc, f), (int(la), int(n))))
        nav.families[m] = {f: [k for _, k in sorted(v, key=lambda t: (-t[0], t[1]))]
                           for f, v in members.items()}
        nav.family_sizes[m] = sizes
    return nav


def navigation_html(nav: Navigation, model: str, key: Key, families: Sequence[str], *,
                    browser_href: str, compare_href: str | None) -> str:
    """The links block of a neuron page (relative URLs from ``neurons/<model>/``)."""
    prev, nxt = nav.prev_next(model, key)
    parts = []
    if prev is not None:
        parts.append(link(f"{neuron_name(*prev)}.html", f"← {neuron_name(*prev)}", cls="prev"))
    if nxt is not None:
        parts.append(link(f"{neuron_name(*nxt)}.html", f"{neuron_name(*nxt)} →", cls="next"))
    if compare_href is not None:
        parts.append(link(compare_href, "compare with its best partners", cls="to-compare"))
    out = f'<p class="pager-links">{" · ".join(parts)}</p>' if parts else ""
    rows = []
    for f in families:
        others = [k for k in nav.families.get(model, {}).get(f, []) if k != key][:FAMILY_NEIGHBOURS]
        size = nav.family_sizes.get(model, {}).get(f, 0)
        links = ", ".join(link(f"{neuron_name(*k)}.html", neuron_name(*k)) for k in others)
        every = link(f"{browser_href}#family={quote(f, safe='')}", f"all {size:,} in the browser")
        links = links or '<span class="missing">no other page</span>'
        rows.append(f'<li>family <span class="badge">{esc(f)}</span>: {links} ({every})</li>')
    if rows:
        out += f'<ul class="family-neighbours">{"".join(rows)}</ul>'
    return out
