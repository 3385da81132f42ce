"""The aligned-grid pre-activation histograms of :class:`~universal_neurons.engine.
activation_stats.ActivationStats` (see its docstring): fixing the grid, binning, merging.

A neuron's grid is ``(exp, lo, hi)``: bin width ``2**exp``, interior ``[lo, hi) * 2**exp``;
counts are ``[N, n_bins + 2]`` = ``[underflow, bins..., overflow]``.
"""

from __future__ import annotations

import logging
import math

import torch

log = logging.getLogger(__name__)

Grid = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _floor_div(a: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return torch.div(a, torch.pow(2, shift), rounding_mode="floor")


def _ceil_div(a: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    return -_floor_div(-a, shift)


def init_grid(x: torch.Tensor, n_bins: int, quantile: float, margin: float,
              chunk_elements: int, model: str = "") -> Grid:
    """Each neuron's aligned grid ``(exp, lo, hi): Long[N]`` from the robust quantiles
    ``[q, 1-q]`` of ``x: Float64[rows, N]``, widened by ``margin`` of the span each side."""
    rows = x.shape[0]
    if rows < 256:
        log.warning("%s: histogram ranges fixed from only %d tokens", model, rows)
    k_lo = math.floor(quantile * (rows - 1)) + 1  # kthvalue is 1-based
    k_hi = math.ceil((1 - quantile) * (rows - 1)) + 1
    step = max(1, chunk_elements // rows)
    lo_v, hi_v = (torch.cat([x[:, s:s + step].kthvalue(k, dim=0).values
                             for s in range(0, x.shape[1], step)]).double()
                  for k in (k_lo, k_hi))
    span = (hi_v - lo_v).clamp_min(2.0**-20)
    lo_v, hi_v = lo_v - margin * span, hi_v + margin * span
    exp = torch.ceil(torch.log2((hi_v - lo_v) / (n_bins - 1))).long()
    lo = torch.floor(lo_v / torch.exp2(exp.double())).long()
    return exp, lo, lo + n_bins


def bin_counts(x: torch.Tensor, exp: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
               n_bins: int) -> torch.Tensor:
    """``Long[N, n_bins + 2]`` counts of ``x: Float64[rows, N]`` on the grids."""
    n = x.shape[1]
    t = torch.floor(x / torch.exp2(exp.double())) - lo  # [rows, N]
    width = (hi - lo).double()
    over = t >= width
    col = (torch.minimum(t.clamp_(min=-1.0), width) + 1).long().masked_fill_(over, n_bins + 1)
    flat = (col + torch.arange(n, device=x.device) * (n_bins + 2)).flatten()
    return torch.bincount(flat, minlength=n * (n_bins + 2)).view(n, n_bins + 2)


def merge_grids(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...],
                n_bins: int) -> tuple[torch.Tensor, ...]:
    """Merge two ``(exp, lo, hi, counts)`` exactly: both coarsened to the larger width, the
    interior the intersection of their ranges, counts outside it in the overflow bins."""
    parts = [a, b]
    exp = torch.maximum(a[0], b[0])
    lo = torch.maximum(*[_ceil_div(p[1], exp - p[0]) for p in parts])
    hi = torch.minimum(*[_floor_div(p[2], exp - p[0]) for p in parts])
    hi = torch.maximum(hi, lo)
    j = torch.arange(n_bins, device=a[3].device)
    out = torch.zeros_like(a[3])
    for e, plo, _, counts in parts:
        coarse = _floor_div(plo[:, None] + j, (exp - e)[:, None]) - lo[:, None]  # [N, nb]
        col = (coarse + 1).clamp(0, n_bins + 1)
        col = torch.where(coarse >= (hi - lo)[:, None], torch.full_like(col, n_bins + 1), col)
        col = torch.cat([torch.zeros_like(col[:, :1]), col,
                         torch.full_like(col[:, :1], n_bins + 1)], 1)
        out.scatter_add_(1, col, counts)
    return exp, lo, hi, out
