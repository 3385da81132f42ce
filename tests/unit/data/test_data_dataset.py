import json

import numpy as np
import pytest
from data_helpers import oracle_stream

from universal_neurons.data import dataset as dsmod
from universal_neurons.data.dataset import (
    build_token_dataset,
    default_dataset,
    open_token_dataset,
    parse_count,
)
from universal_neurons.data.tokens import tokenizer_fingerprint
from universal_neurons.errors import UserError

N_CTX = 16


@pytest.fixture()
def corpus(tmp_path, documents):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    return path


def build(corpus, tokenizer, out, **kw):
    kw = {"n_ctx": N_CTX, "show_progress": False, **kw}
    return build_token_dataset(corpus, tokenizer, out, **kw)


def test_round_trip_matches_direct_tokenization(tmp_path, corpus, documents, tokenizer, raw_tokenizer):
    ds = build(corpus, tokenizer, tmp_path / "ds", shuffle_docs=False)
    stream = oracle_stream(raw_tokenizer, documents)
    n_seq = len(stream) // (N_CTX - 1)
    assert ds.tokens.shape == (n_seq, N_CTX) and ds.n_tokens == n_seq * N_CTX
    assert ds.tokens.dtype == np.uint16 and isinstance(ds.tokens, np.memmap)
    assert (ds.tokens[:, 0] == 0).all()
    np.testing.assert_array_equal(ds.tokens[:, 1:].ravel(), stream[: n_seq * (N_CTX - 1)])
    m = ds.meta
    assert (m["n_seq"], m["n_ctx"], m["n_tokens"], m["vocab_size"]) == (n_seq, N_CTX, ds.n_tokens, 300)
    assert m["tokenizer_fingerprint"] == tokenizer_fingerprint(tokenizer) == ds.fingerprint
    assert m["source"] == str(corpus) and m["bos_id"] == 0 and m["seed"] == 0
    again = open_token_dataset(tmp_path / "ds")
    np.testing.assert_array_equal(again.tokens, ds.tokens)
    assert open_token_dataset(tmp_path / "ds" / "tokens.npy").n_seq == n_seq


def test_shuffle_deterministic_under_seed(tmp_path, corpus, documents, tokenizer, raw_tokenizer):
    a = build(corpus, tokenizer, tmp_path / "a", seed=5)
    b = build(corpus, tokenizer, tmp_path / "b", seed=5)
    c = build(corpus, tokenizer, tmp_path / "c", seed=6)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.tokens.shape == c.tokens.shape and not np.array_equal(a.tokens, c.tokens)
    order = np.random.default_rng(5).permutation(len(documents))
    stream = oracle_stream(raw_tokenizer, [documents[i] for i in order])
    np.testing.assert_array_equal(a.tokens[:, 1:].ravel(), stream[: a.n_seq * (N_CTX - 1)])


def test_tokens_cap(tmp_path, corpus, tokenizer):
    ds = build(corpus, tokenizer, tmp_path / "cap", tokens=5 * N_CTX + 7)
    full = build(corpus, tokenizer, tmp_path / "full")
    assert ds.n_seq == 5 and ds.n_tokens == 5 * N_CTX
    np.testing.assert_array_equal(ds.tokens, full.tokens[:5])
    with pytest.raises(UserError, match=f"gives only {full.n_tokens:,}"):
        build(corpus, tokenizer, tmp_path / "big", tokens=full.n_tokens + N_CTX)
    with pytest.raises(UserError, match="tokens=15 "):
        build(corpus, tokenizer, tmp_path / "tiny", tokens=15)


@pytest.mark.parametrize("fmt", ["txt", "parquet", "disk"])
def test_build_from_other_formats(tmp_path, documents, tokenizer, raw_tokenizer, fmt):
    if fmt == "txt":
        src = tmp_path / "docs"
        src.mkdir()
        for i, d in enumerate(documents):
            (src / f"{i:03d}.txt").write_text(d)
    elif fmt == "parquet":
        import pandas as pd

        src = tmp_path / "d.parquet"
        pd.DataFrame({"text": documents}).to_parquet(src)
    else:
        import datasets

        src = tmp_path / "saved"
        datasets.Dataset.from_dict({"text": documents}).save_to_disk(str(src))
    ds = build(src, tokenizer, tmp_path / "out", shuffle_docs=False)
    stream = oracle_stream(raw_tokenizer, documents)
    np.testing.assert_array_equal(ds.tokens[:, 1:].ravel(), stream[: ds.n_seq * (N_CTX - 1)])


def test_iter_batches(tmp_path, corpus, tokenizer):
    ds = build(corpus, tokenizer, tmp_path / "ds", tokens=7 * N_CTX)
    batches = list(ds.iter_batches(3))
    assert [s for s, _ in batches] == [0, 3, 6]
    assert all(b.dtype == np.int64 and b.shape[1] == N_CTX for _, b in batches)
    np.testing.assert_array_equal(np.concatenate([b for _, b in batches]), ds.tokens)
    assert [(s, len(b)) for s, b in ds.iter_batches(2, start_seq=3, end_seq=6)] == [(3, 2), (5, 1)]
    with pytest.raises(UserError, match=r"\[5, 9\)"):
        list(ds.iter_batches(2, start_seq=5, end_seq=9))


def test_check_tokenizer(tmp_path, corpus, tokenizer, other_tokenizer):
    ds = build(corpus, tokenizer, tmp_path / "ds")
    ds.check_tokenizer(tokenizer, "tiny-a")
    fp = tokenizer_fingerprint(other_tokenizer)
    with pytest.raises(UserError, match=f"{ds.fingerprint[:12]}.*'tiny-b'.*{fp[:12]}"):
        ds.check_tokenizer(other_tokenizer, "tiny-b")


def test_large_vocab_uses_uint32(tmp_path, corpus, tokenizer):
    class Wide:  # the tiny tokenizer, claiming a vocabulary beyond uint16
        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __len__(self):
            return 70_000

        def __call__(self, *a, **k):
            return tokenizer(*a, **k)

    ds = build(corpus, Wide(), tmp_path / "wide")
    assert ds.tokens.dtype == np.uint32 and ds.meta["vocab_size"] == 70_000


def test_short_or_empty_corpus(tmp_path, tokenizer, raw_tokenizer):
    (tmp_path / "short.txt").write_text("a b")
    n = len(raw_tokenizer.encode("a b").ids)
    with pytest.raises(UserError, match=f"gives {n} tokens, less than one window of n_ctx=16"):
        build(tmp_path / "short.txt", tokenizer, tmp_path / "o")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    with pytest.raises(UserError, match="gives 0 tokens"):
        build(tmp_path / "blank.txt", tokenizer, tmp_path / "o")
    assert not (tmp_path / "o" / "meta.json").exists()
    with pytest.raises(UserError, match=r"n_ctx must be at least 2 \(BOS plus one token\), got 1"):
        build(tmp_path / "short.txt", tokenizer, tmp_path / "o", n_ctx=1)


def test_existing_output_needs_overwrite(tmp_path, corpus, tokenizer):
    build(corpus, tokenizer, tmp_path / "ds", tokens=2 * N_CTX)
    with pytest.raises(UserError, match="--overwrite"):
        build(corpus, tokenizer, tmp_path / "ds")
    assert build(corpus, tokenizer, tmp_path / "ds", tokens=3 * N_CTX, overwrite=True).n_seq == 3
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="is a file"):
        build(corpus, tokenizer, tmp_path / "file")


def test_interrupted_write_leaves_nothing_complete(tmp_path, corpus, tokenizer, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("disk full")

    build(corpus, tokenizer, tmp_path / "ds", tokens=2 * N_CTX)
    monkeypatch.setattr(np, "save", boom)
    for out, kw in [(tmp_path / "new", {}), (tmp_path / "ds", {"overwrite": True})]:
        with pytest.raises(RuntimeError, match="disk full"):
            build(corpus, tokenizer, out, **kw)
        assert not (out / "meta.json").exists()
        assert not [p for p in out.iterdir() if p.name.startswith(".")]  # temp files removed
        with pytest.raises(UserError, match="no meta.json"):
            open_token_dataset(out)


def test_open_errors(tmp_path, corpus, tokenizer):
    with pytest.raises(UserError, match="missing.*does not exist"):
        open_token_dataset(tmp_path / "missing")
    (tmp_path / "f.bin").write_text("")
    with pytest.raises(UserError, match="f.bin is a file"):
        open_token_dataset(tmp_path / "f.bin")
    ds = build(corpus, tokenizer, tmp_path / "ds", tokens=4 * N_CTX)
    meta_path, tok_path = ds.path / "meta.json", ds.path / "tokens.npy"
    meta = json.loads(meta_path.read_text())
    good = tok_path.read_bytes()

    meta_path.write_text("{not json")
    with pytest.raises(UserError, match="meta.json is corrupt"):
        open_token_dataset(ds.path)
    meta_path.write_text(json.dumps({"n_seq": 4}))
    with pytest.raises(UserError, match="lacks n_ctx, tokenizer_fingerprint"):
        open_token_dataset(ds.path)
    meta_path.write_text(json.dumps({**meta, "n_seq": 9}))
    with pytest.raises(UserError, match=r"uint16\[4, 16\] but meta.json says .*\[9, 16\]"):
        open_token_dataset(ds.path)
    meta_path.write_text(json.dumps({**meta, "n_seq": 0}))
    with pytest.raises(UserError, match="empty \\(n_seq=0\\)"):
        open_token_dataset(ds.path)
    meta_path.write_text(json.dumps(meta))
    tok_path.write_bytes(good[: len(good) // 2])
    with pytest.raises(UserError, match="cannot read .*tokens.npy"):
        open_token_dataset(ds.path)
    tok_path.unlink()
    with pytest.raises(UserError, match="no tokens.npy"):
        open_token_dataset(ds.path)


def test_default_dataset_cached(tmp_path, tokenizer, monkeypatch):
    monkeypatch.setenv("UNIVERSAL_NEURONS_CACHE", str(tmp_path / "cache"))
    ds = default_dataset(tokenizer, n_ctx=32, tokens=4 * 32, show_progress=False)
    assert ds.path.parent == tmp_path / "cache" / "datasets"
    assert ds.n_seq == 4 and ds.meta["source"] == "bundled:test"
    assert default_dataset(tokenizer, n_ctx=32, tokens=128).meta["created"] == ds.meta["created"]
    monkeypatch.setattr(dsmod, "build_token_dataset", None)  # a rebuild would fail
    np.testing.assert_array_equal(default_dataset(tokenizer, n_ctx=32, tokens=128).tokens, ds.tokens)
    monkeypatch.undo()
    d2 = default_dataset(tokenizer, n_ctx=32, tokens=64, cache_dir=tmp_path / "c2", show_progress=False)
    assert d2.path.parent == tmp_path / "c2" and d2.n_seq == 2


def test_parse_count():
    assert parse_count("100M") == 100_000_000
    assert parse_count("1.5k") == 1500 and parse_count("2_048") == 2048 and parse_count("3B") == 3 * 10**9
    for bad in ("ten", "1.5", "-3"):
        with pytest.raises(ValueError, match=bad):
            parse_count(bad)


def test_tokenizer_without_bos_or_eos(tmp_path, corpus, tokenizer):
    class NoSpecials:
        bos_token_id = eos_token_id = None

        def __getattr__(self, name):
            return getattr(tokenizer, name)

        def __len__(self):
            return len(tokenizer)

    with pytest.raises(UserError, match="'odd-tok' has neither a BOS nor an EOS"):
        build(corpus, NoSpecials(), tmp_path / "o", tokenizer_name="odd-tok")
