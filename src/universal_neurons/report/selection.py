"""Which neurons get a page, over all models of the report, under one page budget.

Order (:func:`select_report_pages`):

1. neurons named with ``--neuron`` (``L3.17`` for every model, ``MODEL:L3.17`` for one);
2. universal neurons of every model, by decreasing rank column;
3. the best partners of those universal neurons in every sibling model;
4. every other neuron the report names: the front page's tables and "most universal"
   lists, and each family's representatives (:func:`family_representatives`);
5. the ``top_n`` neurons of each model by its rank column;
6. the rest by decreasing rank (over all models that have one), each neuron followed by
   its best partners, until the report has ``max_pages`` neuron pages.

Groups 1-5 always get their pages, even past ``max_pages``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from universal_neurons.constants import parse_neuron_name

RANK_COLUMNS = ("excess_corr", "mean_corr", "max_corr")
FAMILY_REPRESENTATIVES = 3
"""Neurons per family and model that always get a page (the highest family scores)."""

Key = tuple[int, int]


def rank_column(df) -> str | None:
    """The column neurons are ranked by: ``excess_corr``, else ``mean_corr``/``max_corr``."""
    return next((c for c in RANK_COLUMNS if df is not None and c in df.columns), None)


def _ranked(df) -> list[tuple[Key, float]]:
    rank = rank_column(df)
    if rank is None:
        return []
    s = df.sort_values(rank, ascending=False, na_position="last", kind="stable")
    vals = s[rank].astype("float64").fillna(float("-inf")).tolist()
    return list(zip(zip(s["layer"].astype(int).tolist(), s["neuron"].astype(int).tolist()), vals))


def _universal(df) -> list[Key]:
    if df is None or "is_universal" not in df.columns:
        return []
    rank = rank_column(df)
    s = df.sort_values(rank, ascending=False, na_position="last", kind="stable") if rank else df
    u = s[s["is_universal"].fillna(False).astype(bool)]
    return list(zip(u["layer"].astype(int).tolist(), u["neuron"].astype(int).tolist()))


def _scores(v: Any) -> dict:
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except ValueError:
            return {}
    return v if isinstance(v, dict) else {}


def family_representatives(df, k: int = FAMILY_REPRESENTATIVES) -> list[Key]:
    """The ``k`` neurons of each family (the table's ``families`` column) with the highest
    family score (``family_scores``), ties and missing scores by the rank column."""
    from universal_neurons.report.browser import families_of

    if df is None or "families" not in df.columns:
        return []
    rank = rank_column(df)
    members: dict[str, list[tuple[float, float, Key]]] = {}
    has_scores = "family_scores" in df.columns
    for i, row in enumerate(df[["layer", "neuron", "families"]].itertuples(index=False)):
        fams = families_of(row.families)
        if not fams:
            continue
        scores = _scores(df["family_scores"].iat[i]) if has_scores else {}
        r = float(df[rank].iat[i]) if rank else 0.0
        r = r if r == r else float("-inf")
        for f in fams:
            s = scores.get(f)
            s = float(s) if isinstance(s, (int, float)) and s == s else float("-inf")
            members.setdefault(f, []).append((s, r, (int(row.layer), int(row.neuron))))
    out: dict[Key, None] = {}
    for f in sorted(members):
        best = sorted(members[f], key=lambda t: (-t[0], -t[1], t[2]))[:k]
        out.update(dict.fromkeys(key for _, _, key in best))
    return list(out)


def select_report_pages(frames: Mapping[str, Any], models: Sequence[str], *, top_n: int,
                        max_pages: int, neurons: Sequence[str] = (),
                        featured: Mapping[str, Sequence[Key]] | None = None,
                        partners: Mapping[str, Mapping[Key, Sequence[tuple[str, int, int]]]] | None = None,
                        ) -> dict[str, list[Key]]:
    """Per model, the neurons that get a page, in the order of the module docstring.

    ``frames``: model -> neuron table (``layer``, ``neuron``, optional ``is_universal`` and a
    rank column); ``featured``: model -> neurons the report names; ``partners``: model ->
    neuron -> its best partners ``(model, layer, neuron)`` (``partners.best_partners``).
    """
    featured, partners = featured or {}, partners or {}
    existing = {m: set(zip(df["layer"].astype(int), df["neuron"].astype(int)))
                for m, df in frames.items() if df is not None and len(df)}
    chosen: dict[tuple[str, int, int], None] = {}

    def add(m: str, key: Key) -> None:
        if key in existing.get(m, ()):
            chosen[(m, *key)] = None

    def add_partners(m: str, key: Key) -> None:
        for o, la, n in partners.get(m, {}).get(key, ()):
            add(o, (la, n))

    for spec in neurons:
        who, _, name = spec.rpartition(":")
        for m in models:
            if not who or who == m:
                add(m, parse_neuron_name(name))
    univ = {m: _universal(frames.get(m)) for m in models}
    for m in models:
        for key in univ[m]:
            add(m, key)
    for m in models:
        for key in univ[m]:
            add_partners(m, key)
    for m in models:
        for key in featured.get(m, ()):
            add(m, (int(key[0]), int(key[1])))
        for key in family_representatives(frames.get(m)):
            add(m, key)
    ranked = {m: _ranked(frames.get(m)) for m in models}
    for m in models:
        for key, _ in ranked[m][:top_n]:
            add(m, key)
    fill = sorted(((-v, i, m, key) for m in models for i, (key, v) in enumerate(ranked[m])),
                  key=lambda t: (t[0], t[1], models.index(t[2])))
    for _, _, m, key in fill:
        for o, la, n in ((m, *key), *partners.get(m, {}).get(key, ())):
            if len(chosen) >= max_pages:
                break
            add(o, (la, n))
    out: dict[str, list[Key]] = {m: [] for m in models}
    for m, la, n in chosen:
        out.setdefault(m, []).append((la, n))
    return out
