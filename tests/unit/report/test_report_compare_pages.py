"""The compare pages, navigation, glossary and link integrity of a whole built report."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote, urljoin

import pandas as pd
import pytest
from report_fixtures import MODELS, make_fake_run

from universal_neurons.constants import safe_name
from universal_neurons.report.build import ReportConfig, build_report

A, B = MODELS
HREF = re.compile(r'href="([^"#]+)(?:#[^"]*)?"')


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    run = make_fake_run(tmp_path_factory.mktemp("compare-pages") / "run")
    pd.DataFrame({"pair": [f"L0.1 ~ {B}:L1.2"], "score": [0.9]}).to_csv(
        run / "entropy" / "matched.csv", index=False)
    return build_report(run, config=ReportConfig(top_n=1, max_pages=10)).parent


def _html(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def test_every_link_of_the_report_opens_a_file(report):
    pages = [p for p in report.rglob("*.html")]
    assert any("/compare/" in str(p) for p in pages) and (report / "glossary.html").is_file()
    for p in pages:
        for href in HREF.findall(_html(p)):
            if href.startswith(("http:", "https:", "data:")):
                pytest.fail(f"{p}: remote link {href}")
            target = Path(unquote(urljoin(p.as_uri(), href)[len("file://"):]))
            assert target.is_file(), (p.relative_to(report), href)


def test_budget_counts_pages_of_all_models(report):
    n = sum(1 for _ in (report / "neurons").rglob("*.html"))
    run = report.parent
    always = set()
    for m in MODELS:
        df = pd.read_parquet(run / "neurons" / f"{safe_name(m)}.parquet")
        always |= {(m, a, b) for a, b in zip(df.layer[df.is_universal], df.neuron[df.is_universal])}
    assert n >= 10 and len(always) <= n  # the budget (10) is for all models together
    assert any((report / "neurons" / safe_name(B)).glob("*.html"))


def test_neuron_page_navigation_and_glossary_titles(report):
    names = sorted((p.stem for p in (report / "neurons" / A).glob("*.html")),
                   key=lambda s: tuple(int(x) for x in s[1:].split(".")))
    assert len(names) >= 3
    middle = _html(report / "neurons" / A / f"{names[1]}.html")
    assert f'class="prev">← {names[0]}</a>' in middle and f'class="next">{names[2]} →</a>' in middle
    first = _html(report / "neurons" / A / f"{names[0]}.html")
    assert 'class="prev"' not in first
    # every statistic label links to its glossary entry, with the definition as hover text
    labels = re.findall(r'<a class="term" href="../../glossary.html#(\w+)" title="([^"]+)">', middle)
    keys = dict(labels)
    assert {"excess_corr", "sparsity", "kurt", "vocab_var", "l2_penalty", "in_out_sim"} <= set(keys)
    assert keys["sparsity"].startswith("activation frequency")
    assert keys["excess_corr"].startswith("excess correlation")
    # family neighbours: the page's families, each with a link into the browser
    df = pd.read_parquet(report.parent / "neurons" / f"{A}.parquet")
    layer, neuron = map(int, names[1][1:].split("."))
    fams = df[(df.layer == layer) & (df.neuron == neuron)].families.iloc[0]
    for f in filter(None, fams.split(";")):
        assert f"browser-toy-a.html#family={quote(f, safe='')}" in middle


def test_compare_page_has_a_column_per_model(report):
    pages = sorted((report / "compare" / A).glob("*.html"))
    assert pages
    text = _html(pages[0])
    heads = re.findall(r'<div class="cell head"><h3>(.*?)</h3>', text)
    assert len(heads) == len(MODELS)
    assert heads[0].startswith(("<a ", A)) and B in heads[1]
    assert text.count("<svg") >= 2  # both histograms
    for section in ("Statistics", "Activation histogram", "Top activating examples",
                    "Promoted and suppressed tokens"):
        assert f'<h2 class="row">{section}' in text
    assert 'href="../../report.css"' in text


def test_sizes_stay_small(report):
    sizes = sorted(p.stat().st_size for p in (report / "compare").rglob("*.html"))
    assert sizes and sizes[len(sizes) // 2] <= 30_000


def test_partner_names_on_the_front_page_link_to_that_model(report):
    index = _html(report / "index.html")
    assert f'<a href="neurons/{safe_name(B)}/L1.2.html">{B}:L1.2</a>' in index
    assert f'<a href="neurons/{A}/L0.1.html">L0.1</a>' in index
    assert (report / "neurons" / safe_name(B) / "L1.2.html").is_file()
