"""Display strings of token windows with the bundled byte-level BPE tokenizer."""

from __future__ import annotations

import pytest

from universal_neurons.models.loading import load_tokenizer
from universal_neurons.report.details import TokenText

TEXT = "The café — naïve ✓ 37 ∑ ok"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-gpt2-a")


def _is_byte(c: str) -> bool:
    return 0xDC80 <= ord(c) <= 0xDCFF


def test_split_characters_are_shown_whole_on_the_completing_token(tokenizer):
    ids = tokenizer(TEXT)["input_ids"]
    text = TokenText(tokenizer)
    alone = [text(i) for i in ids]
    assert any(any(map(_is_byte, t)) for t in alone)  # the vocabulary really splits characters
    assert not any("\ufffd" in t for t in alone)  # bytes, not replacement characters
    pieces = text.sequence(ids)
    assert len(pieces) == len(ids)
    # the earlier tokens of a split character show their bytes, the last one the character
    assert "".join(c for p in pieces for c in p if not _is_byte(c)) == TEXT
    assert not any("\ufffd" in t for t in pieces)
    raw = b"".join(p.encode("utf-8", "surrogateescape") for p in pieces if any(map(_is_byte, p)))
    assert raw and all(b >= 0x80 for b in raw)


def test_byte_tokens_are_told_apart(tokenizer):
    """Tokens that decode alone to U+FFFD keep their distinct bytes (shown <0xE2>...)."""
    from universal_neurons.report.tokens import token_plain

    text = TokenText(tokenizer)
    frags = {i: text(i) for i in range(len(tokenizer)) if "\ufffd" in tokenizer.decode([i])}
    assert len(frags) > 1
    shown = [token_plain(t) for t in frags.values()]
    assert len(set(shown)) == len(shown) and all("<0x" in s for s in shown)


def test_window_starting_inside_a_character_keeps_the_rest(tokenizer):
    ids = tokenizer(TEXT)["input_ids"]
    text = TokenText(tokenizer)
    first_split = next(i for i, t in enumerate(ids) if any(map(_is_byte, text(t))))
    window = ids[first_split + 1:]
    pieces = text.sequence(window)
    assert len(pieces) == len(window)
    assert "".join(pieces).endswith("ok") and "\ufffd" not in "".join(pieces)


def test_plain_ascii_windows_decode_token_by_token(tokenizer):
    ids = tokenizer("the most commonly chosen number is 37.")["input_ids"]
    text = TokenText(tokenizer)
    assert text.sequence(ids) == [tokenizer.decode([i]) for i in ids]


class _Pieces:
    """A tokenizer stub: ``decode`` as a byte-fallback SentencePiece model does it."""

    pieces = {0: "<0xE2>", 1: "\u0120the"}

    def decode(self, ids):
        return "\ufffd" if ids == [0] else " the"

    def convert_ids_to_tokens(self, i):
        return self.pieces[i]


def test_byte_fallback_pieces_are_bytes():
    text = TokenText(_Pieces())
    assert text(0) == b"\xe2".decode("utf-8", "surrogateescape") and text(1) == " the"
