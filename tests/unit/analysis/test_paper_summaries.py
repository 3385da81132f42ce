"""Summaries of the paper-results tables, re-derived here from synthetic tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from universal_neurons.analysis.paper_summaries import attention_panel, summarize


def test_depth_specialisation_share_of_own_layer():
    rng = np.random.default_rng(0)
    rows = []
    for group in ("all", "universal"):
        for partner in ("b", "all"):
            for a in range(3):
                for b in range(3):
                    rows.append((group, partner, a, b, int(rng.integers(0, 50))))
    df = pd.DataFrame(rows, columns=["group", "partner", "layer", "partner_layer", "count"])
    same = {g: sum(c for gg, p, a, b, c in rows if gg == g and p == "all" and a == b)
            / sum(c for gg, p, a, b, c in rows if gg == g and p == "all") for g in ("all", "universal")}
    value, text = summarize("depth_specialisation", df)
    assert value == pytest.approx(100 * same["all"], abs=1e-4)
    assert f"({100 * same['universal']:.1f}% for universal neurons)" in text


def test_sources_conditional_and_panel():
    rng = np.random.default_rng(1)
    src = pd.DataFrame({"source": np.repeat(["kjv", "docs"], 5), "neuron_name": [f"L0.{i}" for i in range(10)],
                        "vr": rng.uniform(size=10)})
    value, text = summarize("source_neurons", src)
    best = {s: max((v, n) for ss, n, v in zip(src.source, src.neuron_name, src.vr) if ss == s)
            for s in ("kjv", "docs")}
    assert value == pytest.approx(max(v for v, _ in best.values()), abs=1e-6)
    for s, (v, n) in best.items():
        assert f"{s} {n} {v:.2f}" in text
    cond = pd.DataFrame({"diff": [0.5, -0.1, 1.2]})
    assert summarize("prediction_conditional", cond)[0] == 2
    rho = np.array([-0.6, 0.1, -0.2])
    text = attention_panel(pd.DataFrame({"spearman_bos_norm": rho}))
    assert "from -0.60 to 0.10 (mean -0.23) over 3 pairs" in text


def test_other_layouts_raise_key_error():
    with pytest.raises(KeyError):
        summarize("depth_specialisation", pd.DataFrame({"layer": [0]}))
    with pytest.raises(KeyError):
        summarize("no_such_result", pd.DataFrame({"x": [1]}))
