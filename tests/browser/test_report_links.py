"""Every neuron the front page names has a page, and its link opens it (headless Chromium);
the token display renders bytes, spaces and direction overrides as markers."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from report_fixtures import MODELS, make_fake_run

from universal_neurons.constants import safe_name
from universal_neurons.report.build import ReportConfig, build_report

NAME = re.compile(r"^L\d+\.\d+$")

NAMED_JS = """
// every link into neurons/ and every cell or list item spelling a neuron name
const out = [];
for (const a of document.querySelectorAll('main a[href^="neurons/"]'))
  out.push(['link', a.textContent, a.href]);
for (const el of document.querySelectorAll('main td, main li')) {
  for (const m of el.textContent.matchAll(/\\bL\\d+\\.\\d+\\b/g)) {
    const a = [...el.querySelectorAll('a')].find(x => x.textContent === m[0]);
    out.push(['name', m[0], a ? a.href : null]);
  }
}
return out;
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("links") / "run")
    a, b = MODELS
    pd.DataFrame({"model": [a, a], "layer": [1, 0], "neuron": [5, 7],
                  "neuron_name": ["L1.5", "L0.7"]}).to_parquet(run / "entropy" / "candidates.parquet")
    pd.DataFrame({"model": [a], "pair": ["L0.3->L2.H0"], "layer": [0], "neuron": [3],
                  "score": [1.2]}).to_parquet(run / "attention" / "heuristic_top.parquet")
    pd.DataFrame({"layer": [2], "neuron": [4], "token_id": [9], "token": ["\u202eevil"],
                  "cos": [0.5]}).to_parquet(run / "families" / f"{safe_name(b)}_prediction_tokens.parquet")
    index = build_report(run, config=ReportConfig(top_n=0, max_pages=0))
    return run, index


def test_every_neuron_named_on_the_front_page_has_a_page(driver, site):
    run, index = site
    driver.get(index.as_uri())
    found = driver.execute_script(NAMED_JS)
    names = [f for f in found if f[0] == "name"]
    links = [f for f in found if f[0] == "link"]
    assert len(names) >= 10 and len(links) >= 10
    unlinked = [n for n in names if n[2] is None]
    assert not unlinked, unlinked  # every name written on the page links to its page
    for _, _text, href in links:
        driver.get(href)
        title = driver.title
        assert re.search(r"L\d+\.\d+$", title), (href, title)
        assert driver.find_elements("css selector", "section#statistics"), href
        # the shared stylesheet loaded from file:// (the nav bar has its background)
        bg = driver.execute_script("return getComputedStyle(document.querySelector('nav')).backgroundColor")
        assert bg not in ("", "rgba(0, 0, 0, 0)"), href


def test_tokens_render_as_markers(driver, site):
    run, _ = site
    page = run / "report" / "neurons" / safe_name(MODELS[0])
    driver.get(next(iter(sorted(page.glob("*.html")))).as_uri())
    cells = driver.execute_script(
        "return [...document.querySelectorAll('#tokens code.t')].map(c => c.textContent)")
    assert cells and any("\u2423" in c for c in cells)  # " cat" and the like: space visible
    iso = driver.execute_script(
        "return getComputedStyle(document.querySelector('#tokens code.t')).unicodeBidi")
    assert iso == "isolate"
    assert not driver.find_elements("css selector", "main img")  # no injected element
