"""Topic token sets of a corpus: tf-idf of documents x token ids and a small NMF (paper §4.3).

The paper's explanations include one boolean vocabulary feature per *topic*
(``explain.py::make_full_token_df`` joins ``dataframes/vocab_dfs/gpt2_topics.csv``: 64
columns ``is_<name>_topic``, each true for the 10-400 token ids of one topic). That table is
not published; judging by its contents it was derived without supervision from token
co-occurrence. Here it is derived, offline and deterministically, from the documents of the
run's token dataset:

1. **documents** (:func:`split_documents`): the dataset's windows without their BOS column,
   read as one stream and cut at EOS (``build_token_dataset`` joins documents with EOS), each
   document cut again into pieces of at most ``max_doc_tokens`` tokens; at most
   ``max_documents`` of them, evenly strided;
2. **tf-idf** (:func:`tfidf`): counts ``c[d, t]`` of every token id ``t`` in document ``d``,
   ``tf = c / len(d)``, ``idf = ln((1 + D) / (1 + df)) + 1`` (the smoothed form), rows scaled
   to unit L2 norm; token ids in fewer than ``min_df`` documents or in more than a share
   ``max_df`` of them, and special tokens, are left out;
3. **NMF** (:func:`nmf`): ``X ≈ W H`` with ``W [D, k] >= 0``, ``H [k, V] >= 0``, minimising
   ``‖X − WH‖²_F`` by Lee & Seung's multiplicative updates from a seeded random start (the
   objective never increases);
4. **token sets** (:func:`topic_sets`): topic ``j`` is the ``n_tokens`` ids of largest
   ``H[j]`` (positive weight only), named by its three first word-like tokens (lower-cased
   ASCII letters, 2+ characters, distinct): ``topic:lord_god_israel``.

Pure numpy / scipy; nothing is written here (``stages.explain`` writes the features).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

log = logging.getLogger(__name__)

TOPIC_PREFIX = "topic:"
DEFAULT_TOPICS = 24
DEFAULT_TOPIC_TOKENS = 100
DEFAULT_SEED = 0
MAX_DOC_TOKENS = 1024
MAX_DOCUMENTS = 20_000
_FLUSH = 1e-150
"""NMF entries below this are set to 0 (a change of the objective far below rounding)."""
_WORD = re.compile(r"[a-z]{2,}")


def split_documents(windows: np.ndarray, eos_id: int | None, max_doc_tokens: int = MAX_DOC_TOKENS,
                    max_documents: int = MAX_DOCUMENTS) -> tuple[np.ndarray, np.ndarray]:
    """``(doc Int[n], token Int[n])``: the document index of every token of ``windows``
    (``[n_seq, n_ctx]``, column 0 BOS and dropped), documents cut at ``eos_id`` (the EOS
    itself dropped) and into pieces of at most ``max_doc_tokens``; when there are more than
    ``max_documents`` pieces, that many evenly strided ones are kept (renumbered 0..)."""
    if max_doc_tokens < 1 or max_documents < 1:
        raise ValueError(f"max_doc_tokens and max_documents must be >= 1, got "
                         f"{max_doc_tokens}, {max_documents}")
    stream = np.asarray(windows)[:, 1:].reshape(-1).astype(np.int64)
    is_eos = stream == eos_id if eos_id is not None else np.zeros(len(stream), dtype=bool)
    doc = np.cumsum(is_eos)[~is_eos]  # EOS starts the next document and is dropped
    stream = stream[~is_eos]
    if not len(stream):
        return np.zeros(0, np.int64), stream
    first = np.r_[True, doc[1:] != doc[:-1]]  # first token of a document
    start = np.flatnonzero(first)
    offset = np.arange(len(stream)) - np.repeat(start, np.diff(np.r_[start, len(stream)]))
    piece_id = np.cumsum(first | (offset % max_doc_tokens == 0)) - 1
    n = int(piece_id[-1]) + 1
    if n > max_documents:
        chosen = np.unique(np.linspace(0, n - 1, max_documents).round().astype(np.int64))
        new = np.full(n, -1, dtype=np.int64)
        new[chosen] = np.arange(len(chosen))
        piece_id = new[piece_id]
        keep = piece_id >= 0
        piece_id, stream = piece_id[keep], stream[keep]
    return piece_id.astype(np.int64), stream


def count_matrix(doc: np.ndarray, token: np.ndarray, n_vocab: int) -> sp.csr_matrix:
    """``[D, n_vocab]`` sparse counts of token ids per document."""
    n_doc = int(doc.max()) + 1 if len(doc) else 0
    ones = np.ones(len(doc), dtype=np.float64)
    return sp.csr_matrix((ones, (doc, token)), shape=(n_doc, n_vocab))


def tfidf(counts: sp.csr_matrix, min_df: int = 2, max_df: float = 0.5,
          exclude: Sequence[int] = ()) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(X [D, V'], columns Int[V'])``: tf-idf rows of unit L2 norm over the kept token ids
    ``columns`` (see the module doc). Documents left with no kept token are zero rows."""
    counts = sp.csr_matrix(counts, dtype=np.float64)
    n_doc, n_vocab = counts.shape
    df = np.asarray((counts > 0).sum(axis=0)).ravel()  # [V]
    ok = (df >= min_df) & (df <= max_df * n_doc)
    ok[np.asarray(list(exclude), dtype=np.int64)] = False
    columns = np.flatnonzero(ok)
    length = np.asarray(counts.sum(axis=1)).ravel()  # [D] all tokens of the document
    tf = sp.diags(1.0 / np.maximum(length, 1.0)) @ counts[:, columns]
    idf = np.log((1.0 + n_doc) / (1.0 + df[columns])) + 1.0
    x = sp.csr_matrix(tf @ sp.diags(idf))
    norm = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = sp.csr_matrix(sp.diags(1.0 / np.where(norm > 0, norm, 1.0)) @ x)
    return x, columns


@dataclass
class NMFResult:
    w: np.ndarray  # [D, k]
    h: np.ndarray  # [k, V]
    objective: np.ndarray  # [iterations + 1] ‖X − WH‖²_F, the start first


def frobenius_objective(x: sp.spmatrix | np.ndarray, w: np.ndarray, h: np.ndarray,
                        x_sq: float | None = None) -> float:
    """``‖X − WH‖²_F = ‖X‖² − 2 tr(Wᵀ X Hᵀ) + tr(WᵀW · HHᵀ)`` without forming ``WH``."""
    if x_sq is None:
        x_sq = float(sp.csr_matrix(x).power(2).sum())
    cross = float(np.sum(w * (x @ h.T)))
    return x_sq - 2.0 * cross + float(np.sum((w.T @ w) * (h @ h.T)))


def nmf(x: sp.spmatrix | np.ndarray, k: int, seed: int = DEFAULT_SEED, max_iter: int = 300,
        tol: float = 1e-5, eps: float = 1e-12) -> NMFResult:
    """Non-negative ``X ≈ W H`` (rank ``k``) by multiplicative updates (Lee & Seung 2001),
    ``H ← H ∘ WᵀX / (WᵀWH + eps)``, then ``W ← W ∘ XHᵀ / (WHHᵀ + eps)``; starts from
    ``|N(0, 1)| · sqrt(mean(X) / k)`` drawn with ``seed``; stops after ``max_iter``
    iterations or when the objective falls by less than ``tol`` (relative) in one."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = sp.csr_matrix(x, dtype=np.float64)  # [D, V]
    if (x.data < 0).any():
        raise ValueError("NMF needs a non-negative matrix")
    n_doc, n_vocab = x.shape
    rng = np.random.default_rng(seed)
    scale = np.sqrt(max(float(x.sum()) / max(n_doc * n_vocab, 1), 1e-12) / k)
    w = scale * np.abs(rng.standard_normal((n_doc, k)))
    h = scale * np.abs(rng.standard_normal((k, n_vocab)))
    x_sq = float(x.multiply(x).sum())
    history = [frobenius_objective(x, w, h, x_sq)]
    xt = x.T.tocsr()  # [V, D]
    # the dense products are small ([k, k] results): einsum's plain loops, no BLAS threads
    # (whose start-up dominates at these sizes and stalls on a busy machine)
    for _ in range(max_iter):
        h *= np.asarray(xt @ w).T / (np.einsum("kj,jv->kv", _gram(w), h) + eps)
        xh, hh = np.asarray(x @ h.T), np.einsum("kv,jv->kj", h, h)  # [D, k], [k, k]
        w *= xh / (np.einsum("dk,kj->dj", w, hh) + eps)
        for m in (h, w):  # entries headed for 0 would turn subnormal (slow arithmetic)
            m[m < _FLUSH] = 0.0
        # the objective from the products of the update: ‖X‖² − 2 tr(Wᵀ X Hᵀ) + tr(WᵀW HHᵀ)
        history.append(x_sq - 2.0 * float(np.sum(w * xh)) + float(np.sum(_gram(w) * hh)))
        before = history[-2]
        if before > 0 and (before - history[-1]) / before < tol:
            break
    return NMFResult(w, h, np.asarray(history))


def _gram(w: np.ndarray) -> np.ndarray:
    """``WᵀW`` ``[k, k]``."""
    return np.einsum("dk,dj->kj", w, w)


@dataclass
class Topics:
    """Topic token sets over a vocabulary."""

    names: list[str]
    """``[k]`` names without the prefix, e.g. ``lord_god_israel``."""
    token_ids: list[np.ndarray]
    """``[k]`` the token ids of each topic, by decreasing weight."""
    weights: list[np.ndarray]
    """``[k]`` their NMF weights ``H[j, t]``."""
    n_documents: int = 0
    objective: np.ndarray | None = None

    @property
    def columns(self) -> list[str]:
        return [f"{TOPIC_PREFIX}{n}" for n in self.names]

    def features(self, n_vocab: int) -> pd.DataFrame:
        """``[n_vocab, k]`` bool frame, one ``topic:<name>`` column per topic."""
        mat = np.zeros((n_vocab, len(self.names)), dtype=bool)
        for j, ids in enumerate(self.token_ids):
            mat[ids, j] = True
        return pd.DataFrame(mat, columns=self.columns)

    def table(self, strings: Sequence[str]) -> pd.DataFrame:
        """``topic, rank, token_id, token, weight``: every token of every topic."""
        rows = [(f"{TOPIC_PREFIX}{n}", r, int(t), strings[int(t)], float(wt))
                for n, ids, ws in zip(self.names, self.token_ids, self.weights)
                for r, (t, wt) in enumerate(zip(ids, ws))]
        return pd.DataFrame(rows, columns=["topic", "rank", "token_id", "token", "weight"])


def topic_name(ids: np.ndarray, strings: Sequence[str], n_words: int = 3) -> str:
    """The first ``n_words`` distinct word-like forms of ``ids`` joined by ``_`` ('' if none)."""
    words: list[str] = []
    for t in ids:
        form = strings[int(t)].strip().lower()
        if _WORD.fullmatch(form) and form not in words:
            words.append(form)
            if len(words) == n_words:
                break
    return "_".join(words)


def topic_sets(h: np.ndarray, columns: np.ndarray, strings: Sequence[str],
               n_tokens: int = DEFAULT_TOPIC_TOKENS) -> Topics:
    """Each row of ``h`` (``[k, V']`` over the token ids ``columns``): its ``n_tokens``
    ids of largest positive weight (ties by id), named by :func:`topic_name`; topics with
    no positive weight are dropped, repeated names get ``_2``, ``_3``, ..."""
    names: list[str] = []
    ids_out: list[np.ndarray] = []
    w_out: list[np.ndarray] = []
    for j, row in enumerate(np.asarray(h, dtype=np.float64)):
        order = np.lexsort((columns, -row))[:n_tokens]
        order = order[row[order] > 0]
        if not len(order):
            continue
        ids = np.asarray(columns)[order]
        name = topic_name(ids, strings) or f"topic{j}"
        base, i = name, 2
        while name in names:
            name, i = f"{base}_{i}", i + 1
        names.append(name)
        ids_out.append(ids.astype(np.int64))
        w_out.append(row[order])
    return Topics(names, ids_out, w_out)


def derive_topics(windows: np.ndarray, strings: Sequence[str], *, eos_id: int | None,
                  k: int = DEFAULT_TOPICS, n_tokens: int = DEFAULT_TOPIC_TOKENS,
                  special_ids: Sequence[int] = (), seed: int = DEFAULT_SEED,
                  min_df: int = 2, max_df: float = 0.5,
                  max_doc_tokens: int = MAX_DOC_TOKENS,
                  max_documents: int = MAX_DOCUMENTS) -> Topics:
    """Topics of the documents of ``windows`` (``[n_seq, n_ctx]`` token ids, column 0 BOS)
    over a vocabulary of ``len(strings)`` ids: the four steps of the module doc."""
    n_vocab = len(strings)
    doc, token = split_documents(windows, eos_id, max_doc_tokens, max_documents)
    if len(token) and int(token.max()) >= n_vocab:
        raise ValueError(f"token id {int(token.max())} outside a vocabulary of {n_vocab}")
    counts = count_matrix(doc, token, n_vocab)
    x, columns = tfidf(counts, min_df, max_df, exclude=special_ids)
    k = min(k, *x.shape) if x.shape[0] and x.shape[1] else 0
    if k < 1:
        log.warning("no topics: %d documents, %d token ids in %d to %.0f%% of them",
                    x.shape[0], x.shape[1], min_df, 100 * max_df)
        return Topics([], [], [], x.shape[0])
    fit = nmf(x, k, seed)
    topics = topic_sets(fit.h, columns, strings, n_tokens)
    topics.n_documents, topics.objective = x.shape[0], fit.objective
    log.info("%d topics from %d documents x %d token ids (NMF: %d iterations, objective "
             "%.4g -> %.4g)", len(topics.names), x.shape[0], x.shape[1],
             len(fit.objective) - 1, fit.objective[0], fit.objective[-1])
    return topics
