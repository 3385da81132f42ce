import json
import sys
import types

import numpy as np
import pytest

from universal_neurons.cli import main
from universal_neurons.data.dataset import open_token_dataset


@pytest.fixture()
def corpus(tmp_path, documents):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"body": d}) + "\n" for d in documents))
    return path


@pytest.fixture()
def tok_dir(tmp_path, tokenizer):
    tokenizer.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def test_tokenize_with_tokenizer_folder(tmp_path, corpus, tok_dir, tokenizer, capsys):
    out = tmp_path / "ds"
    rc = main(["tokenize", str(corpus), "--tokenizer", str(tok_dir), "--out", str(out),
               "--n-ctx", "16", "--tokens", "0.08k", "--seed", "3", "--text-field", "body", "--quiet"])
    assert rc == 0
    line = capsys.readouterr().out.strip()
    assert "5 sequences x 16 = 80 tokens" in line and str(corpus) in line and "\n" not in line
    ds = open_token_dataset(out)
    assert ds.meta["seed"] == 3 and ds.meta["tokenizer"] == str(tok_dir)
    ds.check_tokenizer(tokenizer, "tiny")
    # a bare tokenizer.json gives the same tokens
    bare = tmp_path / "bare.json"
    bare.write_bytes((tok_dir / "tokenizer.json").read_bytes())
    rc = main(["tokenize", str(corpus), "--tokenizer", str(bare), "--out", str(tmp_path / "ds2"),
               "--n-ctx", "16", "--tokens", "80", "--seed", "3", "--text-field", "body", "--quiet"])
    assert rc == 0
    np.testing.assert_array_equal(open_token_dataset(tmp_path / "ds2").tokens, ds.tokens)


def test_tokenize_with_model(tmp_path, corpus, tokenizer, monkeypatch, capsys):
    fake = types.ModuleType("universal_neurons.models.loading")
    fake.load_model = lambda spec: types.SimpleNamespace(name=spec, tokenizer=tokenizer)
    monkeypatch.setitem(sys.modules, "universal_neurons.models.loading", fake)
    rc = main(["tokenize", str(corpus), "--model", "tiny-gpt2-a", "--out", str(tmp_path / "ds"),
               "--n-ctx", "8", "--text-field", "body", "--no-shuffle", "--quiet"])
    assert rc == 0
    assert open_token_dataset(tmp_path / "ds").meta["tokenizer"] == "tiny-gpt2-a"


def test_tokenize_errors_exit_2(tmp_path, corpus, tok_dir, capsys):
    args = ["tokenize", str(corpus), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "ds"),
            "--n-ctx", "16", "--quiet"]
    assert main(args) == 2  # field "text" missing
    err = capsys.readouterr().err
    assert "no field 'text'" in err and err.count("\n") == 1
    assert main(args + ["--text-field", "body", "--tokens", "10M"]) == 2
    assert "asked for 10,000,000 tokens" in capsys.readouterr().err
    assert main(["tokenize", str(corpus), "--tokenizer", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "x")]) == 2
    assert "cannot load tokenizer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["tokenize", str(corpus), "--tokenizer", str(tok_dir), "--out", "x", "--tokens", "lots"])
    assert "bad count 'lots'" in capsys.readouterr().err
