"""From float64 co-moments to per-neuron correlation summaries and rotated baselines.

For a cross block of model ``a`` (rows) against partner ``b`` (columns), every chunk of
one layer of ``a`` against whole layers of ``b``, ``C: [d_a, n_b]``, gives

- correlations ``rho = C / (s_a s_b^T)`` with ``s = sqrt(M_ii)``, summarised both ways
  (``a -> b`` along rows, ``b -> a`` along columns);
- the ``a -> b`` baseline, ``b``'s layer rotated by ``B_b``:
  ``Cov(x, y B) = C B`` and ``Var((y B)_j) = B_j^T S_b B_j``;
- the ``b -> a`` baseline, ``a``'s layer rotated: ``B_a^T C`` over ``diag(B_a^T S_a B_a)``.

Chunks are at most ``CHUNK_ELEMENTS``: temporaries stay at a few float32 chunk copies.
"""

from __future__ import annotations

import torch

from universal_neurons.engine.layout import Layout
from universal_neurons.engine.moments import CoMoments
from universal_neurons.engine.rotation import baseline_basis, rotated_variances
from universal_neurons.engine.summary import NeuronSummary

DEAD_REL = 1e-6
"""A neuron is dead if its std is at most ``DEAD_REL * |mean|`` (+ ``DEAD_ABS``): only float32
round-off separates it from a constant."""
DEAD_ABS = 1e-10
CHUNK_ELEMENTS = 2**24
"""Largest ``d_a x n_b`` chunk summarised at once (temporaries: a few float32 copies)."""


class ModelStats:
    """What finalising needs from the first pass: token count, means and layer co-moments.

    ``cov[m]: Float64[L, d, d]`` are co-moment sums (covariance times ``n``).
    """

    def __init__(self, layout: Layout, n: int, mean: torch.Tensor, cov: list[torch.Tensor]):
        self.layout, self.n, self.mean, self.cov = layout, n, mean, cov

    @classmethod
    def from_moments(cls, moments: CoMoments) -> ModelStats:
        if moments.cov is None:
            raise ValueError("ModelStats needs moments accumulated with layer_cov=True")
        return cls(moments.layout, moments.n, moments.mean, moments.cov)

    def m2(self, model: int) -> torch.Tensor:
        """``Float64[N_m]`` sums of squared deviations."""
        return self.cov[model].diagonal(dim1=1, dim2=2).reshape(-1)

    def dead(self, model: int) -> torch.Tensor:
        """``Bool[N_m]``: neurons with (numerically) zero variance."""
        var = self.m2(model) / max(self.n, 1)
        mean = self.mean[self.layout.cols(model)]
        return var.sqrt() <= DEAD_REL * mean.abs() + DEAD_ABS

    def inv_std(self, model: int) -> torch.Tensor:
        """``Float64[N_m]``: ``1 / sqrt(M_ii)``, NaN for dead neurons."""
        inv = self.m2(model).clamp_min(1e-300).rsqrt()
        return torch.where(self.dead(model), torch.nan, inv)

    def state_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean.cpu(), "cov": [c.cpu() for c in self.cov]}

    @classmethod
    def from_state(cls, layout: Layout, state: dict, device: torch.device) -> ModelStats:
        return cls(layout, int(state["n"]), state["mean"].to(device),
                   [c.to(device) for c in state["cov"]])


class Baselines:
    """Baseline bases and rotated inverse stds per (model, layer), made on first use."""

    def __init__(self, kind: str, seed: int, stats: ModelStats, device: torch.device):
        self.kind, self.seed, self.stats, self.device = kind, seed, stats, device
        self._cache: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, model: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B: Float32[d, d], inv_std: Float32[d])`` of rotated neurons (NaN if dead)."""
        key = (model, layer)
        if key not in self._cache:
            shape = self.stats.layout.shapes[model]
            basis = baseline_basis(self.kind, self.seed, shape.name, layer, shape.d_mlp)
            basis = basis.to(self.device)
            cov = self.stats.cov[model][layer]
            rv = rotated_variances(cov, basis)  # [d] float64
            scale = cov.diagonal().max().clamp_min(1e-300)
            inv = torch.where(rv <= 1e-12 * scale, torch.nan, rv.clamp_min(1e-300).rsqrt())
            self._cache[key] = (basis.float(), inv.float())
        return self._cache[key]


def summarize_moments(moments: CoMoments, stats: ModelStats,
                      summaries: dict[tuple[int, int], NeuronSummary],
                      baselines: Baselines | None, max_chunk: int = CHUNK_ELEMENTS) -> None:
    """Fold every cross block of ``moments`` into ``summaries[(a, b)]`` (neurons of ``a``
    against ``b``) in both directions.

    Works on chunks of one layer of ``a`` against as many whole layers of ``b`` as fit in
    ``max_chunk`` elements, so both rotations stay local to the chunk.
    """
    layout = stats.layout
    inv = [stats.inv_std(m).float() for m in range(len(layout))]
    for block, cross in zip(moments.blocks, moments.cross):
        a = block.row
        da = layout.shapes[a].d_mlp
        col_base = layout.block_cols(block).start
        for b in block.partners:
            db, lbn = layout.shapes[b].d_mlp, layout.shapes[b].n_layers
            group = max(1, min(lbn, max_chunk // (da * db)))
            s_ab, s_ba = summaries[(a, b)], summaries[(b, a)]
            for la in range(block.layer_start, block.layer_stop):
                r0 = (la - block.layer_start) * da
                rows_a = slice(la * da, (la + 1) * da)
                ia = inv[a][rows_a]
                for g0 in range(0, lbn, group):
                    g1 = min(lbn, g0 + group)
                    rows_b = slice(g0 * db, g1 * db)
                    c0 = layout.offsets[b] - col_base
                    c = cross[r0:r0 + da, c0 + rows_b.start:c0 + rows_b.stop].float()  # [d_a, n_b]
                    ib = inv[b][rows_b]
                    rho = c * ia[:, None] * ib[None, :]
                    s_ab.add(rho, rows_a, rows_b.start)
                    s_ba.add(rho.t(), rows_b, la * da)
                    del rho
                    if baselines is None:
                        continue
                    rot = torch.empty_like(c)
                    for lb in range(g0, g1):  # a -> b: rotate each layer of b
                        bb, ibr = baselines.get(b, lb)
                        cols = slice((lb - g0) * db, (lb - g0 + 1) * db)
                        torch.mm(c[:, cols], bb, out=rot[:, cols])
                        rot[:, cols].mul_(ibr[None, :])
                    s_ab.add_baseline(rot.mul_(ia[:, None]), rows_a)
                    ba, iar = baselines.get(a, la)  # b -> a: rotate this layer of a
                    torch.mm(ba.t(), c, out=rot)
                    s_ba.add_baseline(rot.mul_(iar[:, None]).mul_(ib[None, :]).t(), rows_b)
                    del rot, c
