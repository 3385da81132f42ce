"""``universal-neurons models``: aliases, suites and the bundled suite."""

from __future__ import annotations

import json

from universal_neurons.cli import main
from universal_neurons.models import registry


def test_models_command_lists_aliases_and_suites(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "bundled_root", lambda: tmp_path)
    assert main(["models", "--no-cache-check"]) == 0
    out = capsys.readouterr().out
    assert "stanford-gpt2-small-a" in out and "stanford-crfm/alias-gpt2-small-x21" in out
    assert "pythia-160m-seeds" in out and "pythia-160m-seed9" in out
    assert "stanford-gpt2-medium" in out
    assert "tiny-gpt2" in out and "not built" in out and "universal-neurons zoo build" in out


def test_models_command_json(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "bundled_root", lambda: tmp_path)
    for c in "abcde":
        (tmp_path / f"tiny-gpt2-{c}").mkdir()
        (tmp_path / f"tiny-gpt2-{c}" / "config.json").write_text("{}")
    assert main(["models", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    suites = {s["suite"]: s for s in data["suites"]}
    assert suites["stanford-gpt2-small"]["members"] == [
        f"stanford-gpt2-small-{c}" for c in "abcde"]
    assert suites["tiny-gpt2"]["built"] is True
    models = {m["name"]: m for m in data["models"]}
    assert models["pythia-160m"]["target"] == "EleutherAI/pythia-160m"
    assert models["pythia-160m"]["available"] in (True, False)  # looked up in the HF cache
    assert models["tiny-gpt2-e"]["available"] is True
