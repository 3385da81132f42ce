"""``data.token_sources``: every token's corpus source, checked by decoding each run of
same-source tokens and finding it in a document of that source (read with json + lzma)."""

from __future__ import annotations

import json
import lzma

import numpy as np
import pytest

from universal_neurons.data.bundled import bundled_corpus_path
from universal_neurons.data.dataset import build_token_dataset, open_token_dataset
from universal_neurons.data.token_sources import NO_SOURCE, token_sources
from universal_neurons.errors import UserError


@pytest.fixture(scope="module")
def bundled_ds(tmp_path_factory, tokenizer):
    out = tmp_path_factory.mktemp("src") / "ds"
    return build_token_dataset("bundled:test", tokenizer, out, n_ctx=64, tokens=64 * 400,
                               show_progress=False)


def test_sources_decode_into_documents_of_that_source(bundled_ds, tokenizer):
    n_seq = 400
    labels, names = token_sources(bundled_ds, tokenizer, n_seq)
    assert labels.shape == (n_seq, 64) and (labels[:, 0] == NO_SOURCE).all()
    assert (labels[:, 1:] >= 0).all()
    docs: dict[str, list[str]] = {}
    with lzma.open(bundled_corpus_path("test"), "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            docs.setdefault(rec["source"], []).append(rec["text"])
    assert names == sorted(docs)
    flat_tok = np.asarray(bundled_ds.tokens[:n_seq, 1:]).reshape(-1)
    flat_lab = labels[:, 1:].reshape(-1)
    eos = bundled_ds.meta["eos_id"]
    starts = [0, *np.flatnonzero(flat_tok == eos).tolist(), len(flat_tok)]
    checked = 0
    for a, b in zip(starts[:-1], starts[1:]):
        seg_lab = flat_lab[a:b]
        assert len(set(seg_lab.tolist())) == 1  # one source per document (EOS included)
        body = [int(t) for t in flat_tok[a:b] if t != eos]
        if not body:
            continue
        text = tokenizer.decode(body, clean_up_tokenization_spaces=False).rstrip("\ufffd")
        source = names[int(seg_lab[0])]
        assert any(text in d for d in docs[source]), (source, text[:60])
        checked += 1
    assert checked >= 2 and len(set(flat_lab.tolist())) >= 2


def test_other_sources_and_changed_tokens_are_refused(bundled_ds, tokenizer, tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("some words here " * 200)
    ds = build_token_dataset(plain, tokenizer, tmp_path / "p", n_ctx=16, show_progress=False)
    with pytest.raises(UserError, match="bundled corpus"):
        token_sources(ds, tokenizer, 2)
    copy = tmp_path / "copy"
    copy.mkdir()
    tokens = np.array(bundled_ds.tokens)
    tokens[3, 10] = (int(tokens[3, 10]) + 1) % len(tokenizer)
    np.save(copy / "tokens.npy", tokens)
    (copy / "meta.json").write_text(json.dumps(bundled_ds.meta))
    with pytest.raises(UserError, match="does not give back"):
        token_sources(open_token_dataset(copy), tokenizer, 5)


def test_sources_of_chosen_windows(bundled_ds, tokenizer):
    from universal_neurons.data.dataset import spread_rows

    full, names = token_sources(bundled_ds, tokenizer, 400)
    rows = np.array([0, 3, 17, 250, 399])
    part, names_part = token_sources(bundled_ds, tokenizer, rows)
    assert names_part == names and np.array_equal(part, full[rows])
    spread = spread_rows(400, 7)  # round(linspace(0, 399, 7)), both ends included
    assert spread.tolist() == [0, 66, 133, 200, 266, 332, 399]
    assert spread_rows(5, 9).tolist() == [0, 1, 2, 3, 4]
