"""The report in a real headless Chromium: browser table, filters, sorting, neuron pages.

Screenshots go to the test's tmp dir and, when ``UN_SCREENSHOT_DIR`` is set, there too.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import XSS_SCRIPT, make_fake_run

from universal_neurons.report.browser import browser_file
from universal_neurons.report.build import ReportConfig, build_report

COLUMN_JS = """
const ths = [...document.querySelectorAll('#neuron-table thead th')];
const i = ths.findIndex(t => t.dataset.key === arguments[0]);
if (i < 0) return null;
return [...document.querySelectorAll('#neuron-table tbody tr')].map(r => r.cells[i].textContent);
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("browser") / "run")
    index = build_report(run, config=ReportConfig(top_n=3))
    return run, index


def _shot(driver, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    out = os.environ.get("UN_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / path.name)


def _no_xss(driver) -> None:
    """No alert opened, no injected element exists, and the console has no severe error."""
    from selenium.common.exceptions import NoAlertPresentException

    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert driver.execute_script("return [...document.scripts].filter(s => s.src).length") == 0
    severe = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    assert severe == []


def _column(driver, key: str) -> list[str]:
    values = driver.execute_script(COLUMN_JS, key)
    assert values is not None, f"column {key} not shown"
    return values


def _search(driver, text: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.ID, "search")
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    if text:
        box.send_keys(text)


def test_index_page(driver, site, tmp_path):
    from selenium.webdriver.common.by import By

    run, index = site
    driver.get(index.as_uri())
    assert driver.title == "Universal neurons report"
    imgs = driver.find_elements(By.CSS_SELECTOR, "img")
    assert len(imgs) == 4
    from selenium.webdriver.support.ui import WebDriverWait

    # Images decode asynchronously: wait (bounded) until every one has loaded.
    WebDriverWait(driver, 10).until(lambda d: d.execute_script(
        "return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"))
    claims = driver.find_element(By.ID, "claims").text
    assert XSS_SCRIPT in claims  # shown as text, not run
    _shot(driver, tmp_path, "report_index")
    _no_xss(driver)


def test_neuron_browser(driver, site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    run, index = site
    df = pd.read_parquet(run / "neurons" / "toy-a.parquet")
    driver.get(index.as_uri())
    driver.find_element(By.CSS_SELECTOR, f'a[href="{browser_file("toy-a")}"]').click()
    assert driver.title == "Neuron browser: toy-a"
    rows = driver.find_elements(By.CSS_SELECTOR, "#neuron-table tbody tr")
    assert len(rows) == len(df)
    # default sort: excess correlation, largest first
    excess = [float(v) for v in _column(driver, "excess_corr")]
    assert excess == sorted(excess, reverse=True)

    univ = driver.find_element(By.ID, "universal-only")
    univ.click()
    assert len(_column(driver, "name")) == int(df.is_universal.sum()) > 0
    assert set(_column(driver, "is_universal")) == {"yes"}
    univ.click()

    _search(driver, "L1.")
    names = _column(driver, "name")
    assert len(names) == int((df.layer == 1).sum()) and all(n.startswith("L1.") for n in names)
    _search(driver, "<script>")  # the hostile family name, searched as text
    n_hostile = sum(1 for i in range(len(df)) if i % 3 == 0)
    assert len(_column(driver, "name")) == n_hostile
    _search(driver, "")
    assert len(_column(driver, "name")) == len(df)

    family = Select(driver.find_element(By.ID, "family"))
    options = [o.text for o in family.options]
    assert f"unigram:{XSS_SCRIPT}" in options  # an option's text, not markup
    family.select_by_visible_text(f"unigram:{XSS_SCRIPT}")
    assert len(_column(driver, "name")) == n_hostile
    family.select_by_index(0)

    Select(driver.find_element(By.ID, "layer")).select_by_visible_text("2")
    assert set(_column(driver, "layer")) == {"2"}
    Select(driver.find_element(By.ID, "layer")).select_by_index(0)

    header = driver.find_element(By.CSS_SELECTOR, '#neuron-table th[data-key="excess_corr"]')
    header.click()  # second click on the sorted column: ascending
    excess = [float(v) for v in _column(driver, "excess_corr")]
    assert excess == sorted(excess)
    driver.find_element(By.CSS_SELECTOR, '#neuron-table th[data-key="mean_corr"]').click()
    mean = [float(v) for v in _column(driver, "mean_corr")]
    assert mean == sorted(mean, reverse=True)
    driver.find_element(By.CSS_SELECTOR, '#neuron-table th[data-key="name"]').click()
    names = _column(driver, "name")
    keys = [tuple(int(x) for x in n[1:].split(".")) for n in names]
    assert keys == sorted(keys)

    Select(driver.find_element(By.ID, "page-size")).select_by_visible_text("50")
    assert driver.find_element(By.ID, "count").text == f"{len(df)} of {len(df)} neurons"
    _shot(driver, tmp_path, "report_browser")
    _no_xss(driver)


def test_neuron_page(driver, site, tmp_path):
    from selenium.webdriver.common.by import By

    run, _ = site
    driver.get((run / "report" / browser_file("toy-a")).as_uri())
    link = driver.find_element(By.CSS_SELECTOR, "#neuron-table tbody a")
    name = link.text
    link.click()
    assert driver.title == f"toy-a {name}"
    assert driver.find_element(By.CSS_SELECTOR, "#histogram svg path")  # the bars, one path
    shaded = driver.find_elements(By.CSS_SELECTOR, "#examples .example b")  # own tokens
    assert shaded and all(s.get_attribute("title") for s in shaded)
    examples = driver.find_element(By.ID, "examples").text
    assert XSS_SCRIPT in examples  # the hostile token is displayed as text
    partners = driver.find_elements(By.CSS_SELECTOR, "#partners td")
    assert partners and partners[0].text == "org/toy-b"
    assert "cos(W_U, w_out)" in driver.find_element(By.ID, "tokens").text
    _shot(driver, tmp_path, "report_neuron")
    _no_xss(driver)
    driver.find_element(By.LINK_TEXT, "report").click()
    assert driver.title == "Universal neurons report"


SHADING_JS = """
return [...document.querySelectorAll('#examples .example')].map(ex => {
  const nodes = [...ex.childNodes].filter(n => !(n.classList && n.classList.contains('meta')));
  return nodes.map(n => n.nodeType === 1 && (n.tagName === 'I' || n.tagName === 'B')
    ? [n.title, getComputedStyle(n).backgroundColor] : null);
});
"""


def test_every_example_token_is_shaded(driver, site):
    """On a page of a version-2 stats file every token of every example window is a shaded
    element with its value as the title (the hover text), drawn with a visible background
    (its alpha, |value| / scale, is checked in tests/unit/report/test_report_examples.py)."""
    import re

    from report_fixtures import EXAMPLES

    from universal_neurons.report.neuron_page import neuron_file

    run, _ = site
    page = run / "report" / neuron_file("toy-a", 0, 0)
    driver.get(page.as_uri())
    examples = driver.execute_script(SHADING_JS)
    assert len(examples) == len(EXAMPLES)
    for tokens in examples:
        assert tokens and all(t is not None for t in tokens)  # no unshaded text
        for title, background in tokens:
            value = float(title)
            alpha = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([0-9.]+))?\)", background)
            assert alpha is not None
            assert value != 0 and float(alpha.group(4) or 1) > 0  # drawn shaded
