"""Token blocks for the delete-one-block jackknife (``correlate --blocks B``).

The kept tokens are split by sequence into ``B`` contiguous blocks (sequences
``[j n_seq / B, (j + 1) n_seq / B)``), each with its own :class:`CoMoments`. Every
statistic of a union of blocks ``S`` (the full sample, all but block ``j``, block ``j``)
follows exactly from the blocks' sums by Chan's merge: with ``mu_S = sum n_j mu_j / n_S``
and ``d_j = mu_j - mu_S``,

- cross co-moments ``C_S = sum_j C_j + n_j d_j^a d_j^b^T``;
- sums of squares ``M_S,ii = sum_j M_j,ii + n_j d_j,i^2``;
- rotated variances ``diag(B^T S_S B) = sum_j diag(B^T S_j B) + n_j ((mu_j - mu_S)^T B)^2``,

so each block keeps its rotated variances and rotated means (``O(N)`` per draw) and its
within-layer co-moments are freed after the first pass, as without blocks. Memory: ``B``
sets of cross co-moments and, in the first pass, ``B`` sets of within-layer co-moments, plus
one merged cross set while a union is summarised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.finalize import Baselines, ModelStats, summarize_moments
from universal_neurons.engine.layout import CrossBlock, Layout, ModelShape
from universal_neurons.engine.moments import CoMoments
from universal_neurons.engine.rotation import rotated_variances
from universal_neurons.engine.summary import NeuronSummary

log = logging.getLogger(__name__)

Subset = tuple[int, ...]
"""Indices of the blocks of one union."""


def subsets(n_blocks: int) -> list[Subset]:
    """The unions a run summarises: all blocks, all but each block, each block (for
    ``B = 2`` each block *is* the other's leave-one-out union)."""
    full = tuple(range(n_blocks))
    loo = [tuple(b for b in full if b != j) for j in full]
    single = [(j,) for j in full if (j,) not in loo]
    return [full, *loo, *single]


class BlockMoments:
    """``B`` :class:`CoMoments` over contiguous sequence blocks; an accumulator.

    Rows are routed by ``batch.seq_index``; the stream visits blocks in order, so only the
    current block's row buffer is allocated (a block's buffer is flushed and freed when the
    next block starts)."""

    def __init__(self, shapes: Sequence[ModelShape], blocks: Sequence[CrossBlock],
                 n_blocks: int, n_seq: int, **kw: Any):
        if n_blocks < 2 or n_seq < n_blocks:
            raise ValueError(f"need 2 <= blocks <= sequences, got {n_blocks} blocks of "
                             f"{n_seq} sequences")
        self.parts = [CoMoments(shapes, blocks, **kw) for _ in range(n_blocks)]
        self.bounds = torch.tensor([n_seq * j // n_blocks for j in range(1, n_blocks)])
        self.sites = self.parts[0].sites
        self.layout, self.blocks = self.parts[0].layout, self.parts[0].blocks
        self._current = 0

    def update(self, batch: ActivationBatch) -> None:
        which = torch.bucketize(batch.seq_index, self.bounds, right=True)  # [n] block
        lo = 0
        for j, count in zip(*torch.unique_consecutive(which, return_counts=True)):
            j, hi = int(j), lo + int(count)
            if j != self._current:
                self.parts[self._current].release_buffer()
                self._current = j
            self.parts[j].update(_rows(batch, lo, hi))
            lo = hi

    def release_buffer(self) -> None:
        for p in self.parts:
            p.release_buffer()

    def finalize(self) -> BlockMoments:
        for p in self.parts:
            p.flush()
        return self

    @property
    def n(self) -> int:
        return sum(p.n for p in self.parts)


def _rows(batch: ActivationBatch, lo: int, hi: int) -> ActivationBatch:
    """Rows ``[lo, hi)`` of ``batch``."""
    if lo == 0 and hi == batch.n:
        return batch
    acts = {m: {s: t[lo:hi] for s, t in sites.items()} for m, sites in batch.acts.items()}
    return ActivationBatch(acts, batch.token_ids[lo:hi], batch.prev_token_ids[lo:hi],
                           batch.positions[lo:hi], batch.seq_index[lo:hi])


@dataclass
class BlockStats:
    """Per block: token count, means, sums of squares and, per (model, layer, draw), the
    rotated variances ``diag(B^T S_j B)`` and rotated means ``B^T mu_j`` (all float64)."""

    layout: Layout
    n: list[int]
    mean: list[torch.Tensor]
    m2: list[list[torch.Tensor]]
    rotvar: list[dict[tuple[int, int, int], torch.Tensor]]
    rotmean: list[dict[tuple[int, int, int], torch.Tensor]]

    @classmethod
    def from_parts(cls, parts: Sequence[CoMoments], baselines: Baselines | None) -> BlockStats:
        """Stats of the first pass's blocks; frees their within-layer co-moments."""
        layout = parts[0].layout
        for p in parts:
            if p.cov is None:
                raise ValueError("BlockStats needs moments accumulated with layer_cov=True")
        m2 = [[c.diagonal(dim1=1, dim2=2).reshape(-1).to(torch.float64, copy=True)
               for c in p.cov or []] for p in parts]
        rotvar: list[dict] = [{} for _ in parts]
        rotmean: list[dict] = [{} for _ in parts]
        for m, s in enumerate(layout.shapes):
            for draw in range(baselines.draws if baselines is not None else 0):
                assert baselines is not None
                baselines.prepare([(m, layer, draw) for layer in range(s.n_layers)])
                for layer in range(s.n_layers):
                    basis = baselines.basis(m, layer, draw)
                    cols = layout.layer_cols(m, layer)
                    for j, p in enumerate(parts):
                        assert p.cov is not None
                        rotvar[j][(m, layer, draw)] = rotated_variances(
                            p.cov[m][layer].double(), basis)
                        rotmean[j][(m, layer, draw)] = p.mean[cols] @ basis.to(p.mean)
            for p in parts:
                assert p.cov is not None
                p.cov[m] = p.cov[m].new_empty(0, s.d_mlp, s.d_mlp)
        for p in parts:
            p.cov = None
        return cls(layout, [p.n for p in parts], [p.mean.clone() for p in parts], m2,
                   rotvar, rotmean)

    def union_mean(self, subset: Subset) -> tuple[int, torch.Tensor]:
        n = sum(self.n[j] for j in subset)
        return n, sum(self.mean[j] * (self.n[j] / n) for j in subset)  # type: ignore[return-value]

    def union(self, subset: Subset) -> ModelStats:
        """The :class:`ModelStats` of the union of ``subset``'s blocks (module doc)."""
        n, mu = self.union_mean(subset)
        m2s = []
        for m in range(len(self.layout)):
            cols = self.layout.cols(m)
            m2s.append(sum(self.m2[j][m] + self.n[j] * (self.mean[j][cols] - mu[cols]) ** 2
                           for j in subset))
        rotvars = {}
        for key in self.rotvar[subset[0]]:
            pm = sum(self.rotmean[j][key] * (self.n[j] / n) for j in subset)
            rotvars[key] = sum(self.rotvar[j][key] + self.n[j] * (self.rotmean[j][key] - pm) ** 2
                               for j in subset)
        return ModelStats(self.layout, n, mu, m2s, rotvars)  # type: ignore[arg-type]


def union_cross(parts: Sequence[CoMoments], stats: BlockStats, subset: Subset
                ) -> SimpleNamespace:
    """``blocks`` and merged ``cross`` co-moments of a union (a block's own when alone)."""
    if len(subset) == 1:
        return SimpleNamespace(blocks=parts[0].blocks, cross=parts[subset[0]].cross)
    _, mu = stats.union_mean(subset)
    layout, cross = stats.layout, []
    for i, block in enumerate(parts[0].blocks):
        rows, cols = layout.block_rows(block), layout.block_cols(block)
        acc = parts[subset[0]].cross[i].clone()
        for j in subset[1:]:
            acc.add_(parts[j].cross[i])
        for j in subset:
            d = (stats.mean[j] - mu).to(acc.dtype)
            acc.addr_(d[rows], d[cols], alpha=stats.n[j])
        cross.append(acc)
    return SimpleNamespace(blocks=parts[0].blocks, cross=cross)


def summarize_blocks(parts: Sequence[CoMoments], stats: BlockStats,
                     union_stats: dict[Subset, ModelStats],
                     summaries: dict[Subset, dict[tuple[int, int], NeuronSummary]],
                     baselines: Baselines | None) -> None:
    """Fold every union's co-moments into its summaries, draw by draw (so each further
    draw's bases are made once per pass, not once per union)."""
    for draw in range(baselines.draws if baselines is not None else 1):
        for subset, summ in summaries.items():
            view = union_cross(parts, stats, subset)
            summarize_moments(view, union_stats[subset], summ, baselines, draws=[draw])
            del view


def plan_blocks(fixed: dict[str, int], shapes: Sequence[ModelShape], mode: Any,
                n_blocks: int, draws: int, union_summary_bytes: int) -> None:
    """Scale the planner's ``fixed`` parts for ``n_blocks`` token blocks: ``B`` within-layer
    co-moments, ``B + 1`` cross co-moment sets (``cross_copies``), per-block and per-union
    statistics, and the unions' one-bin top-1 summaries (``union_summary_bytes`` each)."""
    total = Layout(shapes).total
    unions = len(subsets(n_blocks))
    fixed["layer_cov"] *= n_blocks
    fixed["cross_copies"] = n_blocks + 1
    fixed["stats"] = (fixed["stats"] * unions           # every union's ModelStats
                      + n_blocks * total * 8 * (2 + 2 * draws))  # mean, M_ii, rot. var/mean
    fixed["summaries"] += (unions - 1) * union_summary_bytes
