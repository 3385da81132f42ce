"""Model names the field uses, the suites they form, and how a spec string resolves.

A *spec* names one model: an alias (``stanford-gpt2-small-a``), a member of the bundled
suite (``tiny-gpt2-a``), a Hugging Face id (``EleutherAI/pythia-160m-seed1``), either of
those with ``@revision`` (``pythia-160m-seed1@step1000``), or a local folder in HF format.
A *suite* names several models trained from different seeds (``stanford-gpt2-small``).

Nothing here imports torch or transformers, and nothing touches the network.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from universal_neurons.errors import UserError


@dataclass(frozen=True)
class ModelRef:
    """Where an alias points on the Hugging Face hub."""

    hf_id: str
    revision: str | None = None


# The aliases below were checked against TransformerLens 3.9's alias table
# (transformer_lens/supported_models.py: OFFICIAL_MODEL_NAMES and MODEL_ALIASES, which
# loading_from_pretrained.py uses) for gpt2*, stanford-gpt2-*, pythia-{14m..410m} and
# pythia-160m-seed1..3. TransformerLens stops at pythia-160m-seed3; the other seeds
# (pythia-{14m,31m,70m,160m,410m}-seed1..9) are EleutherAI's PolyPythias, whose hub ids
# were checked against the EleutherAI "PolyPythias" collection on the Hugging Face hub.
STANFORD_SMALL = {
    "a": "stanford-crfm/alias-gpt2-small-x21",
    "b": "stanford-crfm/battlestar-gpt2-small-x49",
    "c": "stanford-crfm/caprica-gpt2-small-x81",
    "d": "stanford-crfm/darkmatter-gpt2-small-x343",
    "e": "stanford-crfm/expanse-gpt2-small-x777",
}
STANFORD_MEDIUM = {
    "a": "stanford-crfm/arwen-gpt2-medium-x21",
    "b": "stanford-crfm/beren-gpt2-medium-x49",
    "c": "stanford-crfm/celebrimbor-gpt2-medium-x81",
    "d": "stanford-crfm/durin-gpt2-medium-x343",
    "e": "stanford-crfm/eowyn-gpt2-medium-x777",
}
PYTHIA_SEED_SIZES = ("14m", "31m", "70m", "160m", "410m")
"""Pythia sizes with PolyPythias seeds 1..9 (the base model is seed 0 and exists too)."""
PYTHIA_SEEDS = range(1, 10)
# TransformerLens's official names for OpenAI's GPT-2 (the hub redirects them to
# openai-community/...; keeping TL's names keeps users' existing caches valid).
PLAIN_GPT2 = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")

BUNDLED_SUITE = "tiny-gpt2"
BUNDLED_MEMBERS = tuple(f"{BUNDLED_SUITE}-{c}" for c in "abcde")
BUILD_HINT = "build it with `universal-neurons zoo build` (or `zoo export` after training)"


def _aliases() -> dict[str, ModelRef]:
    out: dict[str, ModelRef] = {name: ModelRef(name) for name in PLAIN_GPT2}
    for letter, hf_id in STANFORD_SMALL.items():
        out[f"stanford-gpt2-small-{letter}"] = ModelRef(hf_id)
    for letter, hf_id in STANFORD_MEDIUM.items():
        out[f"stanford-gpt2-medium-{letter}"] = ModelRef(hf_id)
    for size in PYTHIA_SEED_SIZES:
        out[f"pythia-{size}"] = ModelRef(f"EleutherAI/pythia-{size}")
        for seed in PYTHIA_SEEDS:
            out[f"pythia-{size}-seed{seed}"] = ModelRef(f"EleutherAI/pythia-{size}-seed{seed}")
    return out


def _suites() -> dict[str, tuple[str, ...]]:
    out = {
        "stanford-gpt2-small": tuple(f"stanford-gpt2-small-{c}" for c in STANFORD_SMALL),
        "stanford-gpt2-medium": tuple(f"stanford-gpt2-medium-{c}" for c in STANFORD_MEDIUM),
    }
    for size in PYTHIA_SEED_SIZES:
        out[f"pythia-{size}-seeds"] = (f"pythia-{size}",) + tuple(
            f"pythia-{size}-seed{s}" for s in PYTHIA_SEEDS)
    out[BUNDLED_SUITE] = BUNDLED_MEMBERS
    return out


ALIASES: dict[str, ModelRef] = _aliases()
"""Alias -> hub id (TransformerLens names for the paper's models)."""
SUITES: dict[str, tuple[str, ...]] = _suites()
"""Suite -> member names, in seed order."""

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def bundled_root() -> Path:
    """Folder holding the bundled suite's members (``zoo/bundled/`` in the package)."""
    return Path(__file__).resolve().parent.parent / "zoo" / "bundled"


def bundled_member_path(name: str) -> Path:
    """HF folder of a bundled member (may not exist before the suite is built)."""
    return bundled_root() / name


def is_bundled_built(name: str | None = None) -> bool:
    """Whether one member (or, with no name, every member) of the bundled suite is built."""
    names = [name] if name else list(BUNDLED_MEMBERS)
    return all((bundled_member_path(n) / "config.json").is_file() for n in names)


def split_revision(spec: str) -> tuple[str, str | None]:
    """``'org/name@step1000'`` -> ``('org/name', 'step1000')``; no ``@`` -> ``(spec, None)``."""
    base, sep, rev = spec.rpartition("@")
    if not sep:
        return spec, None
    if not base or not rev:
        raise UserError(f"bad model spec {spec!r}: expected NAME@REVISION, "
                        "e.g. EleutherAI/pythia-160m-seed1@step1000")
    return base, rev


SourceKind = Literal["bundled", "alias", "hub", "local"]


@dataclass(frozen=True)
class ResolvedSpec:
    """What a spec string points to; ``location`` is a folder (bundled, local) or hub id."""

    spec: str
    name: str
    """Display name, unique within a run: the alias, member, hub id (``@rev``) or folder name."""
    kind: SourceKind
    location: str
    revision: str | None = None


def known_names() -> list[str]:
    """Every alias, suite and bundled member name."""
    return sorted(set(ALIASES) | set(SUITES) | set(BUNDLED_MEMBERS))


def unknown_model_error(spec: str) -> UserError:
    close = difflib.get_close_matches(spec, known_names(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return UserError(f"unknown model {spec!r}: not an alias, a bundled model, a local folder "
                     f"or a Hugging Face id (org/name); {hint}"
                     "see `universal-neurons models` for the names")


def resolve_spec(spec: str) -> ResolvedSpec:
    """Resolve one model spec without loading anything.

    Order: bundled member, alias, existing local folder (``./gpt2`` for a folder that
    shares a known name), ``org/name`` hub id. A suite name is refused here (a suite is
    several models: see :func:`expand_model_specs`).
    """
    spec = spec.strip()
    if not spec:
        raise UserError("empty model name; pass an alias, hub id or folder "
                        "(see `universal-neurons models`)")
    if spec not in ALIASES and spec not in BUNDLED_MEMBERS and spec not in SUITES \
            and Path(spec).expanduser().is_dir():  # checked before '@' is split off:
        path = Path(spec).expanduser().resolve()  # a folder may be named id@rev
        return ResolvedSpec(spec, path.name, "local", str(path))
    base, rev = split_revision(spec)
    if base in SUITES:
        raise UserError(f"{spec!r} is a suite of {len(SUITES[base])} models "
                        f"({', '.join(SUITES[base])}), not one model; pass one member")
    if base in BUNDLED_MEMBERS:
        if rev is not None:
            raise UserError(f"bundled model {base!r} has no revisions (got @{rev}); "
                            f"pass {base!r}")
        return ResolvedSpec(spec, base, "bundled", str(bundled_member_path(base)))
    if base in ALIASES:
        ref = ALIASES[base]
        revision = rev if rev is not None else ref.revision
        return ResolvedSpec(spec, spec, "alias", ref.hf_id, revision)
    if Path(base).expanduser().is_dir():
        raise UserError(f"{spec!r}: a revision (@{rev}) applies to hub ids, not to the local "
                        f"folder {base!r}; pass the folder without @")
    if base.startswith(("/", ".", "~")) or base.count("/") > 1 or "\\" in base:
        raise UserError(f"model folder {base!r} does not exist; check the path, or pass an "
                        "alias or hub id (see `universal-neurons models`)")
    if _HF_ID.match(base):
        return ResolvedSpec(spec, spec, "hub", base, rev)
    raise unknown_model_error(spec)


def expand_model_specs(specs: list[str] | tuple[str, ...]) -> list[str]:
    """Expand suite names into their members, keeping order; refuse duplicates.

    ``['stanford-gpt2-small', 'gpt2']`` -> the five stanford seeds, then ``gpt2``.
    """
    out: list[str] = []
    for spec in specs:
        spec = spec.strip()
        members = SUITES.get(spec, (spec,))
        for m in members:
            if m in out:
                raise UserError(f"model {m!r} is given twice (after expanding suites in "
                                f"{list(specs)}); list each model once")
            out.append(m)
    if not out:
        raise UserError("no models given; pass aliases, suites, hub ids or folders "
                        "(see `universal-neurons models`)")
    return out


def _hub_cached(hf_id: str) -> bool:
    """Whether ``config.json`` of ``hf_id`` is in the local HF cache (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return False
    try:
        return isinstance(try_to_load_from_cache(hf_id, "config.json"), str)
    except Exception:  # a malformed cache must not break listing
        return False


def list_models(check_cache: bool = True) -> list[dict]:
    """One row per named model, for the ``models`` command.

    Keys: ``name``, ``kind`` (``bundled`` | ``alias``), ``target`` (hub id or folder),
    ``suites`` (suites it belongs to), ``available`` (bundled: built; alias: in the local
    HF cache; None if ``check_cache`` is False).
    """
    suites_of: dict[str, list[str]] = {}
    for suite, members in SUITES.items():
        for m in members:
            suites_of.setdefault(m, []).append(suite)
    rows = []
    for name in BUNDLED_MEMBERS:
        rows.append({"name": name, "kind": "bundled", "target": str(bundled_member_path(name)),
                     "suites": suites_of.get(name, []), "available": is_bundled_built(name)})
    for name, ref in ALIASES.items():
        rows.append({"name": name, "kind": "alias", "target": ref.hf_id,
                     "suites": suites_of.get(name, []),
                     "available": _hub_cached(ref.hf_id) if check_cache else None})
    return rows


def list_suites() -> list[dict]:
    """One row per suite: ``suite``, ``members``, ``bundled`` and (bundled only) ``built``."""
    return [{"suite": s, "members": list(m), "bundled": s == BUNDLED_SUITE,
             "built": is_bundled_built() if s == BUNDLED_SUITE else None}
            for s, m in SUITES.items()]
