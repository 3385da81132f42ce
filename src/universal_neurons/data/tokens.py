"""Tokenizer identity and the per-token keep mask.

The fingerprint identifies a vocabulary: datasets record it, and models analysed together
must share it. The keep mask drops, by default, BOS/EOS/pad tokens and *every* whitespace
token containing a newline (``\\n``, ``\\n\\n``, `` \\n``, ...: GPT-2 has dozens). The
paper's code (``correlations_fast.py``) drops only the pad token (= BOS for GPT-2 and
Pythia) and the single token ``\\n`` (``model.to_single_token('\\n')``): its rule is
``rule="paper"`` of :func:`keep_mask`. Ours is the default because multi-newline tokens
carry the same "line break" signal that the paper meant to remove.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from typing import Any, Literal

import numpy as np

from universal_neurons.errors import UserError

# id(tokenizer) -> (weakref to it, keep table); tables are rebuilt if the object dies.
_KEEP_TABLES: dict[tuple[int, str], tuple[weakref.ref, np.ndarray]] = {}
KeepRule = Literal["ours", "paper"]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 (hex) of the sorted vocabulary items and the special tokens (ids and strings)."""
    h = hashlib.sha256()
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps(vocab, ensure_ascii=False).encode("utf-8"))
    specials = {
        name: [getattr(tokenizer, f"{name}_token", None), getattr(tokenizer, f"{name}_token_id", None)]
        for name in ("bos", "eos", "pad", "unk")
    }
    h.update(json.dumps(specials, ensure_ascii=False, default=str).encode("utf-8"))
    return h.hexdigest()


def special_ids(tokenizer: Any) -> np.ndarray:
    """Sorted unique ids of the BOS, EOS and pad tokens (those that exist). ``Int[k]``."""
    ids = {getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "pad")}
    return np.array(sorted(i for i in ids if i is not None), dtype=np.int64)


def newline_token_ids(tokenizer: Any) -> np.ndarray:
    """Ids whose decoded text is whitespace containing ``\\n`` (``\\n``, `` \\n\\n``, ...). ``Int[k]``."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return np.array([i for i, t in enumerate(texts) if "\n" in t and t.isspace()], dtype=np.int64)


def paper_dropped_ids(tokenizer: Any) -> np.ndarray:
    """The paper's dropped ids: the pad token (BOS/EOS when there is no pad token) and the
    id of ``"\\n"`` when it is a single token. ``Int[k]``."""
    ids = set()
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:  # TransformerLens sets pad = eos (= bos for GPT-2) when missing
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is not None:
        ids.add(int(pad))
    nl = tokenizer.encode("\n", add_special_tokens=False)
    if len(nl) == 1:
        ids.add(int(nl[0]))
    return np.array(sorted(ids), dtype=np.int64)


def keep_table(tokenizer: Any, rule: KeepRule = "ours") -> np.ndarray:
    """``Bool[vocab]``: False for the dropped ids. ``ours``: special (BOS/EOS/pad) and every
    whitespace newline id; ``paper``: :func:`paper_dropped_ids`. Cached per tokenizer."""
    if rule not in ("ours", "paper"):
        raise ValueError(f"keep rule must be 'ours' or 'paper', got {rule!r}")
    key = (id(tokenizer), rule)
    hit = _KEEP_TABLES.get(key)
    if hit is not None and hit[0]() is tokenizer:
        return hit[1]
    table = np.ones(len(tokenizer), dtype=bool)
    if rule == "paper":
        table[paper_dropped_ids(tokenizer)] = False
    else:
        table[special_ids(tokenizer)] = False
        table[newline_token_ids(tokenizer)] = False
    table.setflags(write=False)
    try:
        _KEEP_TABLES[key] = (weakref.ref(tokenizer), table)
    except TypeError:  # not weak-referenceable: just don't cache
        pass
    return table


def keep_mask(tokens: np.ndarray, tokenizer: Any, keep_all: bool = False,
              rule: KeepRule = "ours") -> np.ndarray:
    """``tokens: Int[n_seq, n_ctx]`` (any shape) -> ``Bool[n_seq, n_ctx]``, True = keep.

    ``rule="ours"`` (default): False on BOS/EOS/pad and every whitespace token containing a
    newline; ``rule="paper"``: False on the pad/BOS token and ``"\\n"`` only (see the module
    doc). All True if ``keep_all``.
    """
    tokens = np.asarray(tokens)
    if keep_all:
        return np.ones(tokens.shape, dtype=bool)
    table = keep_table(tokenizer, rule)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= len(table)):
        raise UserError(f"token ids span [{tokens.min()}, {tokens.max()}] but the tokenizer "
                        f"has {len(table)} tokens; the dataset was made with another tokenizer")
    return table[tokens]


def check_same_tokenizer(a_name: str, a_tok: Any, b_name: str, b_tok: Any) -> None:
    """Raise ``UserError`` naming both models if their tokenizers differ."""
    fa, fb = tokenizer_fingerprint(a_tok), tokenizer_fingerprint(b_tok)
    if fa != fb:
        raise UserError(
            f"models {a_name!r} and {b_name!r} use different tokenizers (vocab sizes "
            f"{len(a_tok)} vs {len(b_tok)}, fingerprints {fa[:12]} vs {fb[:12]}); models "
            "compared for universality must share one tokenizer: pick models of one family")
