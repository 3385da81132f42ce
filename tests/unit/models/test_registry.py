"""Aliases, suites and spec resolution (no torch, no network)."""

from __future__ import annotations

import pytest

from universal_neurons.errors import UserError
from universal_neurons.models import registry
from universal_neurons.models.registry import (
    ALIASES,
    SUITES,
    expand_model_specs,
    list_models,
    list_suites,
    resolve_spec,
    split_revision,
)


@pytest.mark.parametrize("alias, hf_id", [
    ("stanford-gpt2-small-a", "stanford-crfm/alias-gpt2-small-x21"),
    ("stanford-gpt2-small-b", "stanford-crfm/battlestar-gpt2-small-x49"),
    ("stanford-gpt2-small-c", "stanford-crfm/caprica-gpt2-small-x81"),
    ("stanford-gpt2-small-d", "stanford-crfm/darkmatter-gpt2-small-x343"),
    ("stanford-gpt2-small-e", "stanford-crfm/expanse-gpt2-small-x777"),
    ("stanford-gpt2-medium-a", "stanford-crfm/arwen-gpt2-medium-x21"),
    ("stanford-gpt2-medium-b", "stanford-crfm/beren-gpt2-medium-x49"),
    ("stanford-gpt2-medium-c", "stanford-crfm/celebrimbor-gpt2-medium-x81"),
    ("stanford-gpt2-medium-d", "stanford-crfm/durin-gpt2-medium-x343"),
    ("stanford-gpt2-medium-e", "stanford-crfm/eowyn-gpt2-medium-x777"),
    ("pythia-160m", "EleutherAI/pythia-160m"),
    ("pythia-160m-seed1", "EleutherAI/pythia-160m-seed1"),
    ("pythia-14m-seed9", "EleutherAI/pythia-14m-seed9"),
    ("pythia-410m-seed5", "EleutherAI/pythia-410m-seed5"),
    ("gpt2", "gpt2"),
])
def test_aliases_resolve_to_hub_ids(alias, hf_id):
    assert ALIASES[alias].hf_id == hf_id
    ref = resolve_spec(alias)
    assert (ref.kind, ref.location, ref.name, ref.revision) == ("alias", hf_id, alias, None)


def test_aliases_agree_with_transformer_lens_table():
    """Every alias TransformerLens knows maps to the same hub id here."""
    from transformer_lens.supported_models import MODEL_ALIASES, OFFICIAL_MODEL_NAMES

    tl = {name: name for name in OFFICIAL_MODEL_NAMES}  # "gpt2" is an official name in TL
    tl |= {alias: official for official, aliases in MODEL_ALIASES.items() for alias in aliases}
    shared = [a for a in ALIASES if a in tl]
    # TL lacks only the PolyPythias seeds beyond pythia-160m-seed1..3
    assert {a for a in ALIASES if a not in tl} == {
        f"pythia-{size}-seed{i}" for size in registry.PYTHIA_SEED_SIZES for i in range(1, 10)
    } - {"pythia-160m-seed1", "pythia-160m-seed2", "pythia-160m-seed3"}
    for alias in shared:
        assert ALIASES[alias].hf_id == tl[alias], alias


def test_suites():
    assert SUITES["stanford-gpt2-small"] == tuple(f"stanford-gpt2-small-{c}" for c in "abcde")
    assert len(SUITES["stanford-gpt2-medium"]) == 5
    assert SUITES["pythia-160m-seeds"] == ("pythia-160m",) + tuple(
        f"pythia-160m-seed{i}" for i in range(1, 10))
    for size in ("14m", "31m", "70m", "410m"):
        assert len(SUITES[f"pythia-{size}-seeds"]) == 10
    assert SUITES["tiny-gpt2"] == tuple(f"tiny-gpt2-{c}" for c in "abcde")
    for suite, members in SUITES.items():
        for m in members:
            assert m in ALIASES or m in registry.BUNDLED_MEMBERS, (suite, m)


def test_expand_keeps_order_and_rejects_duplicates():
    assert expand_model_specs(["gpt2", "stanford-gpt2-small", "org/x@step1"]) == [
        "gpt2", *SUITES["stanford-gpt2-small"], "org/x@step1"]
    with pytest.raises(UserError, match="stanford-gpt2-small-a"):
        expand_model_specs(["stanford-gpt2-small-a", "stanford-gpt2-small"])
    with pytest.raises(UserError, match="no models"):
        expand_model_specs([])


@pytest.mark.parametrize("spec, expected", [
    ("EleutherAI/pythia-160m-seed1@step1000", ("EleutherAI/pythia-160m-seed1", "step1000")),
    ("gpt2", ("gpt2", None)),
    ("org/name@refs/pr/1", ("org/name", "refs/pr/1")),
])
def test_split_revision(spec, expected):
    assert split_revision(spec) == expected


@pytest.mark.parametrize("spec", ["org/name@", "@main"])
def test_split_revision_rejects_empty_parts(spec):
    with pytest.raises(UserError, match="NAME@REVISION"):
        split_revision(spec)


def test_resolve_revisions():
    ref = resolve_spec("EleutherAI/pythia-160m-seed1@step1000")
    assert (ref.kind, ref.location, ref.revision, ref.name) == (
        "hub", "EleutherAI/pythia-160m-seed1", "step1000", "EleutherAI/pythia-160m-seed1@step1000")
    ref = resolve_spec("stanford-gpt2-small-a@checkpoint-400000")
    assert (ref.kind, ref.location, ref.revision) == (
        "alias", "stanford-crfm/alias-gpt2-small-x21", "checkpoint-400000")


def test_resolve_bundled_and_local(tmp_path, monkeypatch):
    ref = resolve_spec("tiny-gpt2-c")
    assert ref.kind == "bundled" and ref.location.endswith("tiny-gpt2-c")
    assert "zoo" in ref.location and "bundled" in ref.location
    with pytest.raises(UserError, match="no revisions"):
        resolve_spec("tiny-gpt2-c@step1")
    folder = tmp_path / "org--m@step1"  # a folder name with '@' is still a folder
    folder.mkdir()
    ref = resolve_spec(str(folder))
    assert (ref.kind, ref.name, ref.location) == ("local", "org--m@step1", str(folder))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gpt2").mkdir()
    assert resolve_spec("gpt2").kind == "alias"  # a known name wins over a folder...
    assert resolve_spec("./gpt2").kind == "local"  # ...unless written as a path


def test_resolve_refuses_suite_and_revision_on_folder(tmp_path):
    with pytest.raises(UserError, match="'stanford-gpt2-small' is a suite of 5 models"):
        resolve_spec("stanford-gpt2-small")
    with pytest.raises(UserError, match="applies to hub ids"):
        resolve_spec(f"{tmp_path}@main")


@pytest.mark.parametrize("spec, hint", [
    ("stanford-gpt2-smal-a", "stanford-gpt2-small-a"),
    ("pythia160m", "pythia-160m"),
    ("nonsense", "universal-neurons models"),
])
def test_unknown_name_suggests(spec, hint):
    with pytest.raises(UserError) as e:
        resolve_spec(spec)
    msg = str(e.value)
    assert repr(spec) in msg and hint in msg and "\n" not in msg


def test_missing_folder_path_is_named(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(UserError, match="does not exist"):
        resolve_spec(missing)


def test_list_models_and_suites(monkeypatch, tmp_path):
    monkeypatch.setattr(registry, "bundled_root", lambda: tmp_path)
    rows = {r["name"]: r for r in list_models(check_cache=False)}
    assert rows["stanford-gpt2-small-a"]["target"] == "stanford-crfm/alias-gpt2-small-x21"
    assert rows["stanford-gpt2-small-a"]["suites"] == ["stanford-gpt2-small"]
    assert rows["tiny-gpt2-a"]["kind"] == "bundled" and rows["tiny-gpt2-a"]["available"] is False
    (tmp_path / "tiny-gpt2-a").mkdir()
    (tmp_path / "tiny-gpt2-a" / "config.json").write_text("{}")
    assert {r["name"]: r for r in list_models(False)}["tiny-gpt2-a"]["available"] is True
    suites = {s["suite"]: s for s in list_suites()}
    assert suites["tiny-gpt2"]["bundled"] and suites["tiny-gpt2"]["built"] is False
    assert suites["pythia-70m-seeds"]["members"][0] == "pythia-70m"
