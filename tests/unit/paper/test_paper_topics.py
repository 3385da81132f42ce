"""Topic-neuron tables (analysis.paper_topics) against pandas recomputations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from universal_neurons.analysis.paper_summaries import summarize
from universal_neurons.analysis.paper_topics import (
    token_means,
    top_token_table,
    topic_candidates,
)


def _vr(rng: np.random.Generator, n: int = 30) -> pd.DataFrame:
    vr = pd.DataFrame({"layer": np.repeat([0, 1], n // 2), "neuron": np.tile(np.arange(n // 2), 2)})
    for c in ("current/topic:a_b_c", "current/topic:d_e_f", "current/unigram:x", "prev/is_year"):
        vr[c] = rng.uniform(0, 0.2, n)
    return vr


def test_candidates_follow_the_family_rule_or_say_so():
    rng = np.random.default_rng(0)
    vr = _vr(rng)
    table = vr[["layer", "neuron"]].assign(is_universal=rng.random(len(vr)) < 0.3,
                                           excess_corr=rng.normal(size=len(vr)))
    got = topic_candidates(vr, table, cut=0.1, top=4)
    cols = [c for c in vr.columns if "/" in c]
    m = vr[cols].to_numpy()
    topic = m[:, :2].max(1)
    rule = (m.argmax(1) < 2) & (topic > 0.1)
    want = vr.assign(vr=topic)[rule].sort_values("vr", ascending=False).head(4)
    assert got[["layer", "neuron"]].values.tolist() == want[["layer", "neuron"]].values.tolist()
    np.testing.assert_allclose(got["vr"], want["vr"])
    assert got["is_topic"].all() and got["selection"].iloc[0].startswith("topic neurons")
    merged = got.merge(table, on=["layer", "neuron"], suffixes=("", "_t"))
    assert (merged["excess_corr"] == merged["excess_corr_t"]).all()
    none = topic_candidates(vr, None, cut=0.5, top=3)  # no topic neuron: the highest VRs
    assert not none["is_topic"].any() and none["selection"].iloc[0].startswith("highest topic VR")
    np.testing.assert_allclose(none["vr"], np.sort(topic)[::-1][:3])
    assert none["is_universal"].isna().all()
    assert topic_candidates(vr.drop(columns=cols[:2]), None, 0.1, 3).empty


def test_token_means_and_top_tokens():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 12, 400)
    acts = rng.normal(size=(400, 2)) + ids[:, None] * np.array([0.1, -0.1])
    count, mean = token_means(acts, ids, 14)
    g = pd.DataFrame({"t": ids, "a": acts[:, 0], "b": acts[:, 1]}).groupby("t")
    np.testing.assert_array_equal(count[:12], g.size().to_numpy())
    assert (count[12:] == 0).all()
    np.testing.assert_allclose(mean[:12], g[["a", "b"]].mean().to_numpy(), rtol=1e-12)
    assert np.isnan(mean[12:]).all()
    strings = [f"t{i}" for i in range(14)]
    cand = pd.DataFrame({"neuron_name": ["L0.1", "L0.2"], "feature": ["topic:x", "topic:y"]})
    out = top_token_table(cand, acts, ids, strings, k=3, min_count=33, exclude=[11])
    for j, name in enumerate(cand["neuron_name"]):
        rows = out[out["neuron_name"] == name]
        ok = [t for t in range(12) if count[t] >= 33 and t != 11]
        best = sorted(ok, key=lambda t: -mean[t, j])[:3]
        assert rows["token_id"].tolist() == best and rows["rank"].tolist() == [0, 1, 2]
        peak = mean[best, j].max()
        want = mean[best, j] / peak if peak > 0 else np.full(3, np.nan)
        np.testing.assert_allclose(rows["mean_norm"], want)
    empty = top_token_table(cand, acts, ids, strings, k=3, min_count=10_000)
    assert empty["rank"].tolist() == [-1, -1] and empty["mean"].isna().all()


def test_summary_names_the_best_topic_neurons():
    df = pd.DataFrame({"neuron_name": ["L0.1"] * 2 + ["L1.2"], "feature": ["topic:a", "topic:a",
                                                                          "topic:b"],
                       "vr": [0.3, 0.3, 0.2], "is_topic": [True, True, False],
                       "rank": [0, 1, 0], "token": [" god", " lord", " def"]})
    value, text = summarize("topic_neurons", df)
    assert value == pytest.approx(0.3)
    assert text.startswith("1 topic neurons listed of 2")
    assert "L0.1 topic:a 0.300 (' god', ' lord')" in text and "L1.2 topic:b 0.200" in text
