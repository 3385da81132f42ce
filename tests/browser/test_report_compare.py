"""Pages of every model, partner links, the compare view and the browser's exact and
partner search, in headless Chromium.

The second model's neuron table has no partner columns (correlations were computed for the
reference model only); the report reads its best partners from
``correlations/org--toy-b__toy-a.safetensors``, checked here against that file.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from report_fixtures import D_MLP, MODELS, make_fake_run

from universal_neurons.constants import safe_name
from universal_neurons.report.build import ReportConfig, build_report

A, B = MODELS
LINK_JS = "return [...document.querySelectorAll(arguments[0])].map(a => [a.textContent, a.href])"
ROWS_JS = """
const ths = [...document.querySelectorAll('#neuron-table thead th')];
const i = ths.findIndex(t => t.dataset.key === arguments[0]);
return [...document.querySelectorAll('#neuron-table tbody tr')].map(r => r.cells[i].textContent);
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("compare") / "run")
    p = run / "neurons" / f"{safe_name(B)}.parquet"
    df = pd.read_parquet(p)
    df.drop(columns=[c for c in df.columns if c.startswith(A + "_")]).to_parquet(p, index=False)
    index = build_report(run, config=ReportConfig(top_n=2, max_pages=12))
    return run, index


def _universal_a(run):
    df = pd.read_parquet(run / "neurons" / f"{A}.parquet")
    u = df[df.is_universal].sort_values("excess_corr", ascending=False)
    assert len(u) > 0
    return df, u.iloc[0]


def test_partner_link_opens_the_partner_page_in_model_b(driver, site):
    run, index = site
    _, row = _universal_a(run)
    best = row[f"{B}_best"]  # e.g. "L1.2"
    page = index.parent / "neurons" / A / f"L{row.layer}.{row.neuron}.html"
    driver.get(page.as_uri())
    links = driver.execute_script(LINK_JS, "#partners td a")
    want = f"{B}:{best}"
    hits = [h for t, h in links if t == want]
    assert hits, links  # the best partner of a universal neuron always has a page
    driver.get(hits[0])
    assert driver.current_url.endswith(f"/neurons/{safe_name(B)}/{best}.html")
    assert driver.title == f"{B} {best}"
    assert driver.find_elements("css selector", "section#examples .example")


def test_sibling_pages_name_their_partner_from_the_correlation_file(driver, site):
    from safetensors.numpy import load_file

    run, index = site
    summary = load_file(str(run / "correlations" / f"{safe_name(B)}__{A}.safetensors"))
    pages = sorted((index.parent / "neurons" / safe_name(B)).glob("*.html"))
    assert pages
    name = pages[0].stem
    layer, neuron = map(int, name[1:].split("."))
    flat = int(summary["argmax"][layer * D_MLP + neuron])
    driver.get(pages[0].as_uri())
    cells = driver.execute_script(
        "return [...document.querySelectorAll('#partners tbody tr td')].map(td => td.textContent)")
    assert cells[1] == f"{A}:L{flat // D_MLP}.{flat % D_MLP}"
    assert float(cells[2]) == pytest.approx(float(summary["max"][layer * D_MLP + neuron]), rel=1e-3)


def test_compare_view_shows_both_neurons_examples(driver, site):
    from safetensors.numpy import load_file

    run, index = site
    _, row = _universal_a(run)
    best = row[f"{B}_best"]
    driver.get((index.parent / "neurons" / A / f"L{row.layer}.{row.neuron}.html").as_uri())
    driver.find_element("css selector", "a.to-compare").click()
    assert driver.current_url.endswith(f"/compare/{A}/L{row.layer}.{row.neuron}.html")
    heads = driver.execute_script("return [...document.querySelectorAll('.compare .head h3')]"
                                  ".map(h => h.textContent)")
    assert [re.sub(r"\s*universal$", "", h) for h in heads] == [f"{A}:L{row.layer}.{row.neuron}", f"{B}:{best}"]
    # the examples row: one cell per neuron, each with that neuron's largest activations
    cells = driver.execute_script("""
        const h = [...document.querySelectorAll('.compare h2.row')].find(x => x.textContent.startsWith('Top'));
        const out = []; let el = h.nextElementSibling;
        while (el && el.classList.contains('cell')) {
          out.push([...el.querySelectorAll('.example .meta')].map(m => m.textContent)); el = el.nextElementSibling; }
        return out;""")
    assert len(cells) == 2 and all(cells)
    for model, name, metas in ((A, f"L{row.layer}.{row.neuron}", cells[0]), (B, best, cells[1])):
        stats = load_file(str(run / "stats" / safe_name(model) / "activation_stats.safetensors"))
        la, n = map(int, name[1:].split("."))
        recorded = stats["top_values"][la, n][stats["top_seq"][la, n] >= 0]
        shown = [float(m.rsplit(":", 1)[1]) for m in metas]
        assert shown[0] == pytest.approx(float(np.max(recorded)), rel=1e-3)
        assert shown == sorted(shown, reverse=True) and len(shown) <= 5
    # each name links to that neuron's page
    links = dict(driver.execute_script(LINK_JS, ".compare .head h3 a"))
    assert links[f"{B}:{best}"].endswith(f"/neurons/{safe_name(B)}/{best}.html")


def test_browser_exact_and_partner_search_and_links(driver, site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    run, index = site
    df, row = _universal_a(run)
    driver.get((index.parent / f"browser-{A}.html").as_uri())

    def search(text):
        box = driver.find_element(By.ID, "search")
        box.clear()
        box.send_keys(text)

    search("L1.2")  # exact: not L1.20..., and not partner names containing it
    assert driver.execute_script(ROWS_JS, "name") == ["L1.2"]
    search("L1.")
    assert len(driver.execute_script(ROWS_JS, "name")) == int((df.layer == 1).sum())
    best = row[f"{B}_best"]
    search(f"{B}:{best}")
    want = df[df[f"{B}_best"] == best]
    assert sorted(driver.execute_script(ROWS_JS, "name")) == sorted(
        f"L{a}.{b}" for a, b in zip(want.layer, want.neuron))
    search(f"nosuchmodel:{best}")
    assert driver.execute_script(ROWS_JS, "name") == []
    # the row of a universal neuron: its name, its compare view, its partner's page
    search(f"L{row.layer}.{row.neuron}")
    partner = driver.execute_script(LINK_JS, "#neuron-table tbody a:not(.cmp)")
    assert [t for t, _ in partner] == [f"L{row.layer}.{row.neuron}", f"{B}:{best}"]
    assert partner[1][1].endswith(f"/neurons/{safe_name(B)}/{best}.html")
    cmp = driver.find_element(By.CSS_SELECTOR, "#neuron-table tbody a.cmp")
    assert cmp.get_attribute("href").endswith(f"/compare/{A}/L{row.layer}.{row.neuron}.html")
    # headers: reachable with Tab, sorted with Enter or Space, aria-sort set, definition as title
    search("")
    th = driver.find_element(By.CSS_SELECTOR, '#neuron-table th[data-key="sparsity"]')
    assert th.get_attribute("tabindex") == "0" and "activation frequency" in th.get_attribute("title")
    th.send_keys(Keys.SPACE)
    th = driver.find_element(By.CSS_SELECTOR, '#neuron-table th[data-key="sparsity"]')
    assert th.get_attribute("aria-sort") == "descending"
    values = [float(v) for v in driver.execute_script(ROWS_JS, "sparsity")]
    assert values == sorted(values, reverse=True)
    assert [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"] == []


def test_browser_hash_presets_family_and_search(driver, site):
    run, index = site
    df = pd.read_parquet(run / "neurons" / f"{A}.parquet")
    fam = "position"
    driver.get((index.parent / f"browser-{A}.html").as_uri() + f"#family={fam}")
    names = driver.execute_script(ROWS_JS, "name")
    want = df[df.families.str.split(";").apply(lambda f: fam in f)]
    assert sorted(names) == sorted(f"L{a}.{b}" for a, b in zip(want.layer, want.neuron))
    driver.get((index.parent / f"browser-{A}.html").as_uri() + "#q=L0.3")
    driver.refresh()
    assert driver.execute_script(ROWS_JS, "name") == ["L0.3"]
