"""Checkpoints: accumulator states and the next batch, saved atomically, loaded safely.

A checkpoint is one ``torch.save`` file of plain containers and tensors, written under a
temporary name and renamed, and read back with ``torch.load(weights_only=True)``. It
records the run's semantic configuration; resuming with a different one is refused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from universal_neurons.errors import UserError
from universal_neurons.rundir import atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, lists, dicts, numbers, strings) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    log.debug("checkpoint saved to %s", path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any] | None:
    """The state saved at ``path``, or None if there is none. UserError if unreadable."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or foreign file
        raise UserError(f"cannot read checkpoint {p} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:120] if str(e) else ''}); delete it or "
                        "pass --restart to start over") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {p} has an unknown format; delete it or pass --restart")
    return state


def check_config(path: str | os.PathLike, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """Raise UserError naming the keys whose values differ between ``saved`` and ``current``."""
    a, b = _jsonable(saved), _jsonable(current)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    if diff:
        shown = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:4])
        raise UserError(f"checkpoint {path} was made with another configuration ({shown}); "
                        "rerun with the same options to resume, or pass --restart to start over")


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))
