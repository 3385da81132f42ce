"""Render neuron pages and compare pages of a report, reading each neuron's details once."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

from universal_neurons.report.browser import browser_file, families_of, partner_models
from universal_neurons.report.compare import Column, compare_href, render_compare_page
from universal_neurons.report.details import DetailSource, NeuronDetail
from universal_neurons.report.navigation import Navigation, navigation_html
from universal_neurons.report.neuron_page import render_neuron_page
from universal_neurons.report.rundata import RunData

Key = tuple[int, int]
CACHED_DETAILS = 2048
"""Neuron details kept in memory while pages are written (a few kilobytes each)."""


class PageWriter:
    """The pages of one report: ``frames`` are the neuron tables (with partner columns),
    ``pages`` the neurons that get a page per model."""

    def __init__(self, run: RunData, frames: Mapping[str, Any], source: DetailSource,
                 pages: Mapping[str, Sequence[Key]], labels: Mapping[str, str], nav: Navigation):
        self.run, self.frames, self.source, self.labels, self.nav = run, frames, source, labels, nav
        self.page_sets = {m: set(p) for m, p in pages.items()}
        self.partners = {m: partner_models(df, m, run.models) for m, df in frames.items()
                         if df is not None}
        self.d_mlp = {m: int(df["neuron"].max()) + 1 for m, df in frames.items()
                      if df is not None and len(df)}
        self._where: dict[str, dict[Key, int]] = {}
        self._details: OrderedDict[tuple[str, int, int], NeuronDetail] = OrderedDict()

    def row(self, model: str, key: Key) -> dict:
        """The neuron's row of its table as a dict (empty when the table lacks it)."""
        df = self.frames.get(model)
        if df is None:
            return {}
        if model not in self._where:
            keys = zip(df["layer"].astype(int).tolist(), df["neuron"].astype(int).tolist())
            self._where[model] = {k: i for i, k in enumerate(keys)}
        i = self._where[model].get(key)
        return {} if i is None else df.iloc[[i]].to_dict("records")[0]  # type: ignore[attr-defined]

    def detail(self, model: str, layer: int, neuron: int) -> NeuronDetail:
        """Histogram, examples, tokens and partners of one neuron (the last
        :data:`CACHED_DETAILS` are kept: a neuron page and the compare pages that show it
        read it once when written close together)."""
        k = (model, layer, neuron)
        if k in self._details:
            self._details.move_to_end(k)
            return self._details[k]
        d = self.source.detail(model, layer, neuron, self.row(model, (layer, neuron)),
                               self.partners.get(model, ()), self.d_mlp)
        self._details[k] = d
        if len(self._details) > CACHED_DETAILS:
            self._details.popitem(last=False)
        return d

    def neuron(self, model: str, layer: int, neuron: int, *, compare: bool) -> str:
        """The neuron page; ``compare``: link it to its compare page."""
        row = self.row(model, (layer, neuron))
        links = navigation_html(self.nav, model, (layer, neuron), families_of(row.get("families")),
                                browser_href=f"../../{quote(browser_file(model))}",
                                compare_href=compare_href(model, layer, neuron, depth=2) if compare else None)
        return render_neuron_page(
            model, layer, neuron, row, self.detail(model, layer, neuron), self.page_sets,
            explanation_columns=self.run.explanation_columns(model),
            explanation_rows=self.run.explanation_rows(model).get((layer, neuron)),
            labels=self.labels, links=links)

    def compare(self, model: str, layer: int, neuron: int) -> str:
        """The compare page: the neuron, then its best match in each sibling model."""
        d = self.detail(model, layer, neuron)
        cols = [Column(model, layer, neuron, self.row(model, (layer, neuron)), d)]
        for p in d.partners:
            if p.layer is None or p.neuron is None:
                continue
            cols.append(Column(p.model, p.layer, p.neuron, self.row(p.model, (p.layer, p.neuron)),
                               self.detail(p.model, p.layer, p.neuron), p.corr, p.baseline))
        return render_compare_page(cols, self.labels, self.page_sets)
