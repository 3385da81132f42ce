"""Which neurons get a page, front-page links, and the size of the pages."""

from __future__ import annotations

import re
import statistics
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import D_MLP, MODELS, N_LAYERS, make_fake_run

from universal_neurons.constants import safe_name
from universal_neurons.report.build import ReportConfig, build_report, select_pages

MEDIAN_PAGE_BYTES = 30_000


def frame(excess, universal):
    n = len(excess)
    return pd.DataFrame({"layer": [i // 4 for i in range(n)], "neuron": [i % 4 for i in range(n)],
                         "excess_corr": excess, "is_universal": universal})


def test_order_explicit_universal_featured_top_then_fill():
    df = frame([0.1, 0.9, 0.6, 0.2, 0.8, 0.3, None, 0.05],
               [False, True, False, False, True, False, False, False])
    cfg = ReportConfig(top_n=1, max_pages=7, neurons=("L1.3",))
    got = select_pages(df, "m", cfg, featured=[(1, 2), (0, 0), (9, 9)])  # (9, 9) does not exist
    assert got == [(1, 3),          # --neuron
                   (0, 1), (1, 0),  # universal, by excess
                   (1, 2), (0, 0),  # featured, in their order
                   (0, 2),          # top_n=1 by excess among the rest (0.9, 0.8 are taken)
                   (1, 1)]          # fill by excess up to max_pages=7


def test_universal_and_featured_neurons_are_never_cut_by_the_budget():
    df = frame([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2], [True] * 5 + [False] * 3)
    got = select_pages(df, "m", ReportConfig(top_n=0, max_pages=2), featured=[(1, 3)])
    assert got == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 3)]
    got = select_pages(df, "m", ReportConfig(top_n=0, max_pages=7), featured=[(1, 3)])
    assert got == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 3), (1, 1)]
    assert len(select_pages(df, "m", ReportConfig(top_n=0, max_pages=1000))) == 8


def test_budget_is_filled_by_excess_correlation_not_by_index():
    excess = [0.01 * i for i in range(40)]
    df = pd.DataFrame({"layer": [i // 10 for i in range(40)], "neuron": [i % 10 for i in range(40)],
                       "excess_corr": excess, "is_universal": [False] * 40})
    got = select_pages(df, "m", ReportConfig(top_n=0, max_pages=5))
    assert got == [(3, 9), (3, 8), (3, 7), (3, 6), (3, 5)]


@pytest.fixture(scope="module")
def featured_run(tmp_path_factory):
    """The fake run with stage tables that name neurons in each way the stages do."""
    run = make_fake_run(tmp_path_factory.mktemp("featured") / "run")
    a, b = MODELS
    pd.DataFrame({"model": [a, a], "layer": [1, 0], "neuron": [5, 7], "neuron_name": ["L1.5", "L0.7"],
                  "rank": [1, 2]}).to_parquet(run / "entropy" / "candidates.parquet")
    pd.DataFrame({"neuron_a": ["L2.1"], "neuron_b": ["L1.6"], "cos": [-0.1]}).to_parquet(
        run / "entropy" / "candidate_pairs.parquet")
    pd.DataFrame({"layer": [2, 2], "neuron": [4, 4], "prediction_class": ["partition"] * 2,
                  "token_id": [9, 10], "token": ["\ufffd", "\ufffd"], "cos": [0.5, 0.4]}).to_parquet(
        run / "families" / f"{safe_name(b)}_prediction_tokens.parquet")
    pd.DataFrame({"model": [a], "pair": ["L0.3->L2.H0"], "score": [1.2]}).to_parquet(
        run / "attention" / "heuristic_top.parquet")
    build_report(run, config=ReportConfig(top_n=0, max_pages=0))
    return run


def _pages(run: Path, model: str) -> set[str]:
    return {p.stem for p in (run / "report" / "neurons" / safe_name(model)).glob("*.html")}


def test_neurons_named_on_the_front_page_get_pages_and_links(featured_run):
    run = featured_run
    a, b = MODELS
    assert {"L1.5", "L0.7", "L2.1", "L1.6", "L0.3", "L2.3"} <= _pages(run, a)
    assert "L2.4" in _pages(run, b)  # named by org/toy-b's prediction-token table
    index = (run / "report" / "index.html").read_text(encoding="utf-8")
    hrefs = set(re.findall(r'href="(neurons/[^"]+)"', index))
    for target in hrefs:
        assert (run / "report" / target.replace("%2F", "/")).is_file() or \
            (run / "report" / target).is_file(), target
    for name in ("L1.5", "L2.1", "L1.6", "L0.3"):
        assert f'href="neurons/{safe_name(a)}/{name}.html"' in index, name
    assert f'href="neurons/{safe_name(b)}/L2.4.html"' in index


def test_front_page_tables_have_human_headings_and_decoded_tokens(featured_run):
    index = (featured_run / "report" / "index.html").read_text(encoding="utf-8")
    assert "<h3>Entropy neuron candidates" in index and "<h3>candidates.parquet" not in index
    assert "<h3>Pairs of entropy candidates</h3>" in index
    assert "Tokens promoted or suppressed" in index and "org/toy-b" in index
    block = re.search(r'<section id="prediction">(.*?)</section>', index, re.S).group(1)
    assert "\ufffd" not in block  # re-decoded from token_id with the run's tokenizer


def test_families_never_computed_say_so(tmp_path):
    run = make_fake_run(tmp_path / "run")
    pd.DataFrame({"family": ["unigram", "entity", "syntax"], "n_neurons": [3, 0, 0]}).to_csv(
        run / "families" / "toy-a_counts.csv", index=False)
    # the explain stage's VR table has unigram and syntax features but no entity ones
    pd.DataFrame({"layer": [0], "neuron": [0], "current/unigram:the": [0.1],
                  "sequence/pos:NOUN": [0.2]}).to_parquet(run / "explanations" / "toy-a_vr.parquet")
    index = build_report(run, config=ReportConfig(top_n=0, max_pages=0)).read_text()
    block = re.search(r'<section id="families">(.*?)</section>', index, re.S).group(1)
    rows = dict(re.findall(r"<tr><td>(\w+)</td><td[^>]*>([^<]+)</td>", block))
    assert rows == {"unigram": "3", "entity": "not computed", "syntax": "0"}


def test_page_size(tmp_path):
    """The size budget of docs/report.md: median neuron page <= 30 KB, CSS shared, no
    zero-height histogram bars."""
    run = make_fake_run(tmp_path / "run")
    index = build_report(run, config=ReportConfig(max_pages=N_LAYERS * D_MLP))
    report = index.parent
    pages = sorted((report / "neurons").rglob("*.html"))
    assert len(pages) == len(MODELS) * N_LAYERS * D_MLP
    sizes = [p.stat().st_size for p in pages]
    assert statistics.median(sizes) <= MEDIAN_PAGE_BYTES, statistics.median(sizes)
    text = pages[0].read_text(encoding="utf-8")
    assert "<style>" not in text and 'href="../../report.css"' in text
    assert (report / "report.css").is_file()
    assert "<rect" not in re.search(r'<section id="histogram">(.*?)</section>', text, re.S).group(1)


def test_families_of_a_model_the_explain_stage_skipped_say_not_computed(tmp_path):
    run = make_fake_run(tmp_path / "run")
    pd.DataFrame({"family": ["unigram", "position", "partition"], "n_neurons": [0, 0, 2]}).to_csv(
        run / "families" / "toy-a_counts.csv", index=False)  # no explanations/toy-a_vr.parquet
    index = build_report(run, config=ReportConfig(top_n=0, max_pages=0)).read_text()
    block = re.search(r'<section id="families">(.*?)</section>', index, re.S).group(1)
    rows = dict(re.findall(r"<tr><td>(\w+)</td><td[^>]*>([^<]+)</td>", block))
    assert rows == {"unigram": "not computed", "position": "not computed", "partition": "2"}
