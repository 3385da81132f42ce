"""The neuron browser with 100,000 neurons in headless Chromium: speed and correctness.

The page is built with the report's own functions (``browser_data``, ``browser_page``) from
a synthetic neuron table with the columns of ``neurons/<model>.parquet``. Times are measured
inside the page with ``performance.now()`` (first paint: the ``neuron-rows-painted`` mark,
counted from navigation start; sort and filter: from the event to the frame after the
update) and written to ``browser_timings.json`` in the test's tmp dir (and in
``UN_SCREENSHOT_DIR`` when set).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from universal_neurons.report.browser import browser_data, browser_page

N_ROWS, N_LAYERS = 100_000, 25  # 25 layers x 4,000 neurons
PARTNERS = ("seed-b", "seed-c", "seed-d", "seed-e")
STATS = ("w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty", "mean", "var",
         "skew", "kurt", "sparsity", "vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt")
HOSTILE = "<script>alert(1)</script>"
FIRST_PAINT_S, SORT_S, FILTER_S, MAX_DOM_ROWS, REPEATS = 1.0, 0.5, 0.3, 200, 3
LOAD_SLACK = 4
"""The targets above are what docs/report.md shows measured; on a machine busy with other
work the test allows this factor, still an order of magnitude below a browser that renders
every row (90 s to show all at 36,864 rows)."""

# Run an action in the page and time it until the frame after it has been drawn.
TIMED_JS = """
const done = arguments[arguments.length - 1];
const act = new Function(arguments[0]);
const t0 = performance.now();
act();
const t1 = performance.now();
requestAnimationFrame(() => setTimeout(() => done([t1 - t0, performance.now() - t0]), 0));
"""
ROWS_JS = """
const ths = [...document.querySelectorAll('#neuron-table thead th')];
const i = ths.findIndex(t => t.dataset.key === arguments[0]);
return [...document.querySelectorAll('#neuron-table tbody tr')].map(r => r.cells[i].textContent);
"""


def synthetic_neurons(n: int = N_ROWS, seed: int = 0) -> pd.DataFrame:
    """A neuron table shaped like ``neurons/<model>.parquet`` (and the families stage's columns)."""
    rng = np.random.default_rng(seed)
    d_mlp = n // N_LAYERS
    layer, neuron = np.divmod(np.arange(n), d_mlp)
    corr = rng.beta(2, 3, (n, len(PARTNERS)))
    base = rng.uniform(0.05, 0.35, (n, len(PARTNERS)))
    df = pd.DataFrame({"layer": layer, "neuron": neuron, "max_corr": corr.max(1),
                       "mean_corr": corr.mean(1), "min_corr": corr.min(1),
                       "max_baseline": base.max(1), "mean_baseline": base.mean(1),
                       "min_baseline": base.min(1)})
    df["excess_corr"] = df["mean_corr"] - df["mean_baseline"]
    df["is_universal"] = df["excess_corr"] > 0.5
    for j, p in enumerate(PARTNERS):
        best = rng.integers(0, n, n)
        df[f"{p}_best"] = [f"L{i // d_mlp}.{i % d_mlp}" for i in best]
        df[f"{p}_corr"] = corr[:, j]
        df[f"{p}_baseline"] = base[:, j]
    for c in STATS:
        df[c] = rng.standard_normal(n) * 10.0 ** rng.integers(-6, 4, n)
    df.loc[rng.choice(n, 500, replace=False), "kurt"] = np.nan  # dead neurons
    names = ["position", "unigram:" + HOSTILE, "prev_token", "pos:NOUN", "alphabet"]
    fams = rng.integers(-3, len(names), n)
    df["families"] = [names[k] if k >= 0 else "" for k in fams]
    return df


@pytest.fixture(scope="module")
def big_page(tmp_path_factory):
    df = synthetic_neurons()
    data = browser_data(df, "seed-a", ("seed-a", *PARTNERS), [(0, 0), (24, 3999)])
    path = tmp_path_factory.mktemp("browser-scale") / "browser-seed-a.html"
    path.write_text(browser_page("seed-a", data, n_universal=int(df.is_universal.sum())),
                    encoding="utf-8")
    return df, path


def _timed(driver, js: str) -> float:
    _sync_s, frame_ms = driver.execute_async_script(TIMED_JS, js)
    return frame_ms / 1000


def _dom_rows(driver) -> int:
    return driver.execute_script("return document.querySelectorAll('#neuron-table tbody tr').length")


def _count(driver) -> int:
    text = driver.execute_script("return document.getElementById('count').textContent")
    return int(text.split(" of ")[0].replace(",", ""))


def _scroll_to(driver, where: str) -> None:
    driver.execute_async_script(f"""
const done = arguments[0], v = document.getElementById('viewport');
v.scrollTop = {where};
requestAnimationFrame(() => requestAnimationFrame(() => done()));""")


def _first_painted_ms(driver) -> float:
    from selenium.webdriver.support.ui import WebDriverWait

    js = "const m = performance.getEntriesByName('neuron-rows-painted'); return m.length ? m[0].startTime : null"
    return WebDriverWait(driver, 30).until(lambda d: d.execute_script(js))


def _search_js(term: str) -> str:
    return ("const s = document.getElementById('search'); s.value = " + json.dumps(term) + ";"
            "s.dispatchEvent(new Event('input'));")


def _click_js(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)}).click()"


def _header(key: str) -> str:
    return f'#neuron-table th[data-key="{key}"]'


def test_100k_rows_timings(driver, big_page, tmp_path):
    """First paint <= 1 s, a sort <= 0.5 s, a filter <= 0.3 s (each the best of 3 tries),
    within ``LOAD_SLACK`` on a busy machine; the figures go to the report file."""
    df, path = big_page
    driver.set_script_timeout(30)
    paints = []
    for _ in range(REPEATS):
        driver.get(path.as_uri())
        paints.append(_first_painted_ms(driver) / 1000)
    assert _count(driver) == len(df)
    times: dict[str, list[float]] = {"first_paint": paints}
    for key in ("excess_corr", "kurt", "name", "families"):
        times[f"sort {key}"] = [_timed(driver, _click_js(_header(key))) for _ in range(REPEATS)]
    for term in ("L7.", "<script>", "L1.2", "b:L3.17", "position"):
        times[f"search {term}"] = []
        for _ in range(REPEATS):
            times[f"search {term}"].append(_timed(driver, _search_js(term)))
            _timed(driver, _search_js(""))
    times["universal only"] = []
    for _ in range(REPEATS):
        times["universal only"].append(_timed(driver, _click_js("#universal-only")))
        _timed(driver, _click_js("#universal-only"))
    assert _count(driver) == len(df)
    best = {k: round(min(v), 3) for k, v in times.items()}
    _report({"rows": len(df), "payload_bytes": path.stat().st_size, "best_s": best,
             "all_s": {k: [round(x, 3) for x in v] for k, v in times.items()}}, tmp_path)
    slack = LOAD_SLACK
    assert best["first_paint"] <= FIRST_PAINT_S * slack, best
    assert all(v <= SORT_S * slack for k, v in best.items() if k.startswith("sort")), best
    assert all(v <= FILTER_S * slack for k, v in best.items()
               if k.startswith(("search", "universal"))), best


def test_100k_rows_are_right(driver, big_page):
    df, path = big_page
    driver.set_script_timeout(30)
    driver.get(path.as_uri())
    _first_painted_ms(driver)
    assert _count(driver) == len(df)
    assert 0 < _dom_rows(driver) < MAX_DOM_ROWS

    # default order: excess_corr, largest first; the first row is the maximum
    top, low = df.loc[df.excess_corr.idxmax()], df.loc[df.excess_corr.idxmin()]
    assert driver.execute_script(ROWS_JS, "name")[0] == f"L{top.layer}.{top.neuron}"
    click = _click_js(_header("excess_corr"))
    _timed(driver, click)  # ascending
    assert driver.execute_script(ROWS_JS, "name")[0] == f"L{low.layer}.{low.neuron}"
    _timed(driver, click)  # descending again
    aria = driver.execute_script(f"return document.querySelector({json.dumps(_header('excess_corr'))})"
                                 ".getAttribute('aria-sort')")
    assert aria == "descending"
    assert driver.execute_script(ROWS_JS, "name")[0] == f"L{top.layer}.{top.neuron}"
    shown = [float(v) for v in driver.execute_script(ROWS_JS, "excess_corr")]
    assert shown == sorted(shown, reverse=True) and shown[0] == pytest.approx(top.excess_corr, rel=1e-3)

    # scrolling to the bottom shows the last row, fully; the DOM stays small
    _scroll_to(driver, "v.scrollHeight")
    assert driver.execute_script(ROWS_JS, "name")[-1] == f"L{low.layer}.{low.neuron}"
    assert driver.execute_script("""
const v = document.getElementById('viewport').getBoundingClientRect();
const rows = document.querySelectorAll('#neuron-table tbody tr');
const last = rows[rows.length - 1].getBoundingClientRect();
return last.top >= v.top && last.bottom <= v.bottom + 1;""")
    assert 0 < _dom_rows(driver) < MAX_DOM_ROWS
    # halfway down: the rows shown are the ones at that position of the sorted table
    _scroll_to(driver, "v.scrollHeight / 2")
    middle = driver.execute_script(ROWS_JS, "excess_corr")
    positions = driver.execute_script("return [...document.querySelectorAll('#neuron-table tbody tr')]"
                                      ".map(r => +r.getAttribute('aria-rowindex') - 2)")
    assert 20 < len(middle) < MAX_DOM_ROWS and 40_000 < positions[0] < 60_000
    expected = df.excess_corr.sort_values(ascending=False).to_numpy()[positions]
    np.testing.assert_allclose([float(v) for v in middle], expected, rtol=1e-3)

    # numbers sort numerically with missing values last, in both directions
    kurt = _click_js(_header("kurt"))
    _timed(driver, kurt)
    assert float(driver.execute_script(ROWS_JS, "kurt")[0]) == pytest.approx(df["kurt"].max(), rel=1e-3)
    _scroll_to(driver, "v.scrollHeight")
    assert set(driver.execute_script(ROWS_JS, "kurt")[-20:]) == {""}
    _timed(driver, kurt)
    assert float(driver.execute_script(ROWS_JS, "kurt")[0]) == pytest.approx(df["kurt"].min(), rel=1e-3)
    _scroll_to(driver, "v.scrollHeight")
    assert set(driver.execute_script(ROWS_JS, "kurt")[-20:]) == {""}

    # filters: the count shown is the number of matching rows
    _timed(driver, _search_js("L7."))
    assert _count(driver) == int((df.layer == 7).sum())
    assert all(n.startswith("L7.") for n in driver.execute_script(ROWS_JS, "name"))
    _timed(driver, _search_js("L1.2"))  # a neuron name finds that neuron only
    assert _count(driver) == int(((df.layer == 1) & (df.neuron == 2)).sum()) == 1
    assert driver.execute_script(ROWS_JS, "name") == ["L1.2"]
    partner = df["seed-b_best"].iloc[77]  # a partner name finds the neurons matched to it
    _timed(driver, _search_js("b:" + partner))
    assert _count(driver) == int((df["seed-b_best"] == partner).sum()) > 0
    hits = df[df["seed-b_best"] == partner]
    assert set(driver.execute_script(ROWS_JS, "name")) == {f"L{a}.{b}" for a, b in zip(hits.layer, hits.neuron)}
    _timed(driver, _search_js("<script>"))
    assert _count(driver) == int(df.families.str.contains("<script>", regex=False).sum())
    assert _dom_rows(driver) < MAX_DOM_ROWS
    # other terms match any text column as a substring: here neuron and best-partner names
    term = df["seed-b_best"].iloc[123][1:].lower()  # "L12.345" without the L
    _timed(driver, _search_js(term))
    names = ("L" + df.layer.astype(str) + "." + df.neuron.astype(str)).str.lower()
    hits = pd.concat([names.str.contains(term, regex=False)]
                     + [df[f"{p}_best"].str.lower().str.contains(term, regex=False) for p in PARTNERS],
                     axis=1).any(axis=1)
    assert _count(driver) == int(hits.sum()) > 0
    _timed(driver, _search_js(""))
    _timed(driver, _click_js("#universal-only"))
    assert _count(driver) == int(df.is_universal.sum()) > 0
    assert set(driver.execute_script(ROWS_JS, "is_universal")) == {"yes"}
    _timed(driver, _click_js("#universal-only"))
    assert _count(driver) == len(df)

    # a column shown from the chooser
    driver.execute_script("""[...document.querySelectorAll('#column-chooser label')]
        .find(l => l.textContent.trim() === 'w_in_norm').querySelector('input').click()""")
    assert driver.execute_script(ROWS_JS, "w_in_norm")[0] != ""
    # partner names (shown by default) sort by layer, then index (A to Z first)
    _timed(driver, _click_js(_header("seed-b_best")))
    key = df["seed-b_best"].str.extract(r"L(\d+)\.(\d+)").astype(int)
    first = df["seed-b_best"][(key[0] * 10_000 + key[1]).idxmin()]
    assert driver.execute_script(ROWS_JS, "seed-b_best")[0] == "b:" + first

    # pages of 100 rows instead of one scrolling table
    driver.execute_script("const s = document.getElementById('page-size'); s.value = '100';"
                          "s.dispatchEvent(new Event('change'));")
    order = df.assign(k=key[0] * 10_000 + key[1]).sort_values("k", kind="stable")
    names = ("L" + order.layer.astype(str) + "." + order.neuron.astype(str)).tolist()
    rowcount = "return document.getElementById('neuron-table').getAttribute('aria-rowcount')"
    assert driver.execute_script(rowcount) == "101" and driver.find_element("id", "pager").is_displayed()
    assert driver.execute_script(ROWS_JS, "name")[0] == names[0]
    driver.find_element("id", "next").click()
    assert driver.execute_script(ROWS_JS, "name")[0] == names[100]
    _scroll_to(driver, "v.scrollHeight")
    assert driver.execute_script(ROWS_JS, "name")[-1] == names[199]
    assert driver.find_element("id", "page-info").text == f"page 2 of {len(df) // 100}"
    assert driver.execute_script("return document.querySelectorAll('img[src=\"x\"]').length") == 0
    assert [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"] == []


def test_header_sorts_from_the_keyboard(driver, big_page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    df, path = big_page
    driver.get(path.as_uri())
    _first_painted_ms(driver)
    th = driver.find_element(By.CSS_SELECTOR, '#neuron-table th[data-key="mean_corr"]')
    th.send_keys(Keys.ENTER)
    th = driver.find_element(By.CSS_SELECTOR, '#neuron-table th[data-key="mean_corr"]')
    assert th.get_attribute("aria-sort") == "descending"
    assert driver.switch_to.active_element == th  # focus stays on the header
    assert float(driver.execute_script(ROWS_JS, "mean_corr")[0]) == pytest.approx(df.mean_corr.max(), rel=1e-3)
    th.send_keys(Keys.SPACE)
    th = driver.find_element(By.CSS_SELECTOR, '#neuron-table th[data-key="mean_corr"]')
    assert th.get_attribute("aria-sort") == "ascending"
    assert float(driver.execute_script(ROWS_JS, "mean_corr")[0]) == pytest.approx(df.mean_corr.min(), rel=1e-3)


def _report(timings: dict, tmp_path: Path) -> None:
    text = json.dumps(timings, indent=1)
    (tmp_path / "browser_timings.json").write_text(text)
    out = os.environ.get("UN_SCREENSHOT_DIR")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "browser_timings.json").write_text(text)
    print(text)
