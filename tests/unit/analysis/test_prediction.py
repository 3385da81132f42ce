"""Prediction / suppression / partition neurons on constructed unembeddings."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from universal_neurons.analysis.prediction import (
    PredictionThresholds,
    classify,
    percentile_curves,
    token_sets,
    vocab_moments,
)
from universal_neurons.report.plots_families import plot_prediction_curves

D_MODEL, VOCAB = 256, 500
PROMOTED, SUPPRESSED = [7, 8, 9], [11, 12, 13]


@pytest.fixture(scope="module")
def weights():
    """W_U with random columns plus a two-way split direction; neurons 0..3 of layer 0 are
    prediction (writes toward tokens 7-9), suppression (away from 11-13), partition (along
    the split) and random; layer 1 is random."""
    g = torch.Generator().manual_seed(0)
    W_U = torch.randn(D_MODEL, VOCAB, generator=g, dtype=torch.float64)
    split = torch.where(torch.arange(VOCAB) % 2 == 0, 1.0, -1.0).double()
    W_U[0] = 0.0
    W_U[0] += 3.0 * split * W_U[1:].norm(dim=0) / np.sqrt(D_MODEL)  # e0 splits the vocab
    W_U -= W_U.mean(1, keepdim=True)  # center_unembed
    hat = W_U / W_U.norm(dim=0)
    W_out = torch.randn(2, 4, D_MODEL, generator=g, dtype=torch.float64)
    W_out[0, 0] = hat[:, PROMOTED].sum(1)
    W_out[0, 1] = -hat[:, SUPPRESSED].sum(1)
    W_out[0, 2] = torch.nn.functional.one_hot(torch.tensor(0), D_MODEL).double()
    strings = [f"t{i}" for i in range(VOCAB)]
    return SimpleNamespace(W_U=W_U.float(), W_out=W_out.float()), strings


def test_moments_match_scipy(weights):
    pw, _ = weights
    df = vocab_moments(pw)
    assert list(df[["layer", "neuron"]].itertuples(index=False, name=None))[:5] == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    W_U = pw.W_U.double()
    for layer, neuron in [(0, 0), (0, 2), (1, 3)]:
        w = pw.W_out[layer, neuron].double()
        cos = ((w @ W_U) / (w.norm() * W_U.norm(dim=0))).numpy()
        row = df[(df.layer == layer) & (df.neuron == neuron)].iloc[0]
        assert row.vocab_mean == pytest.approx(cos.mean(), abs=1e-6)
        assert row.vocab_var == pytest.approx(cos.var(), rel=1e-5)
        assert row.vocab_skew == pytest.approx(stats.skew(cos), rel=1e-4, abs=1e-5)
        assert row.vocab_kurt == pytest.approx(stats.kurtosis(cos, fisher=False), rel=1e-4)


def test_labels_on_constructed_weights(weights):
    pw, _ = weights
    df = vocab_moments(pw)
    labels = classify(df).set_index(["layer", "neuron"])["prediction_class"]
    assert labels[(0, 0)] == "prediction"
    assert labels[(0, 1)] == "suppression"
    assert labels[(0, 2)] == "partition"
    assert (labels.drop([(0, 0), (0, 1), (0, 2)]) == "").all()
    # a stricter kurtosis cut drops them
    strict = classify(df, PredictionThresholds(kurtosis=1e6)).set_index(["layer", "neuron"])
    assert strict.loc[(0, 0), "prediction_class"] == ""
    with pytest.raises(ValueError):
        PredictionThresholds(kurtosis=2.0)


def test_token_sets(weights):
    pw, strings = weights
    lab = classify(vocab_moments(pw))
    ts = token_sets(pw, lab, strings, k=3)
    promoted = ts[(ts.neuron == 0) & (ts.layer == 0)]
    assert set(promoted.direction) == {"promotes"}
    assert sorted(promoted.token_id) == PROMOTED
    assert set(promoted.token) == {f"t{i}" for i in PROMOTED}
    suppressed = ts[(ts.neuron == 1) & (ts.layer == 0)]
    assert set(suppressed.direction) == {"suppresses"} and sorted(suppressed.token_id) == SUPPRESSED
    part = ts[(ts.neuron == 2) & (ts.layer == 0)]
    assert set(part.direction) == {"promotes", "suppresses"}
    assert (part[part.direction == "promotes"].token_id % 2 == 0).all()  # one side of the split
    assert (part[part.direction == "suppresses"].token_id % 2 == 1).all()


def test_percentile_curves_and_plot(tmp_path):
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"layer": np.repeat([0, 1, 2], 50), "neuron": np.tile(np.arange(50), 3),
                       "vocab_kurt": rng.lognormal(1.2, 0.5, 150), "vocab_skew": rng.normal(0, 1, 150)})
    c = percentile_curves(df, "vocab_kurt")
    for layer in range(3):
        vals = df[df.layer == layer].vocab_kurt.to_numpy()
        assert c.loc[layer, "p50"] == pytest.approx(np.quantile(vals, 0.5))
        assert c.loc[layer, "p95"] == pytest.approx(np.quantile(vals, 0.95))
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots" / "prediction_curves.png"
    plot_prediction_curves({"a": df, "b": df.assign(vocab_kurt=df.vocab_kurt * 2)}, out)
    assert out.read_bytes()[:4] == b"\x89PNG"
