"""Build ``RUN/report/``: a static site that opens from disk (no server, no network).

Layout::

    report/index.html                      summary, figures, claims, families, entropy, attention
    report/paper.html                      the paper index (RUN/paper/index.json), when there
    report/browser-<model>.html            neuron browser of one model (all neurons)
    report/neurons/<model>/L{l}.{n}.html   neuron pages (a bounded set, see selection.py)
    report/compare/<model>/L{l}.{n}.html   a neuron beside its best partners (compare.py)
    report/glossary.html                   definitions of the statistics (glossary.py)
    report/plots/...                       copies of RUN/plots

The site is built in a temporary folder beside the target and swapped in at the end, so a
failed build never leaves a half-written report that looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from universal_neurons.constants import (
    PLOTS_DIR,
    REPORT_DIR,
    REPORT_INDEX,
    REPORT_PAPER_PAGE,
    parse_neuron_name,
)
from universal_neurons.errors import UserError
from universal_neurons.report.browser import browser_data, browser_file, browser_page
from universal_neurons.report.compare import compare_file
from universal_neurons.report.details import DetailSource
from universal_neurons.report.front import featured_neurons, front_tables
from universal_neurons.report.glossary import GLOSSARY_FILE, glossary_page
from universal_neurons.report.html import STYLESHEET, asset
from universal_neurons.report.index_page import TOP_LISTED, render_index, summarize
from universal_neurons.report.navigation import build_navigation
from universal_neurons.report.neuron_page import neuron_file
from universal_neurons.report.page_writer import PageWriter
from universal_neurons.report.paper_page import read_paper_index, render_paper_page
from universal_neurons.report.partners import add_partner_columns, best_partners, model_labels
from universal_neurons.report.rundata import RunData
from universal_neurons.report.selection import RANK_COLUMNS, select_report_pages

log = logging.getLogger(__name__)

__all__ = ["RANK_COLUMNS", "ReportConfig", "build_report", "select_pages"]


@dataclass(frozen=True)
class ReportConfig:
    """Settings of :func:`build_report`."""

    top_n: int = 100
    """Neuron pages for the top-N neurons of each model by excess correlation, always..."""
    max_pages: int = 500
    """...and for more, by excess correlation (each with its best partners), up to this many
    neuron pages in the whole report (all models together). Universal neurons and their
    best partners, those named with ``neurons`` and every neuron the report names always get
    a page, even past this budget (see ``selection.select_report_pages``)."""
    neurons: tuple[str, ...] = ()
    """Extra neurons to give a page: ``L3.17`` (every model) or ``MODEL:L3.17``."""
    context_before: int = 24
    """Tokens of context shown before an example's activating token."""
    context_after: int = 6
    max_examples: int = 10
    """Top activating examples shown per neuron."""

    def __post_init__(self) -> None:
        for k in ("top_n", "max_pages", "context_before", "context_after", "max_examples"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        for n in self.neurons:
            parse_neuron_name(n.rsplit(":", 1)[-1])


def select_pages(df, model: str, config: ReportConfig,
                 featured: Sequence[tuple[int, int]] = ()) -> list[tuple[int, int]]:
    """The pages of one model alone (``selection.select_report_pages`` with one model):
    ``config.neurons``, universal neurons, ``featured`` neurons and family representatives,
    the top ``top_n``, then the rest by rank until ``max_pages``."""
    if df is None or len(df) == 0:
        return []
    return select_report_pages({model: df}, [model], top_n=config.top_n,
                               max_pages=config.max_pages, neurons=config.neurons,
                               featured={model: list(featured)})[model]


def build_report(run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 config: ReportConfig | None = None,
                 progress: Callable[[Sequence], Sequence] | None = None) -> Path:
    """Write the report of ``run_dir`` (default into ``RUN/report``) and return ``index.html``.

    Tolerates any missing stage: its section says "not computed". ``progress`` may wrap the
    list of neuron pages (e.g. ``tqdm``).
    """
    config = config or ReportConfig()
    run = RunData(Path(run_dir))
    if not run.path.is_dir():
        raise FileNotFoundError(f"run directory {run.path} does not exist; pass the --out "
                                "folder of an earlier `universal-neurons` run")
    final = Path(out_dir) if out_dir is not None else run.path / REPORT_DIR
    _check_target(final, run.path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        _write_site(run, tmp, config, progress)
        _swap_in(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("report written to %s", final / REPORT_INDEX)
    return final / REPORT_INDEX


def _check_target(final: Path, run: Path) -> None:
    """Refuse a target whose replacement would delete something that is not a report."""
    f, r = final.resolve(), run.resolve()
    if f == r or f in r.parents:
        raise UserError(f"--out {final} would replace the run directory {run}; pass a folder "
                        "of its own, e.g. RUN/report (the default)")
    if f.exists() and (not f.is_dir() or (any(f.iterdir()) and not (f / REPORT_INDEX).exists())):
        raise UserError(f"--out {final} exists and is not a report folder (no index.html); "
                        "pass a new or empty folder")


def _write_site(run: RunData, out: Path, config: ReportConfig, progress) -> None:
    plots = _copy_plots(run, out)
    frames = add_partner_columns({m: run.neurons(m) for m in run.models}, run.path, run.models)
    tables = front_tables(run)
    featured = featured_neurons(tables, run.models)
    for m, df in frames.items():  # the "most universal neurons" lists name neurons too
        if df is not None and "excess_corr" in df.columns:
            top = df.nlargest(TOP_LISTED, "excess_corr")
            featured.setdefault(m, []).extend(zip(top["layer"].astype(int), top["neuron"].astype(int)))
    best = {m: best_partners(df, m, run.models) for m, df in frames.items()}
    pages = select_report_pages(frames, run.models, top_n=config.top_n, max_pages=config.max_pages,
                                neurons=config.neurons, featured=featured, partners=best)
    page_sets = {m: set(p) for m, p in pages.items()}
    labels = model_labels(run.models)
    summaries = [summarize(m, frames[m], pages[m]) for m in run.models]
    compared = {m: {k for k in pages[m] if best[m].get(k)} for m in run.models}

    for m, df in frames.items():
        if df is None:
            continue
        data = browser_data(df, m, run.models, pages[m], labels=labels, page_sets=page_sets,
                            compared=compared[m])
        s = next(s for s in summaries if s.name == m)
        _write(out / browser_file(m), browser_page(m, data, n_universal=s.n_universal))

    source = DetailSource(run, context_before=config.context_before,
                          context_after=config.context_after, max_examples=config.max_examples)
    pages_html = PageWriter(run, frames, source, pages, labels, build_navigation(frames, pages))
    jobs = [(m, key) for m in run.models for key in pages[m]]
    for m, (layer, neuron) in (progress(jobs) if progress else jobs):
        has_compare = (layer, neuron) in compared[m]
        _write(out / neuron_file(m, layer, neuron), pages_html.neuron(m, layer, neuron, compare=has_compare))
        if has_compare:
            _write(out / compare_file(m, layer, neuron), pages_html.compare(m, layer, neuron))

    _write(out / STYLESHEET, asset(STYLESHEET))
    paper_index = read_paper_index(run.path)
    if paper_index is not None:
        _write(out / REPORT_PAPER_PAGE, render_paper_page(paper_index))
    _write(out / GLOSSARY_FILE, glossary_page())
    _write(out / REPORT_INDEX, render_index(run, summaries, plots, page_sets, run.problems,
                                            tables=tables, token_text=source.text))


def _copy_plots(run: RunData, out: Path) -> list[tuple[str, str]]:
    """Copy ``RUN/plots`` into ``report/plots``; ``(relative URL, name)`` of each figure."""
    from urllib.parse import quote

    src = run.path / PLOTS_DIR
    found = []
    for p in run.plots():
        rel = p.relative_to(src)
        dest = out / PLOTS_DIR / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest)
        found.append((f"{PLOTS_DIR}/" + "/".join(quote(part) for part in rel.parts), str(rel)))
    return found


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def _swap_in(tmp: Path, final: Path) -> None:
    """Replace ``final`` by ``tmp`` (the old report is removed only once the new one is in)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
