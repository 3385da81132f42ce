"""Escaping of text, attributes and embedded JSON; small HTML and SVG helpers."""

from __future__ import annotations

import json
import math
import re

import pytest
from report_fixtures import HOSTILE, XSS_IMG, XSS_SCRIPT

from universal_neurons.report import html
from universal_neurons.report.browser import round_sig_array
from universal_neurons.report.neuron_page import token_code, token_span
from universal_neurons.report.svg import hbar_svg, histogram_svg


@pytest.mark.parametrize("s", HOSTILE)
def test_esc_leaves_no_markup(s):
    out = html.esc(s)
    assert "<" not in out and ">" not in out and '"' not in out and "'" not in out
    assert html.esc(None) == ""


def test_esc_oracle():
    assert html.esc(XSS_SCRIPT) == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert html.esc(XSS_IMG) == "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;"
    assert html.esc("a&amp;b") == "a&amp;amp;b"  # escaped once more, shown literally


def test_json_for_script_cannot_break_out():
    obj = {"tokens": HOSTILE, XSS_SCRIPT: [XSS_IMG, "<!--", "-->", "]]>"]}
    text = html.json_for_script(obj)
    for bad in ("<", ">", "&", "\u2028", "\u2029"):
        assert bad not in text
    assert "\\u003c/script\\u003e" in text
    assert json.loads(text) == obj  # the escapes are plain JSON string escapes


def test_json_script_element_and_non_finite():
    el = html.json_script({"x": [1.5, math.nan, math.inf, -math.inf], "s": "</script>"}, "d")
    m = re.fullmatch(r'<script type="application/json" id="d">(.*)</script>', el, re.S)
    assert m is not None and "</script" not in m.group(1).lower()
    assert json.loads(m.group(1)) == {"x": [1.5, None, None, None], "s": "</script>"}


def test_json_for_script_numpy_values():
    np = pytest.importorskip("numpy")
    assert json.loads(html.json_for_script({"a": np.float32(0.5), "b": np.int64(3),
                                            "c": np.float64("nan")})) == {"a": 0.5, "b": 3, "c": None}


def test_table_escapes_cells_and_headers_but_not_raw_columns():
    out = html.table([(XSS_SCRIPT, "<b>ok</b>")], [XSS_IMG, "raw"], raw_columns=(1,))
    assert XSS_SCRIPT not in out and "<img" not in out
    assert "<td><b>ok</b></td>" in out


def test_fmt_numbers():
    assert html.fmt(0.123456) == "0.1235"
    assert html.fmt(1.5e-5) == "1.500e-05"
    assert html.fmt(math.nan) == ""
    assert html.fmt(True) == "yes"
    assert html.fmt(12345) == "12,345"
    assert html.fmt(XSS_SCRIPT) == html.esc(XSS_SCRIPT)

def test_round_sig_array():
    vals = [0.123456, 123456.0, -1.5e-7, 0.0, math.nan, math.inf, 1 / 3]
    assert round_sig_array(vals) == [0.1235, 123500.0, -1.5e-07, 0.0, None, None, 0.3333]


def test_section_says_not_computed():
    out = html.section("entropy", "Entropy", None)
    assert "not computed" in out and 'id="entropy"' in out
    assert "not computed" not in html.section("x", "X", "<p>here</p>")


def test_page_is_self_contained_and_escapes_title():
    out = html.page(XSS_SCRIPT, "<p>b</p>", nav=[("a.html", XSS_IMG)], scripts=["browser.js"])
    assert XSS_SCRIPT not in out and "<img" not in out
    assert "<style>" in out and "<script>" in out
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", out)  # nothing remote


def test_inline_script_guard():
    with pytest.raises(ValueError):
        html._script_safe("var s = '</script>';")


def test_tokens_are_escaped_and_shaded():
    span = token_span(XSS_IMG, 1.0, 2.0, focus=True)
    assert "<img" not in span and 'style="--a:0.50"' in span and "max" in span
    assert 'class="tok neg"' in token_span("x", -0.5, 1.0)
    assert "--a" not in token_span(XSS_SCRIPT, None, 1.0) and "<script" not in token_span(XSS_SCRIPT, None, 1.0)
    assert token_span("x", 5.0, 1.0).count("--a:1.00") == 1  # clipped at full opacity
    assert "<script" not in token_code(XSS_SCRIPT) and "\u23ce" in token_code("\n")


def test_histogram_svg():
    svg = histogram_svg([0, 1, 2, 3], [1, 0, 4], label=XSS_SCRIPT)
    path = re.search(r'<path d="([^"]*)"', svg).group(1)
    assert path.count("M") == 2 and XSS_SCRIPT not in svg  # the empty bin draws nothing
    assert "5 values in 3 bins" in svg
    with pytest.raises(ValueError):
        histogram_svg([0, 1], [1, 2])


def test_hbar_svg_marks_reference():
    svg = hbar_svg([("a", 4.0, 4.16), ("b", 1.0, None)])
    assert svg.count('class="ref"') == 1 and svg.count("<rect") == 2
