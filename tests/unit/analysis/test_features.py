"""Token features for a vocabulary: properties, unigram rule, alphabet, surface strings."""

from __future__ import annotations

import numpy as np
import pytest

from universal_neurons.analysis.features import (
    alphabet_features,
    build_vocab_features,
    feature_group,
    feature_matrix,
    read_vocab_features,
    surface_strings,
    token_property_features,
    unigram_features,
    write_vocab_features,
)

VOCAB = ["<|endoftext|>", " the", "The", " THE", " 1999", "1999", "42", " May", " she", " They",
         ".", " (", ")", '"', "\n", "  ", " walking", "ness", " Texas", " Monday", "$", " cat",
         "cat", " Cat", "�", " �", " c", "C", " a", "a."]


def test_token_properties():
    f = token_property_features(VOCAB)
    assert len(f) == len(VOCAB)

    def on(name: str) -> set[str]:
        return {VOCAB[i] for i in np.flatnonzero(f[name].to_numpy())}

    assert on("is_year") == {" 1999", "1999"}
    assert on("all_numeric") == {" 1999", "1999", "42"}
    assert on("is_month") == {" May"}
    assert on("is_female_pronoun") == {" she"}
    assert " They" in on("is_neutral_pronoun") and " They" in on("is_plural_pronoun")
    assert on("all_white_space") == {"\n", "  "}
    assert on("all_caps") == {" THE"}
    assert " 1999" in on("starts_w_space") and "The" not in on("starts_w_space")
    assert "  " not in on("starts_w_space")  # whitespace-only tokens do not start a word
    assert on("contains_open_paren") == {" ("} and '"' in on("contains_quotation")
    assert {" walking"} <= on("end_w_ing") and "ness" in on("end_w_ness")
    assert {" Texas"} == on("is_state") and {" Monday"} == on("is_day_of_week")
    assert {".", " (", ")", '"', "$"} <= on("all_symbolic") and " cat" not in on("all_symbolic")
    # the paper's all_symbolic (vocab_df.py): any non-alphanumeric character once stripped
    assert on("any_symbolic") == {t for t in VOCAB if any(not c.isalnum() for c in t.strip())}
    assert "a." in on("any_symbolic") and "a." not in on("all_symbolic")
    assert {"The", " Cat"} <= on("starts_w_cap")


def test_alphabet():
    a = alphabet_features(VOCAB)
    assert a.shape[1] == 26
    # the paper's {c}_unigram: the normalised (stripped, lower-cased) token is the letter;
    # oracle written from its create_normalized_vocab: decoded.lower().strip() == c
    for c in "abcdefghijklmnopqrstuvwxyz":
        want = {t for t in VOCAB if t.lower().strip() == c}
        assert {VOCAB[i] for i in np.flatnonzero(a[f"alpha:{c}"])} == want
    assert {VOCAB[i] for i in np.flatnonzero(a["alpha:c"])} == {" c", "C"}  # not " cat"
    assert not a.loc[VOCAB.index(" 1999")].any() and not a.loc[VOCAB.index("a.")].any()


def test_unigram_rule():
    counts = np.zeros(len(VOCAB), dtype=int)
    counts[[1, 2, 3]] = [50, 30, 1]  # "the": 81 occurrences, 3 forms
    counts[[21, 22, 23]] = [5, 2, 1]  # "cat": 8 occurrences, 3 forms
    counts[VOCAB.index(" Texas")] = 500  # frequent but a single form
    counts[[24, 25]] = [100, 100]  # undecodable byte pieces never make a unigram
    u = unigram_features(VOCAB, counts, min_count=10, min_forms=2)
    assert list(u.columns) == ["unigram:the"]
    assert {VOCAB[i] for i in np.flatnonzero(u["unigram:the"])} == {" the", "The", " THE"}
    u = unigram_features(VOCAB, counts, min_count=5, min_forms=1)
    assert list(u.columns) == ["unigram:texas", "unigram:the", "unigram:cat"]  # by frequency
    assert list(unigram_features(VOCAB, counts, min_count=5, min_forms=4).columns) == []
    excl = np.zeros(len(VOCAB), bool)
    excl[1] = True  # " the" excluded as a form: 2 forms, 31 occurrences left
    u = unigram_features(VOCAB, counts, min_count=40, min_forms=2, exclude=excl)
    assert list(u.columns) == []
    with pytest.raises(ValueError):
        unigram_features(VOCAB, counts[:-1])


def test_build_write_read(tmp_path):
    counts = np.full(len(VOCAB), 20)
    feats = build_vocab_features(VOCAB, counts, unigram_min_count=10, special_ids=[0])
    assert feats.index.name == "token_id" and feats["token"].tolist() == VOCAB
    bools = feats.drop(columns="token")
    assert not bools.loc[0].any()  # special ids are False everywhere
    assert bools.any(axis=0).all()  # features true for no token are dropped
    assert "unigram:cat" in feats and feature_group("unigram:cat") == "unigram"
    assert feature_group("alpha:c") == "alpha" and feature_group("is_year") == "token"
    names, mat = feature_matrix(feats)
    assert mat.shape == (len(names), len(VOCAB)) and mat.dtype == bool
    path = write_vocab_features(tmp_path, "ab" * 32, feats, {"note": 1})
    assert path == tmp_path / "features" / ("ab" * 8) / "vocab_features.parquet"
    back = read_vocab_features(path)
    assert back.equals(feats)
    assert path.with_suffix(".json").exists()


class _SentencePieceLike:
    """decode() drops the word-boundary marker, as SentencePiece tokenizers do."""

    pieces = ["<s>", "▁the", "the", "▁cat", "s"]

    def __len__(self) -> int:
        return len(self.pieces)

    def batch_decode(self, ids, clean_up_tokenization_spaces=False):
        return [self.pieces[i[0]].replace("▁", "") for i in ids]

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]


def test_surface_strings_restore_spaces():
    assert surface_strings(_SentencePieceLike()) == ["<s>", " the", "the", " cat", "s"]
