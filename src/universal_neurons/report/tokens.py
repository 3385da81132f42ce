"""Token strings as unambiguous, escaped HTML.

A token's text can be invisible (spaces, newlines, control characters), a fragment of a
UTF-8 character (byte-level BPE), empty, or a character that changes the direction of the
text around it (U+202E). :func:`token_html` shows every one of these as a visible marker in
a ``<span class="esc">`` (styled apart from the token's own text, so a token that literally
spells ``<0xE2>`` stays distinguishable) and isolates the token's direction (``<bdi>``).

Bytes that are not a whole UTF-8 character reach this module as lone surrogates
U+DC80..U+DCFF (Python's ``surrogateescape``, see ``details.TokenText``) and are shown as
``<0xE2>``.

Markers (``LEGEND``): ``␣`` space, ``⏎`` newline, ``⇥`` tab, ``<0xNN>`` a byte that is not
a whole character or an ASCII control character, ``<U+XXXX>`` an invisible or
direction-changing character, ``(empty)`` a token that decodes to no text.
"""

from __future__ import annotations

import unicodedata

from universal_neurons.report.html import esc

EMPTY = "(empty)"
SPACE, NEWLINE, TAB = "\u2423", "\u23ce", "\u21e5"
LEGEND = (
    f"Tokens: {SPACE} space, {NEWLINE} newline, {TAB} tab, "
    "&lt;0xE2&gt; a byte that is not a whole UTF-8 character (or an ASCII control "
    "character), &lt;U+202E&gt; an invisible or direction-changing character, "
    f"{EMPTY} a token with no text. Markers are drawn in grey boxes; anything else is the "
    "token's own text."
)


def _marker(text: str, title: str) -> str:
    return f'<span class="esc" title="{esc(title)}">{esc(text)}</span>'


def _char_html(ch: str, *, spaces: bool) -> str:
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:  # surrogate-escaped byte
        return _marker(f"<0x{o - 0xDC00:02X}>", "byte that is not a whole UTF-8 character")
    if ch == " ":
        return _marker(SPACE, "space") if spaces else " "
    if ch == "\n":
        return _marker(NEWLINE, "newline") + ("" if spaces else "\n")
    if ch == "\t":
        return _marker(TAB, "tab")
    cat = unicodedata.category(ch)
    if o < 0x100 and cat == "Cc":
        return _marker(f"<0x{o:02X}>", "control character")
    if cat in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or (cat == "Zs" and ch != " "):
        return _marker(f"<U+{o:04X}>", unicodedata.name(ch, "invisible or format character"))
    return esc(ch)


def token_html(token: str, *, spaces: bool = True, isolate: bool = True) -> str:
    """``token`` as escaped HTML with every invisible or ambiguous part made visible.

    ``spaces=False`` keeps spaces as spaces and a line break after the newline marker
    (running text); ``True`` marks every space (token tables). With ``isolate`` a token
    holding any non-ASCII character is wrapped in ``<bdi>`` (its direction cannot leak into
    its neighbours); pass False when the caller's element isolates it already."""
    if token == "":
        return _marker(EMPTY, "the token decodes to no text")
    out = []
    run: list[str] = []  # plain characters, escaped together
    for ch in token:
        o = ord(ch)
        if (0x20 < o < 0x7F and ch not in "<>&\"'") or (o >= 0xA0 and ch.isprintable()
                                                       and not 0xD800 <= o <= 0xDFFF):
            run.append(ch)
            continue
        if run:
            out.append(esc("".join(run)))
            run = []
        out.append(_char_html(ch, spaces=spaces))
    if run:
        out.append(esc("".join(run)))
    html = "".join(out)
    return f"<bdi>{html}</bdi>" if isolate and not token.isascii() else html


def token_plain(token: str) -> str:
    """The visible text of :func:`token_html` without markup (for titles and tests)."""
    import re

    return re.sub(r"<[^>]+>", "", token_html(token)).replace("&lt;", "<").replace(
        "&gt;", ">").replace("&quot;", '"').replace("&#x27;", "'").replace("&amp;", "&")
