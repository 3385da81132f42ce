"""How long a correlate run will take: flops per token of a plan, at a device's peak.

Used by ``universal-neurons plan`` and ``benchmarks/bench_scale.py``. The accumulation
(every pass's cross GEMMs, the first pass's within-layer co-moments, the float64 folds)
comes from the plan; the forward passes (re-run on every pass) from the models' shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from universal_neurons.engine.layout import Layout, ModelShape
from universal_neurons.engine.planner import Plan, accumulate_flops_per_token

A100_PEAK_TFLOPS = {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0}
"""Dense matmul peaks of an A100 80 GB (NVIDIA's data sheet), TFLOP/s."""
ACCUMULATE_EFFICIENCY = 0.8
"""Fraction of the matmul peak the accumulate step reaches (docs/engine.md measures 80-88%
on CPU; assumed on GPUs)."""
FORWARD_EFFICIENCY = 0.5
"""Fraction of the matmul peak assumed for the models' forward passes (small GEMMs,
attention, element-wise work)."""


@dataclass(frozen=True)
class Projection:
    """Flops per token of a plan and the projected seconds for ``tokens`` tokens."""

    accumulate_flops_per_token: float
    forward_flops_per_token: float
    peak_flops: float
    tokens: int

    @property
    def seconds(self) -> float:
        return self.tokens * (
            self.accumulate_flops_per_token / (self.peak_flops * ACCUMULATE_EFFICIENCY)
            + self.forward_flops_per_token / (self.peak_flops * FORWARD_EFFICIENCY))


def project(plan: Plan, shapes: Sequence[ModelShape], dims: Sequence[Any], tokens: int,
            peak_flops: float) -> Projection:
    """Projection of ``plan`` over models ``shapes`` whose ``dims`` give
    ``forward_flops_per_token`` (:class:`~universal_neurons.models.dims.ModelDims`)."""
    acc = accumulate_flops_per_token(plan, Layout(shapes))
    fwd = plan.n_passes * sum(d.forward_flops_per_token for d in dims)
    return Projection(acc, fwd, peak_flops, tokens)


def format_duration(seconds: float) -> str:
    """``45 s``, ``12 min``, ``3.5 h`` or ``2.1 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def cpu_matmul_peak(n: int = 2048, repeats: int = 3) -> float:
    """Best float32 ``torch.mm`` rate of an ``n x n`` product here, FLOP/s."""
    import time

    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best
