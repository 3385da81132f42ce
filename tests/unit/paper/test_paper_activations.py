"""``analysis.paper_activations`` against independent recomputations: variance reductions
by the within-group formula (1 - within / total) with numpy, means with pandas groupby,
token roles by the paper's class assignment written out row by row."""

from __future__ import annotations

import numpy as np
import pandas as pd

from universal_neurons.analysis import paper_activations as pa


def _vr_within(values: np.ndarray, groups: np.ndarray) -> float:
    """1 - Σ_g n_g var_g / (n var): the variance reduction, from the within-group side."""
    total = values.var()
    within = sum((groups == g).sum() * values[groups == g].var() for g in np.unique(groups))
    return 1 - within / (len(values) * total)


def test_class_split_best_feature_and_vr():
    rng = np.random.default_rng(0)
    vocab = 300
    classes = rng.random((6, vocab)) < np.array([0.1, 0.3, 0.5, 0.0, 1.0, 0.2])[:, None]
    cos = rng.normal(size=(3, vocab))
    cos[0] += 2.0 * classes[1]  # feature f1 explains neuron 0
    cos[2] -= 1.5 * classes[5]
    names = [f"f{i}" for i in range(6)]
    out = pa.class_split(cos, classes, names, top=3)
    assert not {"f3", "f4"} & set(out["feature"])  # empty and full classes skipped
    best = out[out["rank"] == 0].set_index("index")
    assert best.loc[0, "feature"] == "f1" and best.loc[2, "feature"] == "f5"
    for r in out.itertuples():
        m = classes[int(r.feature[1:])]
        assert abs(r.vr - _vr_within(cos[r.index], m)) < 1e-10
        assert abs(r.mean_in - cos[r.index][m].mean()) < 1e-12
        assert abs(r.mean_out - cos[r.index][~m].mean()) < 1e-12
        assert r.n_in == m.sum()
    for i in range(3):  # ranks are in decreasing VR
        assert (np.diff(out[out["index"] == i].sort_values("rank")["vr"]) <= 1e-15).all()


def test_source_table_against_groupby():
    rng = np.random.default_rng(1)
    rows, n = 500, 4
    groups = rng.integers(-1, 3, rows)  # -1 = no source, group 3 never occurs
    acts = rng.normal(size=(rows, n)) + (groups[:, None] == 1) * np.array([2.0, 0, 0, -1])
    count, total, squares = pa.group_moments(acts, groups, 4)
    out = pa.source_table(count, total, squares, ["s0", "s1", "s2", "s3"],
                          np.zeros(n, int), np.arange(n))
    assert set(out["source"]) == {"s0", "s1", "s2"}
    df = pd.DataFrame(acts[groups >= 0], columns=list(range(n)))
    g = groups[groups >= 0]
    means = df.groupby(g).mean()
    for r in out.itertuples():
        s = int(r.source[1:])
        v = df[r.neuron].to_numpy()
        assert r.n == (g == s).sum()
        assert abs(r.mean - means.loc[s, r.neuron]) < 1e-12
        assert abs(r.vr - _vr_within(v, g == s)) < 1e-10
        assert abs(r.eta2 - _vr_within(v, g)) < 1e-10
    s1 = out[out["source"] == "s1"].sort_values("rank")
    assert s1["neuron"].iloc[0] == 0 and (np.diff(s1["vr"]) <= 1e-15).all()


def _role_oracle(tok, nxt, feature, no_space, no_space_alpha):
    """The paper's ``plot_unigram_neuron`` classes, one row at a time."""
    out = []
    for t, x in zip(tok, nxt):
        c = 3
        if feature[t]:
            c = 0
            if x >= 0 and no_space_alpha[x]:
                c = 1
            if no_space[t]:
                c = 2
        out.append(c)
    return np.array(out)


def test_unigram_roles_and_token_roles():
    rng = np.random.default_rng(2)
    vocab, rows = 40, 2000
    tok = rng.integers(0, vocab, rows)
    nxt = np.where(rng.random(rows) < 0.1, -1, rng.integers(0, vocab, rows))
    no_space = rng.random(vocab) < 0.5
    no_space_alpha = no_space & (rng.random(vocab) < 0.7)
    feats = rng.random((2, vocab)) < 0.2
    acts = rng.normal(size=(rows, 2))
    acts[:, 1] += 3 * (_role_oracle(tok, nxt, feats[1], no_space, no_space_alpha) == 1)
    out = pa.unigram_roles(acts, tok, nxt, feats, no_space, no_space_alpha)
    for j in range(2):
        role = _role_oracle(tok, nxt, feats[j], no_space, no_space_alpha)
        np.testing.assert_array_equal(pa.token_roles(tok, nxt, feats[j], no_space,
                                                     no_space_alpha), role)
        frame = pd.DataFrame({"a": acts[:, j], "r": [pa.ROLES[r] for r in role]})
        agg = frame.groupby("r")["a"].agg(["size", "mean", lambda v: v.std(ddof=0)])
        got = out[out["index"] == j].set_index("role")
        for name in pa.ROLES:
            assert got.loc[name, "n"] == agg.loc[name, "size"]
            assert abs(got.loc[name, "mean"] - agg.loc[name, "mean"]) < 1e-12
            assert abs(got.loc[name, "std"] - agg.loc[name, "<lambda_0>"]) < 1e-12
    assert (out[out["index"] == 1]["top_role"] == "word_start").all()


def test_prediction_conditional_against_groupby():
    rng = np.random.default_rng(3)
    vocab, rows = 50, 1000
    nxt = np.where(rng.random(rows) < 0.05, -1, rng.integers(0, vocab, rows))
    sets = np.zeros((2, vocab), bool)
    sets[0, :5] = True
    sets[1, rng.choice(vocab, 10, replace=False)] = True
    acts = rng.normal(size=(rows, 2))
    out = pa.prediction_conditional(acts, nxt, sets).set_index("index")
    for j in range(2):
        frame = pd.DataFrame({"a": acts[:, j], "n": nxt})
        frame = frame[frame["n"] >= 0]
        frame["in"] = frame["n"].isin(np.flatnonzero(sets[j]))
        agg = frame.groupby("in")["a"].agg(["size", "mean"])
        assert out.loc[j, "n_in"] == agg.loc[True, "size"]
        assert out.loc[j, "n_out"] == agg.loc[False, "size"]
        assert abs(out.loc[j, "diff"] - (agg.loc[True, "mean"] - agg.loc[False, "mean"])) < 1e-12
        assert abs(out.loc[j, "std_in"] - frame[frame["in"]]["a"].std(ddof=0)) < 1e-12
