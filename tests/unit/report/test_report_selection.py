"""Page selection over all models of a report (``report.selection``), partner names and
labels (``report.partners``), navigation and the glossary."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from universal_neurons.report.browser import browser_columns
from universal_neurons.report.glossary import GLOSSARY, definition, glossary_page, title
from universal_neurons.report.navigation import build_navigation, navigation_html
from universal_neurons.report.partners import (
    PARTNER_NAME,
    add_partner_columns,
    best_partners,
    model_labels,
    partner_name,
)
from universal_neurons.report.selection import family_representatives, select_report_pages


def frame(excess, universal=None, best=None, d_mlp=4) -> pd.DataFrame:
    n = len(excess)
    df = pd.DataFrame({"layer": [i // d_mlp for i in range(n)], "neuron": [i % d_mlp for i in range(n)]})
    if excess is not None:
        df["excess_corr"] = excess
    if universal is not None:
        df["is_universal"] = universal
    for other, names in (best or {}).items():
        df[f"{other}_best"] = names
    return df


def test_model_labels():
    assert model_labels([f"tiny-gpt2-{s}" for s in "abcde"]) == {f"tiny-gpt2-{s}": s for s in "abcde"}
    assert model_labels(["stanford-gpt2-small-a", "stanford-gpt2-small-b"])["stanford-gpt2-small-b"] == "b"
    # no shared prefix up to a separator, or a repeated label: the full names
    assert model_labels(["toy-a", "org/toy-b"]) == {"toy-a": "toy-a", "org/toy-b": "org/toy-b"}
    assert model_labels(["m-x1", "m-x10"]) == {"m-x1": "x1", "m-x10": "x10"}
    assert model_labels(["pythia-160m"]) == {"pythia-160m": "pythia-160m"}
    assert partner_name("b", 3, 152) == "b:L3.152"
    m = PARTNER_NAME.fullmatch("org/toy-b:L3.152")
    assert m is not None and (m["label"], m["layer"], m["neuron"]) == ("org/toy-b", "3", "152")


def test_selection_order_over_models_and_budget():
    # model a: 8 neurons, two universal; its best partners in b and c
    a = frame([0.1, 0.9, 0.6, 0.2, 0.8, 0.3, np.nan, 0.05],
              [False, True, False, False, True, False, False, False],
              best={"b": [f"L{i % 2}.{(i + 1) % 4}" for i in range(8)],
                    "c": [f"L1.{i % 4}" for i in range(8)]})
    b, c = frame([None] * 8).drop(columns="excess_corr"), frame([None] * 8).drop(columns="excess_corr")
    frames = {"a": a, "b": b, "c": c}
    partners = {m: best_partners(df, m, list(frames)) for m, df in frames.items()}
    assert partners["a"][(0, 1)] == [("b", 1, 2), ("c", 1, 1)]
    got = select_report_pages(frames, ["a", "b", "c"], top_n=1, max_pages=11,
                              featured={"b": [(0, 3), (9, 9)]}, partners=partners)
    assert sum(len(v) for v in got.values()) == 11
    # always: a's universal (0.9, 0.8), their partners, b's featured ((9, 9) does not exist);
    # top_n=1 of a is taken already; then a by excess, each followed by its partners:
    # (0, 2) with c:L1.2 (b:L0.3 has a page), (1, 1) (partners have pages), (0, 3): 11 pages
    assert got["a"] == [(0, 1), (1, 0), (0, 2), (1, 1), (0, 3)]
    assert got["b"] == [(1, 2), (0, 1), (0, 3)]
    assert got["c"] == [(1, 1), (1, 0), (1, 2)]
    # the budget stops the fill, never the groups that always get pages
    tight = select_report_pages(frames, ["a", "b", "c"], top_n=0, max_pages=0,
                                featured={"b": [(0, 3)]}, partners=partners)
    assert tight == {"a": [(0, 1), (1, 0)], "b": [(1, 2), (0, 1), (0, 3)], "c": [(1, 1), (1, 0)]}
    everything = select_report_pages(frames, ["a", "b", "c"], top_n=0, max_pages=10_000,
                                     partners=partners)
    assert len(everything["a"]) == 8  # b and c only get the pages of a's partners
    assert set(everything["b"]) == {(int(s[1]), int(s[3])) for s in a["b_best"]}


def test_named_neurons_and_missing_rank():
    a = frame([0.5, 0.4, 0.3, 0.2])
    got = select_report_pages({"a": a, "b": frame([0.1] * 4)}, ["a", "b"], top_n=0, max_pages=0,
                              neurons=("L0.3", "b:L0.2", "a:L7.7"))
    assert got == {"a": [(0, 3)], "b": [(0, 3), (0, 2)]}
    no_rank = frame([0.1] * 4).drop(columns="excess_corr")
    assert select_report_pages({"a": no_rank}, ["a"], top_n=5, max_pages=100) == {"a": []}


def test_family_representatives():
    df = frame([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    df["families"] = ["x;y", "x", "x", "x", "", "y"]
    df["family_scores"] = [json.dumps({"x": 0.1, "y": 0.9}), json.dumps({"x": 0.5}),
                           json.dumps({"x": 0.5}), json.dumps({"x": 0.7}), "{}", "{}"]
    # x: 0.7 (L0.3), then the 0.5 tie broken by excess (L0.1 before L0.2); y: 0.9, then L1.1
    assert family_representatives(df, k=3) == [(0, 3), (0, 1), (0, 2), (0, 0), (1, 1)]
    assert family_representatives(df.drop(columns="families")) == []


def test_partner_columns_from_correlation_files(tmp_path):
    from safetensors.numpy import save_file

    (tmp_path / "correlations").mkdir()
    arg = np.array([5, 0, 7, -1], dtype=np.int64)  # flat partner indices, d_mlp 4; -1 dead
    best = np.array([0.5, 0.25, 0.75, np.nan])
    save_file({"argmax": arg, "max": best, "baseline_max": best / 2},
              str(tmp_path / "correlations" / "b__a.safetensors"),
              metadata={"d_mlp": "2", "partner_d_mlp": "4"})
    b = pd.DataFrame({"layer": [0, 0, 1, 1], "neuron": [0, 1, 0, 1], "x": [1, 2, 3, 4]})
    a = pd.DataFrame({"layer": [0], "neuron": [0], "b_best": ["L0.1"]})
    out = add_partner_columns({"a": a, "b": b, "c": None}, tmp_path, ["a", "b", "c"])
    assert out["a"] is a and out["c"] is None and "a_best" not in b.columns  # nothing in place
    assert out["b"]["a_best"].tolist()[:3] == ["L1.1", "L0.0", "L1.3"] and out["b"]["a_best"].isna()[3]
    np.testing.assert_allclose(out["b"]["a_corr"], best)
    np.testing.assert_allclose(out["b"]["a_baseline"], best / 2)


def test_navigation_prev_next_and_family_neighbours():
    df = frame([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    df["families"] = ["x", "x", "", "x", "<b>", "x"]
    df["family_scores"] = [json.dumps({"x": s}) for s in (0.1, 0.2, 0, 0.9, 0, 0.3)]
    pages = {"m": [(1, 1), (0, 0), (0, 3), (0, 1)]}
    nav = build_navigation({"m": df}, pages)
    assert nav.order["m"] == [(0, 0), (0, 1), (0, 3), (1, 1)]
    assert nav.prev_next("m", (0, 0)) == (None, (0, 1))
    assert nav.prev_next("m", (0, 3)) == ((0, 1), (1, 1))
    assert nav.prev_next("m", (1, 0)) == (None, None)  # no page
    assert nav.families["m"]["x"] == [(0, 3), (1, 1), (0, 1), (0, 0)]  # by family score
    html = navigation_html(nav, "m", (0, 1), ["x"], browser_href="../../browser-m.html",
                           compare_href="../../compare/m/L0.1.html")
    assert 'href="L0.0.html"' in html and 'href="L0.3.html"' in html
    assert html.index("L0.3.html") < html.index("L1.1.html")
    assert "browser-m.html#family=x" in html and "all 4 in the browser" in html
    assert 'href="../../compare/m/L0.1.html"' in html
    html = navigation_html(nav, "m", (0, 0), ["<b>"], browser_href="b.html", compare_href=None)
    assert "<b>" not in html and "&lt;b&gt;" in html and "%3Cb%3E" in html


def test_glossary_defines_every_statistic_shown():
    from report_fixtures import MODELS, neuron_frame

    df = neuron_frame(MODELS[0], seed=0)
    for col in browser_columns(df, MODELS[0], MODELS):
        assert definition(col["key"]) is not None, col["key"]
        assert col["title"] != col["key"]
    assert definition("nonsense") is None and title("nonsense") == "nonsense"
    assert "activation frequency" in title("sparsity")
    page = glossary_page()
    for key in GLOSSARY:
        assert f'id="{key}"' in page


@pytest.mark.parametrize("spec", ["L3.17", "b:L3.17"])
def test_partner_name_pattern_reads_names(spec):
    m = PARTNER_NAME.fullmatch(spec)
    assert m is not None and (int(m["layer"]), int(m["neuron"])) == (3, 17)
