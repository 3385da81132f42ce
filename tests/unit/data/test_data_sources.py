import gzip
import json
import lzma

import pytest

from universal_neurons.data.bundled import bundled_corpus_path, read_jsonl_xz
from universal_neurons.data.sources import open_source, parse_hub_spec
from universal_neurons.errors import UserError


def write_jsonl(path, docs, field="text", opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({"id": i, field: d}) + "\n")
    return path


@pytest.mark.parametrize("name,opener", [("d.jsonl", open), ("d.jsonl.gz", gzip.open),
                                         ("d.jsonl.xz", lzma.open), ("d.ndjson", open)])
def test_jsonl_formats(tmp_path, documents, name, opener):
    path = write_jsonl(tmp_path / name, documents, opener=opener)
    assert list(open_source(path).documents()) == documents


def test_text_field_and_nulls(tmp_path, documents):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": d}) for d in documents[:3])
                    + '\n{"body": null}\n\n')
    assert list(open_source(path, text_field="body").documents()) == documents[:3]


def test_txt_file_folder_and_split_docs(tmp_path, documents):
    (tmp_path / "one.txt").write_text(documents[0])
    assert list(open_source(tmp_path / "one.txt").documents()) == [documents[0]]
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    for i, d in enumerate(documents[:12]):
        (folder / ("sub" if i % 2 else "") / f"{i:02d}.txt").write_text(d)
    (folder / "notes.bin").write_bytes(b"\x00\x01")  # ignored: not a supported type
    got = list(open_source(folder).documents())
    assert sorted(got) == sorted(documents[:12]) and len(got) == 12
    joined = tmp_path / "joined.txt"
    joined.write_text("\n===\n".join(documents[:5]) + "\n===\n\n")
    assert list(open_source(joined, split_docs="===").documents()) == [d.strip() for d in documents[:5]]


def test_parquet(tmp_path, documents):
    import pandas as pd

    path = tmp_path / "d.parquet"
    pd.DataFrame({"content": documents, "n": range(len(documents))}).to_parquet(path)
    assert list(open_source(path, text_field="content").documents()) == documents
    with pytest.raises(UserError, match="'text'.*content"):
        open_source(path)


def test_load_from_disk(tmp_path, documents):
    import datasets

    datasets.Dataset.from_dict({"text": documents}).save_to_disk(str(tmp_path / "ds"))
    assert list(open_source(tmp_path / "ds").documents()) == documents
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": documents[:4]}),
                               "validation": datasets.Dataset.from_dict({"text": documents[4:9]})})
    dd.save_to_disk(str(tmp_path / "dd"))
    src = open_source(f"{tmp_path / 'dd'}@validation")
    assert list(src.documents()) == documents[4:9] and src.name.endswith("@validation")
    with pytest.raises(UserError, match="train, validation"):
        open_source(tmp_path / "dd")
    with pytest.raises(UserError, match="'nope'"):
        open_source(f"{tmp_path / 'dd'}@nope")


def test_shuffle_is_a_seeded_permutation(tmp_path, documents):
    import numpy as np

    src = open_source(write_jsonl(tmp_path / "d.jsonl", documents))
    order = np.random.default_rng(7).permutation(len(documents))
    assert src.documents(seed=7) == [documents[i] for i in order]
    assert src.documents(seed=8) != src.documents(seed=7)


def test_source_errors(tmp_path):
    with pytest.raises(UserError, match="nowhere.jsonl"):
        open_source(tmp_path / "nowhere.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="x.csv"):
        open_source(tmp_path / "x.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        open_source(tmp_path / "empty")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(UserError, match=r"bad.jsonl:2: no field 'text' \(found: txt\)"):
        list(open_source(bad).documents())
    bad.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(UserError, match="bad.jsonl:2: not valid JSON"):
        list(open_source(bad).documents())
    bad.write_text('{"text": 5}\n')
    with pytest.raises(UserError, match="'text' is int"):
        list(open_source(bad).documents())
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(UserError, match="latin.txt is not UTF-8"):
        list(open_source(latin).documents())
    with pytest.raises(UserError, match="bundled:dev"):
        open_source("bundled:dev")
    with pytest.raises(UserError, match="split-docs"):
        open_source(latin, split_docs="")


def test_hub_unreachable_is_a_user_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach 'https://huggingface.co'")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UserError, match="'org/pile'.*unreachable.*local file"):
        open_source("hf:org/pile:all@test")
    assert parse_hub_spec("hf:org/pile:all@test") == ("org/pile", "all", "test")
    assert parse_hub_spec("hf:pile") == ("pile", None, "train")
    with pytest.raises(UserError, match="hf:@x"):
        parse_hub_spec("hf:@x")


def test_hub_source_streams_and_shuffles(monkeypatch, documents):
    import datasets

    calls = {}

    def fake(name, config, split, streaming):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return datasets.IterableDataset.from_generator(lambda: ({"text": d} for d in documents))

    monkeypatch.setattr(datasets, "load_dataset", fake)
    src = open_source("hf:org/pile@validation")
    assert calls == dict(name="org/pile", config=None, split="validation", streaming=True)
    assert list(src.documents()) == documents
    shuffled = list(src.documents(seed=3))
    assert sorted(shuffled) == sorted(documents) and shuffled != documents


def test_bundled_corpus():
    for split in ("train", "test"):
        path = bundled_corpus_path(split)
        assert path.is_file() and path.name == f"corpus-{split}.jsonl.xz"
    texts = []
    for t in read_jsonl_xz(bundled_corpus_path("test")):
        texts.append(t)
        if len(texts) == 20:
            break
    assert all(isinstance(t, str) and t.strip() for t in texts)
    assert list(open_source("bundled:test").documents())[:20] == texts
    with pytest.raises(UserError, match="'dev'"):
        bundled_corpus_path("dev")
