"""Family assignment rules, the neuron-table merge and the families stage on a small run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from universal_neurons.analysis.explain import explain_table
from universal_neurons.analysis.families import (
    FamilyThresholds,
    assign_families,
    family_counts,
    merge_into_neuron_table,
    neuron_families,
    parse_families,
)
from universal_neurons.analysis.features import build_vocab_features
from universal_neurons.engine.token_table import TokenTableAccumulator, iter_array_batches
from universal_neurons.stages.families import FamiliesConfig, run_families

VOCAB = ["<eos>", " the", "the", " The", " cat", " dog", "dog", " sat", " on", " mat", ".",
         " day", " top", " ran"]


def _vr_frame() -> pd.DataFrame:
    """Hand-made explanation table: 6 neurons of layer 0, 2 of layer 1."""
    n = 8
    df = pd.DataFrame({"layer": [0] * 6 + [1] * 2, "neuron": [0, 1, 2, 3, 4, 5, 0, 1],
                       "fire_rate": 0.5, "position_mi": 0.0})
    cols = {c: np.zeros(n) for c in ("current/unigram:the", "current/alpha:c", "current/alpha:d",
                                     "current/is_year", "prev/is_month", "prev/unigram:the",
                                     "sequence/pos:NOUN", "sequence/ent:PERSON",
                                     "sequence/ctx:in_quotes", "sequence/position:0-31")}
    df = pd.concat([df, pd.DataFrame(cols)], axis=1)
    df.loc[0, "current/unigram:the"] = 0.9  # unigram (and its alpha:t would be a tie)
    df.loc[1, "prev/is_month"] = 0.7  # previous token
    df.loc[2, "current/alpha:c"] = 0.5  # the best "c" neuron -> alphabet
    df.loc[3, "current/alpha:c"] = 0.45  # second best "c": not alphabet
    df.loc[3, "current/alpha:d"] = 0.3  # best "d" but under 0.37
    df.loc[4, "sequence/pos:NOUN"] = 0.4  # syntax
    df.loc[4, "sequence/ent:PERSON"] = 0.35  # entity
    df.loc[5, "current/is_year"] = 0.6  # token property
    df.loc[6, "position_mi"] = 0.5  # position: universal, kurtosis < 2
    df.loc[7, "position_mi"] = 1.0  # position, but kurtosis too high (see neuron table)
    df.loc[7, "sequence/ctx:in_quotes"] = 0.31  # context
    return df


def _table() -> pd.DataFrame:
    return pd.DataFrame({"layer": [0] * 6 + [1] * 2, "neuron": [0, 1, 2, 3, 4, 5, 0, 1],
                         "kurt": [3.5, 3, 3, 3, 3, 3, 1.8, 8.0],
                         "is_universal": [True, True, False, False, True, False, True, False]})


def test_rules():
    fam = assign_families(_vr_frame(), _table()).set_index(["layer", "neuron"])
    got = {k: parse_families(v) for k, v in fam["families"].items()}
    assert got == {(0, 0): ["unigram"], (0, 1): ["previous_token"], (0, 2): ["alphabet"],
                   (0, 3): [], (0, 4): ["syntax", "entity"], (0, 5): ["token"],
                   (1, 0): ["position"], (1, 1): ["context"]}
    scores = json.loads(fam.loc[(0, 4), "family_scores"])
    assert scores == {"syntax": pytest.approx(0.4), "entity": pytest.approx(0.35)}
    assert json.loads(fam.loc[(0, 2), "family_features"]) == {"alphabet": "alpha:c"}
    # thresholds are parameters
    loose = assign_families(_vr_frame(), _table(), FamilyThresholds(alphabet=0.2, syntax=0.5))
    loose = loose.set_index(["layer", "neuron"])["families"]
    assert loose[(0, 3)] == "alphabet" and loose[(0, 4)] == "entity"
    # without kurtosis the second position neuron passes too
    nokurt = assign_families(_vr_frame(), None).set_index(["layer", "neuron"])["families"]
    assert parse_families(nokurt[(1, 1)]) == ["position", "context"]


def test_position_family_is_the_papers_selection():
    """The paper (position_neurons.ipynb): ``neuron_df.query('kurt < 2 and
    excess_correlation > 0.5')``, ranked by the positional mutual information."""
    rng = np.random.default_rng(3)
    n = 200
    table = pd.DataFrame({"layer": np.repeat([0, 1], n // 2), "neuron": np.tile(np.arange(n // 2), 2),
                          "kurt": rng.uniform(1.2, 6.0, n),
                          "excess_corr": rng.uniform(0, 1, n)})
    table["is_universal"] = table["excess_corr"] > 0.5
    vr = table[["layer", "neuron"]].assign(position_mi=rng.uniform(1e-4, 0.3, n),
                                           fire_rate=rng.uniform(0.05, 0.95, n))
    fam = assign_families(vr, table)
    got = fam[fam["families"].str.contains("position")]
    want = table.query("kurt < 2 and excess_corr > 0.5").merge(vr)
    assert set(zip(got["layer"], got["neuron"])) == set(zip(want["layer"], want["neuron"]))
    assert len(want) > 5
    scores = got["family_scores"].map(lambda j: json.loads(j)["position"]).to_numpy()
    np.testing.assert_allclose(np.sort(scores), np.sort(want["position_mi"].to_numpy()), atol=1e-6)
    # the optional cuts: in nats, and the information ratio with H in nats
    cut = assign_families(vr, table, FamilyThresholds(position_min_mi=0.1))
    assert cut["families"].str.contains("position").sum() == (want["position_mi"] > 0.1).sum()
    h = -(want["fire_rate"] * np.log(want["fire_rate"])
          + (1 - want["fire_rate"]) * np.log(1 - want["fire_rate"]))
    ratio = assign_families(vr, table, FamilyThresholds(position_information=0.1))
    assert ratio["families"].str.contains("position").sum() == (want["position_mi"] / h >= 0.1).sum()
    anyone = assign_families(vr, table, FamilyThresholds(position_universal_only=False))
    assert anyone["families"].str.contains("position").sum() == (table["kurt"] < 2).sum()


def test_unigram_neuron_end_to_end():
    """A synthetic neuron that fires exactly on one token is found and labelled unigram."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, len(VOCAB), size=(10, 20))
    tokens[tokens == VOCAB.index("dog")] = VOCAB.index(" cat")
    acts = (rng.normal(size=tokens.shape + (3,)) * 0.01).astype(np.float32)
    acts[..., 1] = np.where(tokens == VOCAB.index(" dog"), 2.0, 0.0)
    acc = TokenTableAccumulator("m", len(VOCAB), 3)
    for b in iter_array_batches("m", tokens, acts, batch_seqs=4):
        acc.update(b)
    table = acc.finalize()
    feats = build_vocab_features(VOCAB, table.current.count.numpy(), unigram_min_count=1,
                                 special_ids=[0])
    fam = assign_families(explain_table(table, feats, d_mlp=3, strings=VOCAB).wide())
    fam = fam.set_index("neuron")
    assert parse_families(fam.loc[1, "families"])[0] == "unigram"
    assert json.loads(fam.loc[1, "family_features"])["unigram"] == "unigram:dog"
    assert json.loads(fam.loc[1, "family_scores"])["unigram"] == pytest.approx(1.0, abs=1e-6)
    assert "unigram" not in parse_families(fam.loc[0, "families"])


def test_counts_and_merge(tmp_path):
    fam = assign_families(_vr_frame(), _table())
    counts = family_counts(fam, _table()).set_index("family")
    assert counts.loc["syntax", "n_neurons"] == 1 and counts.loc["syntax", "n_universal"] == 1
    assert counts.loc["position", "n_neurons"] == 1 and counts.loc["unigram", "n_universal"] == 1
    assert counts.loc["prediction", "n_neurons"] == 0
    assert counts["frac"].max() <= 1
    path = tmp_path / "neurons" / "m.parquet"
    merged = merge_into_neuron_table(path, fam)  # absent: created
    assert list(merged.columns) == ["layer", "neuron", "families", "family_scores",
                                    "family_features"]
    old = _table().assign(excess_corr=np.arange(8.0), families="stale")
    old = pd.concat([old, pd.DataFrame({"layer": [2], "neuron": [0], "kurt": [3.0],
                                        "is_universal": [False], "excess_corr": [9.0]})])
    old.to_parquet(path)
    merged = merge_into_neuron_table(path, fam)
    assert len(merged) == 9 and merged["excess_corr"].tolist() == [*range(8), 9.0]
    assert merged.set_index(["layer", "neuron"]).loc[(2, 0), "families"] == ""
    back = pd.read_parquet(path)
    assert "stale" not in set(back["families"]) and (tmp_path / "neurons" / "m.csv").exists()


def test_run_families_stage(tmp_path):
    run = tmp_path / "run"
    (run / "explanations").mkdir(parents=True)
    (run / "neurons").mkdir()
    _vr_frame().to_parquet(run / "explanations" / "m_vr.parquet")
    rng = np.random.default_rng(0)
    table = _table().assign(vocab_mean=0.0, vocab_var=rng.uniform(1, 2, 8),
                            vocab_skew=[2.0, -2, 0, 0, 0, 0, 0, 0],
                            vocab_kurt=[30.0, 25, 3, 3, 3, 3, 3, 3])
    table.loc[5, "vocab_var"] = 20.0  # partition
    table.to_parquet(run / "neurons" / "m.parquet")
    counts = run_families(FamiliesConfig(str(run), weights=False))["m"].set_index("family")
    assert counts.loc["prediction", "n_neurons"] == 1
    assert counts.loc["suppression", "n_neurons"] == 1 and counts.loc["partition", "n_neurons"] == 1
    fam = neuron_families(run, "m").set_index(["layer", "neuron"])
    assert fam.loc[(0, 0), "families"] == ["prediction", "unigram"]  # kurtosis 30 scores first
    assert fam.loc[(0, 5), "families"] == ["partition", "token"]
    assert (run / "families" / "m_counts.csv").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["families"]["counts"]["m"]["unigram"] == 1
    if pytest.importorskip("matplotlib"):  # the plots are drawn when matplotlib is there
        assert (run / "plots" / "families_m.png").read_bytes()[:4] == b"\x89PNG"
        assert (run / "plots" / "prediction_curves.png").exists()


def test_empty_inputs():
    out = assign_families(None, None)
    assert list(out.columns) == ["layer", "neuron", "families", "family_scores", "family_features"]


def test_topic_family_needs_the_best_feature_to_be_a_topic():
    rng = np.random.default_rng(4)
    n = 40
    vr = pd.DataFrame({"layer": 0, "neuron": np.arange(n)})
    cols = ["current/topic:lord_god_israel", "current/topic:python_module_class",
            "current/unigram:the", "prev/topic:lord_god_israel", "sequence/pos:NOUN"]
    for c in cols:
        vr[c] = rng.uniform(0, 0.3, n)
    vr.loc[0, "current/topic:lord_god_israel"] = 0.9
    got = assign_families(vr, None, FamilyThresholds(topic=0.12))
    fam = got.set_index("neuron")["families"].map(parse_families)
    # oracle: each neuron's best column is a current-token topic column with VR > 0.12
    m = vr[cols].to_numpy()
    best = np.array(cols)[m.argmax(1)]
    want = np.char.startswith(best.astype(str), "current/topic:") & (m.max(1) > 0.12)
    assert [("topic" in f) for f in fam] == want.tolist() and want.sum() > 2
    feats = got.set_index("neuron")["family_features"].map(json.loads)
    for i in np.flatnonzero(want):
        assert feats[i]["topic"] == best[i].split("/", 1)[1]
        assert json.loads(got.set_index("neuron")["family_scores"][i])["topic"] == \
            pytest.approx(m[i].max(), abs=1e-6)
    assert family_counts(got).set_index("family").loc["topic", "n_neurons"] == want.sum()
    # no topic columns (explain --topics 0): no topic neuron
    assert not assign_families(vr.drop(columns=cols[:2]), None)["families"].str.contains(
        "topic").any()
