"""The front page's universal share carries the interval and significance correlate recorded."""

from __future__ import annotations

from universal_neurons.report.index_page import share_text


def test_share_alone_when_nothing_more_was_recorded():
    assert share_text(4.1612, None) == "4.16%"
    assert share_text(4.1612, {"n_universal": 3, "fraction": 0.0416}) == "4.16%"


def test_interval_and_significant_count_from_the_manifest():
    recorded = {"fraction": 0.04, "fraction_ci_low": 0.0312, "fraction_ci_high": 0.0488,
                "n_significant": 1234}
    text = share_text(4.0, recorded)
    assert text == "4.00% (95% CI 3.12\u20134.88%); 1,234 with q &lt; 0.05"
