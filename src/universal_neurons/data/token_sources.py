"""The corpus source of every token of a dataset built from the bundled corpus.

The bundled corpus's lines carry a ``source`` (KJV, Jargon File, Devil's Dictionary, Python
docs, WordNet glosses): the analogue of the Pile's subsets. A token dataset does not store
it (windows cut across documents), so it is recovered by re-reading the split the way
``build_token_dataset`` read it: the same documents, the same shuffle (``meta.json``'s
seed), tokenized again and joined by EOS. The recovered tokens are checked against
``tokens.npy``; any difference is an error, never a silent mislabelling.
"""

from __future__ import annotations

import json
import lzma
from typing import Any

import numpy as np

from universal_neurons.errors import UserError

NO_SOURCE = -1
"""The label of BOS (column 0 of every window)."""


def bundled_records(split: str) -> list[tuple[str, str]]:
    """``(source, text)`` of every non-empty document of a bundled split, in file order."""
    from universal_neurons.data.bundled import bundled_corpus_path

    out = []
    with lzma.open(bundled_corpus_path(split), "rt", encoding="utf-8") as f:  # type: ignore[arg-type]
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if rec["text"] and rec["text"].strip():
                    out.append((str(rec.get("source", "")), rec["text"]))
    return out


def token_sources(dataset: Any, tokenizer: Any, rows: int | np.ndarray
                  ) -> tuple[np.ndarray, list[str]]:
    """``(labels Int[n_rows, n_ctx], source names)``: the source index of every token of
    the windows ``rows`` (indices into the dataset, or an int ``n``: the first ``n``;
    :data:`NO_SOURCE` for BOS; the EOS before a document belongs to that document).

    UserError when the dataset was not built from the bundled corpus with whole documents,
    or when re-tokenizing does not give its tokens back.
    """
    meta = dataset.meta
    src = str(meta.get("source", ""))
    if not src.startswith("bundled:") or meta.get("split_docs"):
        raise UserError(f"token dataset {dataset.path} was built from {src!r}; corpus sources "
                        "are known only for datasets of the bundled corpus (bundled:test or "
                        "bundled:train, whole documents)")
    records = bundled_records(src.split(":", 1)[1])
    if meta.get("shuffle_docs", True):
        order = np.random.default_rng(meta.get("seed", 0)).permutation(len(records))
        records = [records[i] for i in order]
    names = sorted({s for s, _ in records})
    index = {s: i for i, s in enumerate(names)}
    rows = np.arange(rows) if isinstance(rows, (int, np.integer)) else np.asarray(rows)
    n_seq = int(rows.max()) + 1 if len(rows) else 0  # windows re-read: up to the last one
    n_ctx = dataset.n_ctx
    need = n_seq * (n_ctx - 1)
    eos = int(meta["eos_id"])
    ids: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    have, pos, batch = 0, 0, 8
    while have < need and pos < len(records):
        chunk = records[pos: pos + batch]
        encoded = tokenizer([t for _, t in chunk], add_special_tokens=False,
                            verbose=False)["input_ids"]
        for j, ((source, _), toks) in enumerate(zip(chunk, encoded)):
            piece = ([eos] if pos + j else []) + list(toks)
            ids.append(np.asarray(piece, dtype=np.int64))
            labels.append(np.full(len(piece), index[source], dtype=np.int16))
            have += len(piece)
        pos, batch = pos + len(chunk), min(2 * batch, 256)
    stream = np.concatenate(ids)[:need] if ids else np.zeros(0, np.int64)
    expected = np.asarray(dataset.tokens[:n_seq, 1:], dtype=np.int64).reshape(-1)
    if len(stream) < need or not np.array_equal(stream, expected):
        raise UserError(f"re-reading {src} does not give back the tokens of {dataset.path} "
                        "(another corpus version or tokenizer?); rebuild the dataset with "
                        "`universal-neurons tokenize` to know its corpus sources")
    out = np.full((len(rows), n_ctx), NO_SOURCE, dtype=np.int16)
    if need:
        out[:, 1:] = np.concatenate(labels)[:need].reshape(n_seq, n_ctx - 1)[rows]
    return out, names
