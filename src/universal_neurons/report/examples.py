"""A neuron's examples: read from the stats file, rendered as shaded token windows.

The one place that turns examples into HTML (:func:`examples_html`); every page that shows
examples calls it.

Reading (:func:`read_examples`): a version-2 stats file (``engine.example_windows``) holds
per neuron the shown examples (top, quantile bands, most negative) and the activation at
every token of each window; every token shown is shaded and carries its value on hover. An
older file holds only top-k ``(value, seq, pos)``: then the window's text is read from the
dataset and only tokens that are themselves top-k entries are shaded; windows that overlap
one already shown are skipped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from universal_neurons.report.html import esc, fmt
from universal_neurons.report.tokens import LEGEND, token_html

KIND_TOP, KIND_NEGATIVE, KIND_BAND = 0, 1, 2  # engine.example_windows.KIND_*


@dataclass
class Example:
    """A window of text around one token; ``acts[i]`` is None where unknown."""

    tokens: list[str]
    acts: list[float | None]
    focus: int
    activation: float
    seq_index: int | None = None
    position: int | None = None
    group: str = "Top activations"
    """The heading the example is shown under (examples are grouped in order)."""
    negative: bool = False
    """Shaded on the scale of its own group (the most negative examples)."""


Slice = Callable[..., Any]
"""``get(name, *index)``: an array of the stats file (sliced), or None if absent."""


def _band_title(lo: float, hi: float, edges) -> str:
    rng = ""
    if edges is not None and all(math.isfinite(float(e)) for e in edges):
        rng = f" ({fmt(float(edges[0]), 3)} to {fmt(float(edges[1]), 3)})"
    return f"Quantile band {lo * 100:g}\u2013{hi * 100:g} % of positive activations{rng}"


def _window(dataset, text, s: int, p: int, before: int, after: int, first: int = 0):
    lo, hi = max(first, p - before), min(dataset.n_ctx, p + after + 1)
    return lo, text.sequence(dataset.tokens[s, lo:hi])


def read_examples(get: Slice, meta: Mapping[str, Any], dataset, text, layer: int, neuron: int,
                  *, before: int, after: int, max_top: int, per_band: int = 2,
                  max_negative: int = 3) -> list[Example] | None:
    """The examples of one neuron (None without a stats file). ``meta`` is the file's
    ``examples`` metadata; ``before``/``after`` cut the shown window (at most what was
    recorded); ``max_top``, ``per_band``, ``max_negative`` bound the groups."""
    acts = get("example_acts", layer, neuron) if meta else None
    if acts is None or len(acts) == 0:
        return _legacy(get, dataset, text, layer, neuron, before, after, max_top)
    rb, ra = int(meta["before"]), int(meta["after"])
    b, a = min(before, rb), min(after, ra)
    kinds, seqs = get("example_kind", layer, neuron), get("example_seq", layer, neuron)
    poss, vals = get("example_pos", layer, neuron), get("example_value", layer, neuron)
    edges = get("band_edges", layer, neuron)
    bands = [tuple(x) for x in meta.get("bands", [])]
    order = ([KIND_TOP] + [KIND_BAND + i for i in reversed(range(len(bands)))] + [KIND_NEGATIVE])
    out: list[Example] = []
    for kind in order:
        idx = [i for i in range(len(kinds)) if int(kinds[i]) == kind and seqs[i] >= 0]
        if kind == KIND_TOP:
            idx = idx[:max_top]
            group = "Top activations"
        elif kind == KIND_NEGATIVE:
            idx = idx[:max_negative]
            group = "Most negative activations"
        else:
            idx = idx[:per_band]
            band = kind - KIND_BAND
            lo, hi = bands[band]
            group = _band_title(lo, hi, edges[band] if edges is not None else None)
        for i in idx:
            s, p = int(seqs[i]), int(poss[i])
            row = [None if not math.isfinite(float(v)) else float(v) for v in acts[i]]
            if dataset is None or s >= dataset.n_seq:
                out.append(Example([f"(token at sequence {s}, position {p})"], [float(vals[i])], 0,
                                   float(vals[i]), s, p, group, kind == KIND_NEGATIVE))
                continue
            lo, toks = _window(dataset, text, s, p, b, a)
            shown = row[rb - (p - lo): rb - (p - lo) + len(toks)]
            out.append(Example(toks, shown, p - lo, float(vals[i]), s, p, group,
                               kind == KIND_NEGATIVE))
    return out


def _legacy(get: Slice, dataset, text, layer: int, neuron: int, before: int, after: int,
            max_top: int) -> list[Example] | None:
    vals = get("top_values", layer, neuron)
    if vals is None:
        return None
    seqs, poss = get("top_seq", layer, neuron), get("top_pos", layer, neuron)
    known: dict[tuple[int, int], float] = {}
    for v, s, p in zip(vals, seqs, poss):
        if s >= 0:
            known.setdefault((int(s), int(p)), float(v))
    out: list[Example] = []
    taken: list[tuple[int, int]] = []
    for (s, p), v in known.items():  # insertion order: decreasing value
        if len(out) >= max_top:
            break
        if any(s == s2 and abs(p - p2) <= before + after for s2, p2 in taken):
            continue  # one example per window
        taken.append((s, p))
        if dataset is None or s >= dataset.n_seq:
            out.append(Example([f"(token at sequence {s}, position {p})"], [v], 0, v, s, p))
            continue
        lo, toks = _window(dataset, text, s, p, before, after, first=1)  # BOS left out
        out.append(Example(toks, [known.get((s, q)) for q in range(lo, lo + len(toks))],
                           p - lo, v, s, p))
    return out


# ------------------------------------------------------------------------------ rendering
def token_span(token: str, act: float | None, scale: float, *, focus: bool = False) -> str:
    """A token of running text as a ``<span>`` (see ``report.tokens``); background opacity
    = |act| / scale (blue if negative), the value in its ``title`` (shown on hover)."""
    if act is None or not math.isfinite(act) or scale <= 0:  # unshaded: plain text
        return token_html(token, spaces=False)
    shown = token_html(token, spaces=False, isolate=False)  # .tok isolates (report.css)
    alpha = min(abs(act) / scale, 1.0)
    cls = "tok" + (" neg" if act < 0 else "") + (" max" if focus else "")
    return f'<span class="{cls}" style="--a:{alpha:.2f}" title="{esc(fmt(act, 3))}">{shown}</span>'


LEVELS = 20
"""Opacity steps of a window token: class ``a``..``t`` (positive) or ``A``..``T`` (negative)
for ``1/20``..``20/20`` (report.css)."""


def window_token(token: str, act: float | None, scale: float, *, focus: bool = False) -> str:
    """A token of an example window, compact: ``<i>`` (``<b>`` for the example's own token)
    with the one-letter class of opacity ``k / 20`` = |act| / scale rounded (``a``..``t``;
    ``A``..``T`` if negative, blue; no class at 0) and the value as ``title`` (shown on
    hover). Unknown: plain text."""
    if act is None or not math.isfinite(act) or scale <= 0:
        return token_html(token, spaces=False)
    shown = token_html(token, spaces=False, isolate=False)  # <i>/<b> isolate (report.css)
    level = round(min(abs(act) / scale, 1.0) * LEVELS)
    tag = "b" if focus else "i"
    letter = chr((ord("A") if act < 0 else ord("a")) + level - 1)
    cls = f" class={letter}" if level else ""
    value = re.sub(r"^(-?)0\.", r"\1.", fmt(act, 3))  # 0.829 -> .829, -0.17 -> -.17
    return f"<{tag}{cls} title={esc(value)}>{shown}</{tag}>"  # a number: no quotes needed


def example_html(ex: Example, scale: float, negative_scale: float | None = None) -> str:
    """One example: its place and value, then its tokens shaded on ``scale`` (negative
    values on ``negative_scale``, default ``scale``)."""
    where = "" if ex.seq_index is None else f"seq {ex.seq_index}, pos {ex.position}: "
    neg = scale if negative_scale is None else negative_scale
    toks = "".join(window_token(t, a, neg if a is not None and a < 0 else scale,
                                focus=(i == ex.focus))
                   for i, (t, a) in enumerate(zip(ex.tokens, ex.acts)))
    return (f'<div class=example><span class=meta>{esc(where)}{esc(fmt(ex.activation))}</span>'
            f"{toks}</div>")


def _scale(examples: Sequence[Example]) -> float:
    return max((abs(e.activation) for e in examples if math.isfinite(e.activation)), default=0.0)


NOTE = ("Opacity: activation / {scale} (the largest); in the negative examples, negative "
        "values (blue) / {neg}. Hover a token for its value; the outlined token is "
        "the example's own. A character split over tokens is shown on the last of them. ")


def examples_html(examples: Sequence[Example] | None, *, legend: bool = True) -> str | None:
    """The examples of one neuron, grouped under their headings (None: not computed); with
    ``legend`` the token markers' legend (``report.tokens.LEGEND``) under the note."""
    if examples is None:
        return None
    if not examples:
        return '<p class="missing">no examples recorded</p>'
    groups: dict[str, list[Example]] = {}
    for e in examples:
        groups.setdefault(e.group, []).append(e)
    scale = _scale([e for e in examples if not e.negative])
    neg = _scale([e for e in examples if e.negative]) or scale
    note = NOTE.format(scale=fmt(scale), neg=fmt(neg))
    parts = [f'<p class="note">{esc(note)}{LEGEND if legend else ""}</p>']
    for title, exs in groups.items():
        body = "".join(example_html(e, scale, neg if e.negative else scale) for e in exs)
        parts.append(f"<h3>{esc(title)}</h3>{body}" if len(groups) > 1 else body)
    return "".join(parts)
