"""Sequence features: spaCy alignment on multi-token words, positions, context flags."""

from __future__ import annotations

import numpy as np
import pytest

from universal_neurons.analysis.sequence_features import (
    align_to_tokens,
    build_row_labels,
    context_codes,
    position_codes,
    scheme_features,
    sequence_text,
)

# model tokens of two sentences; several words are split into pieces
PIECES = ["<s>", "The", " un", "believ", "ably", " quick", " Rob", "ert", " Johns", "on",
          " visited", " Wash", "ington", " in", " Dec", "ember", ".", "\n", "She", " left",
          " (", "early", ")", ' "', "Hi", '"', "."]
WINDOW = np.arange(len(PIECES))[None, :]  # [1, n_ctx]: token id = index, column 0 = BOS


def test_align_first_non_space_character():
    text, starts, ends = sequence_text([1, 2, 3], ["", "ab", " c", "  "], special=set())
    assert text == "ab c  " and starts.tolist() == [0, 2, 4] and ends.tolist() == [2, 4, 6]
    spans = [(0, 2), (3, 4)]  # spaCy tokens "ab" and "c" (the spaces belong to no token)
    assert align_to_tokens(text, starts, ends, spans).tolist() == [0, 1, -1]
    assert align_to_tokens("", np.array([0]), np.array([0]), []).tolist() == [-1]


@pytest.fixture(scope="module")
def nlp():
    pytest.importorskip("spacy")
    from universal_neurons.analysis.sequence_features import load_spacy

    return load_spacy()


def test_spacy_alignment_multi_token_words(nlp):
    labels = build_row_labels(WINDOW, PIECES, nlp, special_ids=[0], position_bins=4)
    names = dict(zip(labels.schemes, labels.labels))
    col = {s: i for i, s in enumerate(labels.schemes)}

    def lab(scheme: str) -> list[str]:
        return [names[scheme][c] for c in labels.codes[0, :, col[scheme]]]

    pos, dep, ent = lab("pos"), lab("dep"), lab("ent")
    assert pos[0] == dep[0] == ent[0] == "NONE"  # BOS
    # oracle: spaCy on the same text, each piece takes the token under its first non-space char
    text = "".join(PIECES[1:])
    doc = nlp(text)
    offset = 0
    for i, piece in enumerate(PIECES[1:], start=1):
        lead = len(piece) - len(piece.lstrip()) if piece.strip() else 0
        covering = [t for t in doc if t.idx <= offset + lead < t.idx + len(t)]
        want = covering[0].pos_ if covering else "NONE"
        assert pos[i] == want, (piece, pos[i], want)
        offset += len(piece)
    # every piece of a split word carries the word's labels
    for word in ((2, 3, 4), (6, 7), (8, 9), (11, 12), (14, 15)):
        assert len({pos[i] for i in word}) == 1 and len({dep[i] for i in word}) == 1
        assert len({ent[i] for i in word}) == 1
    assert pos[2] == "ADV" and pos[16] == "PUNCT" and pos[11] == "PROPN"
    assert ent[11] == ent[12] == "GPE" and lab("in_entity")[11] == "True"
    assert ent[14] == ent[15] == "DATE"


def test_spacy_missing_model_message():
    pytest.importorskip("spacy")
    from universal_neurons.analysis.sequence_features import load_spacy
    from universal_neurons.errors import UserError

    with pytest.raises(UserError, match=r"universal-neurons\[nlp\]"):
        load_spacy("no_such_spacy_model_xyz")


def test_position_and_context():
    codes, labels = position_codes(2, 10, n_bins=3)
    assert labels == ("0-2", "3-6", "7-9")
    assert codes[1].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    ctx = context_codes(WINDOW, PIECES)  # [1, n_ctx, 4]: quotes, parens, brackets, newline
    i_early, i_close, i_hi, i_qclose = PIECES.index("early"), 22, 24, 25
    assert ctx[0, i_early, 1] and ctx[0, i_close, 1] and not ctx[0, i_close + 1, 1]
    assert ctx[0, i_hi, 0] and ctx[0, i_qclose, 0] and not ctx[0, 23, 0]
    assert ctx[0, PIECES.index("She"), 3] and not ctx[0, PIECES.index(" left"), 3]
    assert not ctx[..., 2].any()
    # no state crosses sequences: window 0 ends inside quotes and parentheses, window 1
    # (plain words) starts outside both
    two = np.array([[0, 23, 20, 1], [0, 1, 5, 19]])  # [<s> ' "' ' (' The], [<s> The quick left]
    ctx2 = context_codes(two, PIECES)
    assert ctx2[0, 3, 0] and ctx2[0, 3, 1] and not ctx2[1].any()


def test_scheme_feature_names():
    labels = build_row_labels(WINDOW, PIECES, None, position_bins=2)
    assert labels.schemes == ("position", "position_each", "in_quotes", "in_parens", "in_brackets",
                              "after_newline")
    feats = scheme_features(dict(zip(labels.schemes, labels.labels)))
    names = [n for n, _, _ in feats]
    assert names == ["position:0-13", "position:14-26", "ctx:in_quotes", "ctx:in_parens",
                     "ctx:in_brackets", "ctx:after_newline"]
    spacy_like = scheme_features({"pos": ("NONE", "NOUN"), "in_entity": ("False", "True")})
    assert [n for n, _, _ in spacy_like] == ["pos:NOUN", "ent:in_entity"]
