"""load_model: every kind of spec, and a one-line UserError naming the value for each failure."""

from __future__ import annotations

import shutil
import time

import pytest
import torch

from helpers import save_model_folder, tiny_tokenizer
from universal_neurons.errors import UserError
from universal_neurons.models import loading, registry
from universal_neurons.models.adapters import GPT2Adapter, NeoXAdapter
from universal_neurons.models.loading import (
    check_same_tokenizer,
    load_model,
    load_models,
    tokenizers_match,
)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_load_local_folder(model_folder):
    m = load_model(str(model_folder))
    assert (m.name, m.source, m.revision) == ("tiny-local", "local", None)
    assert not m.hf_model.training
    assert not any(p.requires_grad for p in m.hf_model.parameters())
    assert next(m.hf_model.parameters()).dtype == torch.float32
    assert isinstance(m.adapter, GPT2Adapter) and m.adapter.d_mlp == 96
    assert m.tokenizer("w1 w2")["input_ids"] == [2, 3]
    acts = m.adapter.capture(torch.tensor([[0, 5, 7]]))["post"]
    assert acts.shape == (2, 1, 3, 96)


def test_load_dtype(model_folder):
    m = load_model(str(model_folder), dtype=torch.float64)
    assert next(m.hf_model.parameters()).dtype == torch.float64
    assert m.adapter.processed_weights().W_in.dtype == torch.float32


def test_bundled_member_not_built(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "bundled_root", lambda: tmp_path)
    with pytest.raises(UserError) as e:
        load_model("tiny-gpt2-b")
    msg = one_line(e)
    assert "'tiny-gpt2-b'" in msg and "not built" in msg and "universal-neurons zoo build" in msg


def test_bundled_member_loads_fast(tmp_path, monkeypatch, model_folder):
    monkeypatch.setattr(registry, "bundled_root", lambda: tmp_path)
    shutil.copytree(model_folder, tmp_path / "tiny-gpt2-a")
    load_model("tiny-gpt2-a")  # warm imports and caches
    t0 = time.perf_counter()
    m = load_model("tiny-gpt2-a")
    elapsed = time.perf_counter() - t0
    assert (m.name, m.source) == ("tiny-gpt2-a", "bundled")
    assert elapsed < 1.0, f"loading a bundled member took {elapsed:.2f}s"


def test_revision_is_passed_to_from_pretrained(monkeypatch, model_folder):
    """``id@revision`` reaches from_pretrained as ``revision=``; the name keeps it."""
    import transformers

    seen = []
    real_model = transformers.AutoModelForCausalLM.from_pretrained
    real_tok = transformers.AutoTokenizer.from_pretrained

    def fake_model(location, **kw):
        seen.append(("model", location, kw.get("revision"), kw.get("trust_remote_code")))
        return real_model(str(model_folder), dtype=kw["dtype"])

    def fake_tok(location, **kw):
        seen.append(("tokenizer", location, kw.get("revision"), kw.get("trust_remote_code")))
        return real_tok(str(model_folder))

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake_tok)
    m = load_model("EleutherAI/pythia-160m-seed1@step1000")
    assert seen == [("model", "EleutherAI/pythia-160m-seed1", "step1000", False),
                    ("tokenizer", "EleutherAI/pythia-160m-seed1", "step1000", False)]
    assert (m.name, m.source, m.revision) == (
        "EleutherAI/pythia-160m-seed1@step1000", "hub", "step1000")
    seen.clear()
    m = load_model("pythia-160m-seed2@step0")
    assert seen[0][1:3] == ("EleutherAI/pythia-160m-seed2", "step0")
    assert (m.name, m.source) == ("pythia-160m-seed2@step0", "alias")


def test_hub_offline_uncached(tmp_path, monkeypatch):
    """The conftest forces HF_HUB_OFFLINE; an uncached id fails fast with a clear message."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    for spec in ("never-org/never-model-xyz", "stanford-gpt2-small-e@checkpoint-1"):
        t0 = time.perf_counter()
        with pytest.raises(UserError) as e:
            load_model(spec)
        msg = one_line(e)
        assert repr(spec) in msg, msg
        assert "cannot download" in msg and "offline?" in msg and "HF_HOME" in msg
        assert time.perf_counter() - t0 < 10


def test_unknown_name():
    with pytest.raises(UserError) as e:
        load_model("stanford-gpt2-smal-a")
    msg = one_line(e)
    assert "'stanford-gpt2-smal-a'" in msg and "stanford-gpt2-small-a" in msg
    assert "universal-neurons models" in msg


@pytest.mark.parametrize("remove, expect", [
    (("config.json",), "no config.json"),
    (("tokenizer.json",), "no tokenizer files"),
    (("model.safetensors",), "no weights"),
])
def test_incomplete_local_folder(tmp_path, model_folder, remove, expect):
    folder = tmp_path / "broken"
    shutil.copytree(model_folder, folder)
    for name in remove:
        (folder / name).unlink()
    with pytest.raises(UserError) as e:
        load_model(str(folder))
    msg = one_line(e)
    assert str(folder) in msg and expect in msg


def test_corrupt_weights_name_the_folder(tmp_path, model_folder):
    folder = tmp_path / "corrupt"
    shutil.copytree(model_folder, folder)
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError) as e:
        load_model(str(folder))
    assert str(folder) in one_line(e)


def test_tokenizer_checks(tmp_path, model_folder):
    a = load_model(str(model_folder))
    b_dir = tmp_path / "same-tok"
    save_model_folder(b_dir, "neox", seed=1)
    b = load_model(str(b_dir))
    assert isinstance(b.adapter, NeoXAdapter)
    assert tokenizers_match([a, b])
    assert len(check_same_tokenizer([a, b])) == 64  # sha256 hex
    c_dir = tmp_path / "other-tok"
    save_model_folder(c_dir, "gpt2", tokenizer=tiny_tokenizer(words=("hello",)), seed=2)
    c = load_model(str(c_dir))
    assert not tokenizers_match([a, b, c])
    with pytest.raises(UserError) as e:
        check_same_tokenizer([a, b, c])
    msg = one_line(e)
    assert "'tiny-local'" in msg and "'other-tok'" in msg and "different tokenizers" in msg


def test_load_models_expands_and_checks(tmp_path, monkeypatch, model_folder):
    monkeypatch.setattr(registry, "bundled_root", lambda: tmp_path)
    for c in "abcde":
        (tmp_path / f"tiny-gpt2-{c}").symlink_to(model_folder, target_is_directory=True)
    models = load_models(["tiny-gpt2"])
    assert [m.name for m in models] == [f"tiny-gpt2-{c}" for c in "abcde"]
    with pytest.raises(UserError, match="given twice"):
        load_models(["tiny-gpt2", "tiny-gpt2-a"])


def test_loading_module_sets_no_env(monkeypatch):
    import os

    before = dict(os.environ)
    with pytest.raises(UserError):
        loading.load_model("never-org/never-model-xyz")
    assert dict(os.environ) == before


def test_load_tokenizer_only(model_folder, tmp_path):
    from universal_neurons.data.tokens import tokenizer_fingerprint
    from universal_neurons.models.loading import load_tokenizer

    tok = load_tokenizer(str(model_folder))
    assert tokenizer_fingerprint(tok) == tokenizer_fingerprint(load_model(str(model_folder)).tokenizer)
    with pytest.raises(UserError, match="cannot download 'never-org/never-model-xyz'"):
        load_tokenizer("never-org/never-model-xyz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no tokenizer files"):
        load_tokenizer(str(tmp_path / "empty"))
