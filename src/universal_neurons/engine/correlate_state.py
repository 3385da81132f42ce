"""Progress of the correlate pass and its checkpoint state.

``Progress`` is what the passes build up (summaries, the O(N) model statistics of the first
pass, completed passes, stream counts); ``Progress.state`` is the checkpoint dict and
``Progress.restore`` loads one back, so that a killed run resumes to the same numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from universal_neurons.engine.finalize import ModelStats
from universal_neurons.engine.layout import CrossBlock, Layout, Mode, ModelShape, partner_range
from universal_neurons.engine.planner import Plan
from universal_neurons.engine.runner import StreamStats
from universal_neurons.engine.summary import NeuronSummary
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)


def new_summaries(shapes: Sequence[ModelShape], mode: Mode, top_k: int, bins: int,
                  dev: torch.device, draws: int = 1) -> dict[tuple[int, int], NeuronSummary]:
    """An empty summary per direction of every compared pair (model indices ``(a, b)``),
    each keeping ``draws`` baseline draws."""
    out = {}
    for a in range(len(shapes)):
        for b in partner_range(a, len(shapes), mode):
            na, nb = shapes[a].n_neurons, shapes[b].n_neurons
            out[(a, b)] = NeuronSummary(na, nb, top_k, bins, dev, draws)
            out[(b, a)] = NeuronSummary(nb, na, top_k, bins, dev, draws)
    return out


def add_stats(a: StreamStats, b: StreamStats) -> StreamStats:
    """Field-wise sum of two stream counts."""
    return StreamStats(**{k: getattr(a, k) + getattr(b, k) for k in a.__dict__})


def plan_from_state(plan: Plan, state: dict[str, Any]) -> Plan:
    """The checkpoint's passes and GEMM sizes (so a resumed run continues the same work)."""
    passes = [[CrossBlock(*b) for b in p] for p in state["plan"]["passes"]]
    if passes != plan.passes or state["plan"]["rows_per_gemm"] != plan.rows_per_gemm:
        log.info("using the checkpoint's plan (%d passes, %d rows per GEMM)", len(passes),
                 state["plan"]["rows_per_gemm"])
    return dataclasses.replace(plan, passes=passes,
                               rows_per_gemm=int(state["plan"]["rows_per_gemm"]),
                               gemm_rows=int(state["plan"]["gemm_rows"]),
                               batch_size=int(state["plan"].get("batch_size", plan.batch_size)))


@dataclass
class Progress:
    """What the passes have built so far (the part of a checkpoint that changes)."""

    summaries: dict[tuple[int, int], NeuronSummary]
    stats: ModelStats | None = None
    """O(N) statistics of every model, from the first pass (None before it)."""
    completed: list[int] = field(default_factory=list)
    totals: StreamStats = field(default_factory=StreamStats)
    """Stream counts of the first pass of this rank (tokens, kept tokens, timings)."""
    tokens_since: int = 0
    """Tokens streamed since the last checkpoint."""

    def state(self, semantic: dict[str, Any], plan: Plan, extras: Sequence[Any] | None,
              current: dict[str, Any] | None) -> dict[str, Any]:
        """The checkpoint dict; ``current`` is the pass in progress (None between passes)."""
        return {
            "config": semantic,
            "plan": plan.to_dict(),
            "completed": list(self.completed),
            "stats": None if self.stats is None else self.stats.state_dict(),
            "summaries": {f"{a}->{b}": s.state_dict() for (a, b), s in self.summaries.items()},
            "stream": self.totals.to_dict(),
            "extras": None if extras is None else [acc.state_dict() for acc in extras],
            "current": current,
        }

    def restore(self, state: dict[str, Any], path: Path, layout: Layout, dev: torch.device,
                extras: Sequence[Any]) -> None:
        """Load a verified checkpoint ``state`` (read from ``path``) and the extras' states."""
        self.completed = list(state["completed"])
        if state["stats"] is not None:
            self.stats = ModelStats.from_state(layout, state["stats"], dev)
        for key, s in state["summaries"].items():
            a, b = (int(x) for x in key.split("->"))
            self.summaries[(a, b)].load_state_dict(s)
        extras_state = state.get("extras")
        self.totals = StreamStats(**state["stream"])
        if extras and (extras_state is None or len(extras_state) != len(extras)):
            raise UserError(f"checkpoint {path} holds {len(extras_state or [])} extra "
                            f"accumulators but this run has {len(extras)}; pass --restart")
        if extras and extras_state is not None:
            for acc, st in zip(extras, extras_state):
                acc.load_state_dict(st)
