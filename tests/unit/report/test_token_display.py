"""Token display (report.tokens): every token told apart, nothing unescaped."""

from __future__ import annotations

import re

import pytest
from report_fixtures import XSS_IMG, XSS_SCRIPT

from universal_neurons.report.neuron_page import token_code, token_span
from universal_neurons.report.tokens import EMPTY, NEWLINE, SPACE, TAB, token_html, token_plain


def byte_token(raw: bytes) -> str:
    """A token as ``details.TokenText`` returns it: bytes that are no whole character as
    surrogate escapes."""
    return raw.decode("utf-8", errors="surrogateescape")


def test_bytes_are_shown_as_hex_escapes():
    assert token_plain(byte_token(b"\xe2")) == "<0xE2>"
    assert token_plain(byte_token(b"\xe2\x80")) == "<0xE2><0x80>"
    assert token_plain(byte_token(b" \xe2")) == f"{SPACE}<0xE2>"
    # the fragments that all decoded to U+FFFD before are now distinct
    frags = [byte_token(bytes([b])) for b in range(0x80, 0x100)]
    assert len({token_plain(t) for t in frags}) == 128
    assert "\ufffd" not in "".join(token_html(t) for t in frags)


def test_a_literal_escape_spelling_differs_from_a_byte():
    literal, byte = token_html("<0xE2>"), token_html(byte_token(b"\xe2"))
    assert token_plain("<0xE2>") == token_plain(byte_token(b"\xe2"))  # same letters...
    assert literal != byte and 'class="esc"' in byte and 'class="esc"' not in literal  # ...told apart


def test_spaces_newlines_tabs_and_control_characters_are_visible():
    assert token_plain(" the") == f"{SPACE}the"
    assert token_plain("  ") == SPACE * 2
    assert token_plain("\n") == NEWLINE and token_plain("\n\n") == NEWLINE * 2
    assert token_plain("\t") == TAB
    assert token_plain("\x0b") == "<0x0B>" and token_plain("\r") == "<0x0D>"
    assert token_plain("\u00a0") == "<U+00A0>" and token_plain("\u200b") == "<U+200B>"
    assert token_plain("caf\u00e9") == "caf\u00e9" and token_plain("\u4e2d") == "\u4e2d"


def test_running_text_keeps_spaces_and_breaks_lines_after_the_newline_marker():
    html = token_html(" a\nb", spaces=False)
    assert html.startswith(" a") and f"{NEWLINE}</span>\n" in html


def test_empty_token_is_shown_as_such():
    assert token_plain("") == EMPTY and 'class="esc"' in token_html("")
    assert "\u2205" not in token_html("") and "\u2205" not in token_code("")


def test_direction_overrides_are_isolated_and_shown():
    rlo = "abc\u202edef"
    html = token_html(rlo)
    assert "\u202e" not in html and "&lt;U+202E&gt;" in html
    assert html.startswith("<bdi>") and html.endswith("</bdi>")
    assert token_html("\u05e9\u05dc\u05d5\u05dd").startswith("<bdi>")  # right-to-left letters
    for ch in "\u202a\u202b\u202c\u202d\u2066\u2067\u2068\u2069\u200e\u200f\u061c":
        assert ch not in token_html(f"x{ch}y") and ch not in token_span(f"x{ch}y", 1.0, 1.0)
    assert token_html("plain") == "plain"  # ASCII needs no isolation


@pytest.mark.parametrize("hostile", [XSS_SCRIPT, XSS_IMG, "</script><!--", "a&amp;b",
                                     "'onmouseover='x", "<bdi>", "</bdi></code>"])
def test_hostile_tokens_stay_text(hostile):
    for html in (token_html(hostile), token_html(hostile, spaces=False), token_code(hostile),
                 token_span(hostile, 1.0, 2.0), token_span(hostile, None, 1.0)):
        stripped = re.sub(r'</?(bdi|span|code)( class="[a-z ]+"| style="--a:[0-9.]+"'
                          r'| title="[^"<>]*")*>', "", html)
        assert "<" not in stripped and ">" not in stripped.replace("&gt;", ""), html
        assert '"' not in stripped and "'" not in stripped
    assert token_plain(hostile).replace(SPACE, " ") == hostile
