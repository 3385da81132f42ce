"""The neuron pages' examples: every window token shaded with its value, one example per
window, groups for top / quantile band / most negative examples."""

from __future__ import annotations

import html
import math
import re

import pytest
from report_fixtures import (
    EX_AFTER,
    EX_BEFORE,
    EXAMPLES,
    MODELS,
    N_CTX,
    make_fake_run,
    window_acts,
)

from universal_neurons.constants import safe_name
from universal_neurons.report.build import ReportConfig, build_report
from universal_neurons.report.examples import Example, examples_html
from universal_neurons.report.html import fmt

EXAMPLE = re.compile(r'<div class=example>(.*?)</div>', re.S)
SHADED = re.compile(r'<([ib])(?: class=([a-tA-T]))? title=([^ >]*)>')


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    run = make_fake_run(tmp_path_factory.mktemp("run") / "run")
    build_report(run, config=ReportConfig(top_n=3, max_pages=0))
    return {m: sorted((run / "report" / "neurons" / safe_name(m)).glob("*.html")) for m in MODELS}


def test_every_window_token_is_shaded_with_its_value(pages):
    """Model a has a version-2 stats file: each example shows its recorded window (cut at
    the sequence start), and every token carries the recorded activation as its title and
    |value| / scale as its opacity (scale: the largest top value, 2.0; for negative values
    of the negative examples the most negative example's, 0.2)."""
    assert pages[MODELS[0]]
    for page in pages[MODELS[0]]:
        text = page.read_text(encoding="utf-8")
        blocks = EXAMPLE.findall(text)
        assert len(blocks) == len(EXAMPLES)
        for block, (_, seq, pos, value) in zip(blocks, EXAMPLES):
            lo, hi = max(0, pos - EX_BEFORE), min(N_CTX, pos + EX_AFTER + 1)
            want = window_acts(value, pos)[lo - (pos - EX_BEFORE):hi - (pos - EX_BEFORE)]
            spans = SHADED.findall(block)
            assert len(spans) == hi - lo == len(want)  # every shown token shaded
            for (_, letter, title), v in zip(spans, want):
                scale = 0.2 if v < 0 else 2.0
                assert float(html.unescape(title)) == float(fmt(float(v), 3))
                # opacity in steps of 1/20, class a..t (A..T negative; none at 0): off by at
                # most half a step
                level = ord(letter.lower()) - ord("a") + 1 if letter else 0
                assert math.isclose(level / 20, min(abs(v) / scale, 1), abs_tol=0.025 + 1e-9)
                assert not letter or letter.isupper() == (v < 0)
            assert [tag for tag, _, _ in spans].count("b") == 1  # the example's own token
            assert f"seq {seq}, pos {pos}:" in block


def test_groups_in_order_with_band_range(pages):
    text = pages[MODELS[0]][0].read_text(encoding="utf-8")
    heads = re.findall(r"<h3>([^<]*)</h3>", text.split('<section id="examples">')[1].split("</section>")[0])
    assert heads == ["Top activations",
                     html.escape("Quantile band 50\u2013100 % of positive activations (0.5 to 1)"),
                     "Most negative activations"]


def test_legacy_file_one_example_per_window(pages):
    """Model b has only top-k (value, seq, pos): no two shown windows of a sequence overlap."""
    for page in pages[MODELS[1]]:
        shown = re.findall(r"seq (\d+), pos (\d+):", page.read_text(encoding="utf-8"))
        spots = [(int(s), int(p)) for s, p in shown]
        assert spots
        for i, (s, p) in enumerate(spots):
            assert all(s != s2 or abs(p - p2) > 24 + 6 for s2, p2 in spots[i + 1:])


def test_examples_html_not_computed_and_empty():
    assert examples_html(None) is None
    assert "no examples recorded" in (examples_html([]) or "")
    one = examples_html([Example(["a", "<b>"], [0.5, 1.0], 1, 1.0, 0, 1)])
    assert one is not None and "<h3>" not in one and "&lt;b&gt;" in one
