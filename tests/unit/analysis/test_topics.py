"""Topic token sets (analysis.topics): documents, tf-idf and NMF against direct numpy
recomputations, and recovery of planted topics checked by set arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from universal_neurons.analysis.topics import (
    TOPIC_PREFIX,
    count_matrix,
    derive_topics,
    nmf,
    split_documents,
    tfidf,
    topic_name,
    topic_sets,
)

EOS = 0
LISTS = (
    "lord god israel king temple prophet altar priest covenant tribe judah psalm".split(),
    "python module function class exception import method return string object value list".split(),
    "genus flower plant leaf herb shrub tree species root seed fruit stem".split(),
)
COMMON = "the of and a to in".split()


def _planted_corpus(n_docs: int = 30, doc_len: int = 60, seed: int = 3):
    """Strings (EOS, the common words, the 3 lists), and windows whose documents each draw
    from one list plus the common words, joined by EOS: ``(strings, windows, topic of doc)``."""
    strings = ["<eos>", *[f" {w}" for w in COMMON], *[f" {w}" for lst in LISTS for w in lst]]
    ids = {s.strip(): i for i, s in enumerate(strings)}
    rng = np.random.default_rng(seed)
    stream, labels = [], []
    for d in range(n_docs):
        topic = d % 3
        words = rng.choice(LISTS[topic], size=doc_len)
        common = rng.choice(COMMON, size=doc_len // 3)
        doc = [ids[w] for w in np.concatenate([words, common])]
        rng.shuffle(doc)
        stream += ([EOS] if d else []) + doc
        labels.append(topic)
    n_ctx = 33
    stream += [EOS] * (-len(stream) % (n_ctx - 1))
    body = np.asarray(stream).reshape(-1, n_ctx - 1)
    windows = np.concatenate([np.full((len(body), 1), EOS), body], axis=1)  # BOS = EOS id
    return strings, windows, labels


def test_planted_topics_are_recovered():
    strings, windows, _ = _planted_corpus()
    topics = derive_topics(windows, strings, eos_id=EOS, k=3, n_tokens=12, special_ids=[EOS])
    found = [frozenset(strings[t].strip() for t in ids) for ids in topics.token_ids]
    assert set(found) == {frozenset(lst) for lst in LISTS}  # each list, exactly, once
    assert not (set().union(*found) & set(COMMON))  # in every document: no topic
    # the name is the topic's three first words (by weight), all from its own list
    for name, words in zip(topics.names, found):
        assert len(name.split("_")) == 3 and set(name.split("_")) <= words
    frame = topics.features(len(strings))
    assert list(frame.columns) == [f"{TOPIC_PREFIX}{n}" for n in topics.names]
    for col, ids in zip(frame.columns, topics.token_ids):
        assert set(np.flatnonzero(frame[col].to_numpy())) == set(ids.tolist())


def test_nmf_objective_decreases_and_matches_a_dense_recomputation():
    rng = np.random.default_rng(0)
    x = rng.random((40, 25)) * (rng.random((40, 25)) < 0.4)
    fits = [nmf(x, 4, seed=1, max_iter=n, tol=0.0) for n in (0, 1, 5, 30, 80)]
    direct = [float(np.sum((x - f.w @ f.h) ** 2)) for f in fits]
    assert all(b <= a * (1 + 1e-12) for a, b in zip(direct, direct[1:]))
    full = fits[-1].objective
    assert len(full) == 81 and np.all(np.diff(full) <= 1e-12 * full[:-1])
    for f, d in zip(fits, direct):
        assert f.objective[-1] == pytest.approx(d, rel=1e-9)
    assert np.all(fits[-1].w >= 0) and np.all(fits[-1].h >= 0)
    assert direct[-1] < 0.8 * direct[0]


def test_nmf_is_deterministic_under_its_seed():
    rng = np.random.default_rng(5)
    x = rng.random((30, 20))
    a, b = nmf(x, 3, seed=7), nmf(x, 3, seed=7)
    np.testing.assert_array_equal(a.w, b.w)
    np.testing.assert_array_equal(a.h, b.h)
    assert not np.array_equal(nmf(x, 3, seed=8, max_iter=3).h, nmf(x, 3, seed=7, max_iter=3).h)
    strings, windows, _ = _planted_corpus()
    one = derive_topics(windows, strings, eos_id=EOS, k=3, special_ids=[EOS])
    two = derive_topics(windows, strings, eos_id=EOS, k=3, special_ids=[EOS])
    assert one.names == two.names
    assert all(np.array_equal(p, q) for p, q in zip(one.token_ids, two.token_ids))
    with pytest.raises(ValueError, match="non-negative"):
        nmf(-x, 2)


def test_split_documents_against_a_loop():
    rng = np.random.default_rng(2)
    windows = rng.integers(1, 9, size=(6, 11))
    windows[:, 0] = 0  # BOS
    windows[rng.random(windows.shape) < 0.1] = 0  # EOS inside
    doc, tok = split_documents(windows, eos_id=0, max_doc_tokens=7)
    pieces: list[list[int]] = [[]]
    for t in windows[:, 1:].reshape(-1):  # oracle: walk the stream
        if t == 0:
            pieces.append([])
        elif len(pieces[-1]) == 7:
            pieces.append([int(t)])
        else:
            pieces[-1].append(int(t))
    pieces = [p for p in pieces if p]
    assert [tok[doc == d].tolist() for d in range(doc.max() + 1)] == pieces
    few_doc, few_tok = split_documents(windows, eos_id=0, max_doc_tokens=7, max_documents=3)
    keep = np.unique(np.linspace(0, len(pieces) - 1, 3).round().astype(int))
    assert [few_tok[few_doc == d].tolist() for d in range(3)] == [pieces[i] for i in keep]


def test_split_counts_the_offset_from_each_document_start():
    # a document of 5 tokens after one of 3: pieces of at most 4 restart at each EOS
    windows = np.array([[9, 1, 1, 1, 0, 2, 2, 2, 2, 2]])
    doc, tok = split_documents(windows, eos_id=0, max_doc_tokens=4)
    assert [tok[doc == d].tolist() for d in range(doc.max() + 1)] == [[1, 1, 1], [2, 2, 2, 2], [2]]


def test_tfidf_against_the_formula():
    counts = np.array([[3, 0, 1, 2, 0], [0, 2, 2, 0, 1], [1, 1, 0, 0, 4], [0, 0, 5, 1, 0]],
                      dtype=float)
    x, cols = tfidf(sp.csr_matrix(counts), min_df=2, max_df=0.75, exclude=[4])
    n = len(counts)
    df = (counts > 0).sum(0)
    keep = [t for t in range(5) if 2 <= df[t] <= 0.75 * n and t != 4]
    assert cols.tolist() == keep
    tf = counts[:, keep] / counts.sum(1, keepdims=True)
    want = tf * (np.log((1 + n) / (1 + df[keep])) + 1)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(x.toarray(), want, rtol=1e-12)


def test_count_matrix_and_names():
    m = count_matrix(np.array([0, 0, 1, 1, 1]), np.array([2, 2, 0, 1, 1]), 4)
    np.testing.assert_array_equal(m.toarray(), [[0, 0, 2, 0], [1, 2, 0, 0]])
    strings = [" The", "x", " über", " b", " GOD", " god", " lord", "2", " israel"]
    assert topic_name(np.arange(len(strings)), strings) == "the_god_lord"
    h = np.array([[0.0, 3.0, 2.0, 2.0], [0.0, 0.0, 0.0, 0.0], [1.0, 3.0, 2.0, 2.0]])
    t = topic_sets(h, np.array([4, 5, 6, 8]), strings, n_tokens=3)
    assert t.names == ["god_lord_israel", "god_lord_israel_2"]  # empty topic dropped
    assert [ids.tolist() for ids in t.token_ids] == [[5, 6, 8], [5, 6, 8]]  # ties by id
