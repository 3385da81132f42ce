"""Cheap identities of a run's inputs: token datasets and model weights.

``universal-neurons run`` reruns a stage when one of these changes, and a correlate
checkpoint records the dataset's. They read metadata only (a dataset's ``meta.json``, file
sizes and modification times, safetensors headers), never whole weight or token files, so
they cost milliseconds for any model size.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".json", ".model")


def _digest(parts: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps(list(parts), default=str).encode()).hexdigest()[:16]


def _stat(p: Path) -> list[object]:
    st = p.stat()
    return [p.name, st.st_size, st.st_mtime_ns]


def dataset_fingerprint(path: str | os.PathLike | None) -> str:
    """Identity of a token dataset folder: the bytes of ``meta.json`` (tokenizer, source,
    seed, counts) and the size and modification time of ``tokens.npy``. ``None`` (the
    bundled default) is ``"bundled"``; a missing folder is ``"missing:<path>"``."""
    from universal_neurons.data.dataset import META, TOKENS

    if path is None:
        return "bundled"
    p = Path(path)
    if p.is_file() and p.name in (TOKENS, META):
        p = p.parent
    meta, tokens = p / META, p / TOKENS
    if not meta.is_file() or not tokens.is_file():
        return f"missing:{p}"
    return _digest([hashlib.sha256(meta.read_bytes()).hexdigest(), _stat(tokens)])


def _safetensors_header(p: Path) -> str:
    """SHA-256 of a safetensors file's JSON header (names, dtypes, shapes, offsets)."""
    with open(p, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return hashlib.sha256(f.read(min(n, 100_000_000))).hexdigest()[:16]


def model_fingerprint(spec: str) -> str:
    """Identity of one model spec: for a local or bundled folder, the names, sizes and
    modification times of its weight/config files and the safetensors headers; for a hub
    id or alias, the id and revision (a revision pins the weights)."""
    from universal_neurons.errors import UserError
    from universal_neurons.models.registry import resolve_spec

    try:
        ref = resolve_spec(spec)
    except UserError:
        return f"unresolved:{spec}"
    if ref.kind not in ("local", "bundled"):
        return _digest([ref.kind, ref.location, ref.revision])
    folder = Path(ref.location)
    if not folder.is_dir():
        return f"missing:{folder}"
    parts: list[object] = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.suffix in WEIGHT_SUFFIXES:
            parts.append(_stat(f))
            if f.suffix == ".safetensors":
                parts.append(_safetensors_header(f))
    return _digest(parts)


def models_fingerprint(specs: Sequence[str]) -> str:
    """One identity for several model specs (suites already expanded), order kept."""
    return _digest([[s, model_fingerprint(s)] for s in specs])
