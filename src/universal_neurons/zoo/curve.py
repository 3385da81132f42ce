"""Universality over training: excess correlation of member a vs the others per snapshot."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


def snapshot_tokens(work_dir: str | Path, members: list[str]) -> list[int]:
    """Token counts at which every member has a snapshot."""
    sets = []
    for m in members:
        snaps = (Path(work_dir) / "members" / m / "snapshots").glob("tokens-*")
        sets.append({int(p.name.split("-")[1]) for p in snaps})
    return sorted(set.intersection(*sets)) if sets else []


def final_tokens(work_dir: str | Path, members: list[str]) -> int | None:
    """Tokens seen by the finished members (``card.json`` + ``final.pt``), or None."""
    seen = set()
    for m in members:
        mdir = Path(work_dir) / "members" / m
        if not ((mdir / "card.json").is_file() and (mdir / "final.pt").is_file()):
            return None
        seen.add(int(json.loads((mdir / "card.json").read_text())["tokens_seen"]))
    return seen.pop() if len(seen) == 1 else None


def universality_curve(cfg, work_dir: str | Path, max_tokens: int = 100_000,
                       threshold: float = 0.5, progress: bool = False) -> list[dict]:
    """One row per common snapshot, and the finished members last: median excess, share
    above 0.3/0.5, best excess.

    Each snapshot is exported to a temporary HF folder and correlated with the engine on the
    first ``max_tokens`` tokens of the bundled test split.
    """
    from universal_neurons.stages.correlate import CorrelateConfig, run_correlate

    from .export import export_member, snapshot_card

    work = Path(work_dir)
    members = cfg.member_names()
    points: list[tuple[int, bool]] = [(t, False) for t in snapshot_tokens(work, members)]
    final = final_tokens(work, members)
    if final is not None and all(t < final for t, _ in points):
        points.append((final, True))
    rows = []
    for tokens, is_final in points:
        with tempfile.TemporaryDirectory() as tmp:
            folders, losses = [], []
            for m in members:
                mdir = work / "members" / m
                if is_final:
                    card, src = json.loads((mdir / "card.json").read_text()), mdir / "final.pt"
                else:
                    card, src = snapshot_card(cfg, mdir, tokens)
                folders.append(str(export_member(src, card, work / "tokenizer",
                                                 Path(tmp) / m)))
                losses.append(card["test_loss"])
            result = run_correlate(CorrelateConfig(
                models=tuple(folders), out=str(Path(tmp) / "run"), max_tokens=max_tokens,
                threshold=threshold, progress=progress))
            table = next(iter(result.tables.values()))
            excess = np.asarray(table["excess_corr"], dtype=float)
            excess = excess[np.isfinite(excess)]
        row = {"tokens": tokens, "test_loss": float(np.mean(losses)),
               "median_excess": float(np.median(excess)),
               "share_0.3": float(np.mean(excess > 0.3)),
               "share_0.5": float(np.mean(excess > 0.5)),
               "max_excess": float(excess.max()), "eval_tokens": max_tokens}
        log.info("universality at %d tokens: %s", tokens, json.dumps(row))
        rows.append(row)
    return rows
