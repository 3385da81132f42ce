"""Universality over training of the zoo's suite: the trajectory stage over its snapshots.

``universality_curve`` summarises ``stages.trajectory`` per checkpoint for the suite card."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

CURVE_DIR = "curve"
"""The curve's trajectory run directory inside the zoo's working folder."""


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
                       threshold: float = 0.5, progress: bool = False,
                       out: str | Path | None = None) -> list[dict]:
    """One row per common snapshot, and the finished members last: median excess, share
    above 0.3/0.5, best excess.

    The trajectory stage (``stages.trajectory``) over the snapshots of the suite's members
    (and their final weights, exported as fp16 HF folders), correlating member a with the
    others on the first ``max_tokens`` tokens of the bundled test split. Its run directory
    is ``out`` (default ``WORK/curve``): a rerun reads finished checkpoints back.
    """
    from universal_neurons.stages.trajectory import Checkpoint, TrajectoryConfig, run_trajectory

    from .export import snapshot_card

    work = Path(work_dir)
    run_dir = Path(out) if out is not None else work / CURVE_DIR
    members = cfg.member_names()
    points, losses = [], []
    for t in snapshot_tokens(work, members):
        points.append(Checkpoint(f"tokens-{t}", tuple(
            str(work / "members" / m / "snapshots" / f"tokens-{t}") for m in members), tokens=t))
        losses.append([snapshot_card(cfg, work / "members" / m, t)[0]["test_loss"]
                       for m in members])
    final = final_tokens(work, members)
    if final is not None and all(p.tokens is not None and p.tokens < final for p in points):
        points.append(_final_checkpoint(work, members, final, run_dir / "final-models"))
        losses.append([json.loads((work / "members" / m / "card.json").read_text())["test_loss"]
                       for m in members])
    if not points:
        raise FileNotFoundError(f"no snapshot common to all of {members} and no finished "
                                f"members in {work}; run `universal-neurons zoo train` first")
    config = TrajectoryConfig(models=tuple(str(work / "members" / m) for m in members),
                              checkpoints=tuple(p.label for p in points), out=str(run_dir),
                              tokenizer=str(work / "tokenizer"), max_tokens=max_tokens,
                              threshold=threshold, progress=progress)
    neurons = run_trajectory(config, points).neurons
    rows = []
    for point, loss in zip(points, losses):
        excess = neurons.loc[neurons["checkpoint"] == point.label, "excess_corr"].to_numpy(float)
        excess = excess[np.isfinite(excess)]
        row = {"tokens": point.tokens, "test_loss": float(np.mean(loss)),
               "median_excess": float(np.median(excess)),
               "share_0.3": float(np.mean(excess > 0.3)),
               "share_0.5": float(np.mean(excess > 0.5)),
               "max_excess": float(excess.max()), "eval_tokens": max_tokens}
        log.info("universality at %d tokens: %s", point.tokens, json.dumps(row))
        rows.append(row)
    return rows


def _final_checkpoint(work: Path, members: list[str], tokens: int, folder: Path):
    """The finished members' weights (``final.pt``) exported as HF folders under ``folder``."""
    from universal_neurons.stages.trajectory import Checkpoint

    from .export import export_member

    specs = []
    for m in members:
        mdir = work / "members" / m
        card = json.loads((mdir / "card.json").read_text())
        specs.append(str(export_member(mdir / "final.pt", card, work / "tokenizer", folder / m)))
    return Checkpoint(f"tokens-{tokens}", tuple(specs), tokens=tokens)
