"""Display strings of token windows with the bundled byte-level BPE tokenizer."""

from __future__ import annotations

import pytest

from universal_neurons.models.loading import load_tokenizer
from universal_neurons.report.details import TokenText

TEXT = "The café — naïve ✓ 37 ∑ ok"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-gpt2-a")


def test_split_characters_are_shown_whole_on_the_completing_token(tokenizer):
    ids = tokenizer(TEXT)["input_ids"]
    text = TokenText(tokenizer)
    alone = [text(i) for i in ids]
    assert any("\ufffd" in t for t in alone)  # the vocabulary really splits some characters
    pieces = text.sequence(ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in t for t in pieces)


def test_window_starting_inside_a_character_keeps_the_rest(tokenizer):
    ids = tokenizer(TEXT)["input_ids"]
    text = TokenText(tokenizer)
    first_split = next(i for i, t in enumerate(ids) if "\ufffd" in text(t))
    window = ids[first_split + 1:]
    pieces = text.sequence(window)
    assert len(pieces) == len(window)
    assert "".join(pieces).endswith("ok")


def test_plain_ascii_windows_decode_token_by_token(tokenizer):
    ids = tokenizer("the most commonly chosen number is 37.")["input_ids"]
    text = TokenText(tokenizer)
    assert text.sequence(ids) == [tokenizer.decode([i]) for i in ids]
