"""Checkpoints: accumulator states and the next batch, saved atomically, loaded safely.

A checkpoint is one ``torch.save`` file of plain containers and tensors, written under a
temporary name and renamed, and read back with ``torch.load(weights_only=True)``. It
carries a SHA-256 checksum of its whole state (tensor bytes included) and the run's
semantic configuration, dataset fingerprint included; a checkpoint that fails the
checksum, is truncated, or belongs to another configuration is refused with a one-line
error that says to pass ``--restart``. It is never resumed silently. Temporary files left
by a write that was killed are deleted when the next run starts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from universal_neurons.errors import UserError
from universal_neurons.rundir import atomic_path, clean_stale_temps

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
RESTART_HINT = "pass --restart to discard it and start over"


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, lists, dicts, numbers, strings) and its checksum atomically."""
    body = {"format_version": FORMAT_VERSION, **state}
    body["checksum"] = state_digest(body)
    with atomic_path(path) as tmp:
        torch.save(body, tmp)
    log.debug("checkpoint saved to %s", path)


def open_checkpoint(path: str | os.PathLike, restart: bool = False) -> dict[str, Any] | None:
    """Start of a run: delete temporary files a killed write left beside ``path``, then
    delete the checkpoint (``restart``) or load and verify it (None if there is none)."""
    p = Path(path)
    clean_stale_temps(p.parent, p.name)
    if restart:
        p.unlink(missing_ok=True)
        return None
    return load_checkpoint(p)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The verified state saved at ``path``, or None if there is none.

    UserError (with the ``--restart`` hint) if the file is unreadable, truncated, of
    another format, or its content does not match its checksum."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or foreign file
        first = str(e).strip().splitlines()[0][:100] if str(e).strip() else ""
        raise UserError(f"checkpoint {p} is damaged or truncated ({type(e).__name__}: "
                        f"{first}); {RESTART_HINT}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise UserError(f"checkpoint {p} has format {version!r}, this version reads "
                        f"{FORMAT_VERSION}; {RESTART_HINT}")
    saved = state.pop("checksum", None)
    actual = state_digest(state)
    if saved != actual:
        raise UserError(f"checkpoint {p} is corrupt: its checksum {str(saved)[:12]} does not "
                        f"match its content ({actual[:12]}); {RESTART_HINT}")
    return state


def check_config(path: str | os.PathLike, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise UserError naming the keys whose values differ between ``saved`` and ``current``."""
    a, b = _jsonable(saved), _jsonable(current)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise UserError(f"checkpoint {path} was made with another configuration ({shown}); "
                        "rerun with the same options to resume, or pass --restart to start over")


def check_progress(path: str | os.PathLike, state: dict[str, Any], n_passes: int,
                   n_batches: int) -> None:
    """Range checks of a checkpoint's position against the run it resumes: completed
    passes in ``[0, n_passes)``, the next batch in ``[0, n_batches]``, counts >= 0."""
    completed = list(state.get("completed", []))
    cur = state.get("current")
    bad = []
    if len(set(completed)) != len(completed) or any(
            not isinstance(c, int) or not 0 <= c < n_passes for c in completed):
        bad.append(f"completed passes {completed} (plan has {n_passes})")
    if cur is not None:
        p, nb = cur.get("pass"), cur.get("next_batch")
        if not isinstance(p, int) or not 0 <= p < n_passes:
            bad.append(f"current pass {p!r} (plan has {n_passes})")
        if not isinstance(nb, int) or not 0 <= nb <= n_batches:
            bad.append(f"next batch {nb!r} (run has {n_batches})")
    counts = [v for s in (state.get("stream") or {}, (cur or {}).get("stream") or {})
              for v in s.values()]
    if any(isinstance(v, (int, float)) and v < 0 for v in counts):
        bad.append("negative token counts")
    if bad:
        raise UserError(f"checkpoint {path} does not fit this run: {'; '.join(bad)}; "
                        f"{RESTART_HINT}")


def state_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint state: structure, keys, scalars and every tensor's dtype,
    shape and bytes (so a flipped or zeroed byte anywhere changes it)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _feed(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            flat = t.to("cpu").contiguous().reshape(-1)
            h.update(flat.view(torch.uint8).numpy().data)  # [numel * itemsize] bytes
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)};".encode())
        for k in sorted(obj, key=str):
            h.update(f"K{k!r};".encode())
            _feed(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)};".encode())
        for x in obj:
            _feed(h, x)
    else:
        h.update(f"S{type(obj).__name__}:{obj!r};".encode())


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
