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
MAX_QR_WORKERS = 8
"""Bases made at once at most (their float64 transients are planned for this many)."""
CHUNK_ELEMENTS = 2**24
"""Largest ``d_a x n_b`` chunk summarised at once (temporaries: a few float32 copies)."""


class ModelStats:
    """What finalising needs from the first pass: token count, means, each neuron's sum of
    squared deviations and, for the baseline, each layer's rotated variances.

    Built once from the first pass's within-layer co-moments (:meth:`from_moments`), after
    which those ``[L, d, d]`` co-moments can be freed: later passes need only ``O(N)``.
    ``m2s[m]: Float64[N_m]``; ``rotvars[(m, layer)]: Float64[d]`` is ``diag(B^T S B)``.
    """

    def __init__(self, layout: Layout, n: int, mean: torch.Tensor, m2s: list[torch.Tensor],
                 rotvars: dict[tuple[int, int], torch.Tensor] | None = None,
                 layer_scale: list[torch.Tensor] | None = None):
        self.layout, self.n, self.mean, self.m2s = layout, n, mean, m2s
        self.rotvars = rotvars or {}
        # largest M_ii of each layer ([L] per model): the scale of "numerically zero"
        self.layer_scale = layer_scale or [m2.view(s.n_layers, s.d_mlp).amax(1)
                                           for m2, s in zip(m2s, layout.shapes)]

    @classmethod
    def from_moments(cls, moments: CoMoments, baselines: Baselines | None = None,
                     free_cov: bool = False) -> ModelStats:
        """Stats of a first pass; with ``baselines``, every layer's rotated variances too
        (each layer's basis is made here once and cached in ``baselines``). ``free_cov``
        drops ``moments.cov`` model by model as it is used, so the co-moments and the
        bases are never all held at once."""
        if moments.cov is None:
            raise ValueError("ModelStats needs moments accumulated with layer_cov=True")
        m2s = [c.diagonal(dim1=1, dim2=2).reshape(-1).clone() for c in moments.cov]
        rotvars: dict[tuple[int, int], torch.Tensor] = {}
        for m, s in enumerate(moments.layout.shapes):
            if baselines is not None:
                baselines.prepare([(m, layer) for layer in range(s.n_layers)])
                for layer in range(s.n_layers):
                    basis = baselines.basis(m, layer)
                    rotvars[(m, layer)] = rotated_variances(moments.cov[m][layer], basis)
            if free_cov:
                moments.cov[m] = moments.cov[m].new_empty(0, s.d_mlp, s.d_mlp)
        if free_cov:
            moments.cov = None
        return cls(moments.layout, moments.n, moments.mean, m2s, rotvars)

    def m2(self, model: int) -> torch.Tensor:
        """``Float64[N_m]`` sums of squared deviations."""
        return self.m2s[model]

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
        keys = sorted(self.rotvars)
        return {"n": self.n, "mean": self.mean.cpu(), "m2": [m.cpu() for m in self.m2s],
                "rotvar_keys": [list(k) for k in keys],
                "rotvar": [self.rotvars[k].cpu() for k in keys]}

    @classmethod
    def from_state(cls, layout: Layout, state: dict, device: torch.device) -> ModelStats:
        rotvars = {(int(k[0]), int(k[1])): v.to(device)
                   for k, v in zip(state["rotvar_keys"], state["rotvar"])}
        return cls(layout, int(state["n"]), state["mean"].to(device),
                   [m.to(device) for m in state["m2"]], rotvars)


class Baselines:
    """Baseline bases per (model, layer), made once per run and cached as float32, and the
    rotated inverse stds from :class:`ModelStats`."""

    def __init__(self, kind: str, seed: int, layout: Layout, device: torch.device):
        self.kind, self.seed, self.layout, self.device = kind, seed, layout, device
        self.stats: ModelStats | None = None
        self._bases: dict[tuple[int, int], torch.Tensor] = {}
        self._inv: dict[tuple[int, int], torch.Tensor] = {}

    def prepare(self, keys: list[tuple[int, int]], workers: int | None = None) -> None:
        """Make the bases of ``keys`` (model, layer) concurrently: each QR runs on one
        thread (so its bits do not depend on the thread count), one per core."""
        todo = [k for k in keys if k not in self._bases]
        workers = workers or max(1, min(len(todo), torch.get_num_threads(), MAX_QR_WORKERS))
        if len(todo) < 2 or workers < 2:
            for k in todo:
                self.basis(*k)
            return
        from concurrent.futures import ThreadPoolExecutor

        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # set once here, not raced by the workers
        try:
            with ThreadPoolExecutor(workers) as pool:
                made = pool.map(lambda k: self._make(*k), todo)
                for k, basis in zip(todo, made):
                    self._bases[k] = basis
        finally:
            torch.set_num_threads(threads)

    def _make(self, model: int, layer: int) -> torch.Tensor:
        shape = self.layout.shapes[model]
        basis = baseline_basis(self.kind, self.seed, shape.name, layer, shape.d_mlp)
        return basis.to(self.device, torch.float32)

    def basis(self, model: int, layer: int) -> torch.Tensor:
        """``Float32[d, d]``: the basis of ``model``'s ``layer`` (QR once, then cached)."""
        key = (model, layer)
        if key not in self._bases:
            self._bases[key] = self._make(model, layer)
        return self._bases[key]

    def use(self, stats: ModelStats) -> None:
        """Take the rotated variances from ``stats`` (built with these baselines)."""
        if stats is not self.stats:
            self.stats, self._inv = stats, {}

    def get(self, model: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B: Float32[d, d], inv_std: Float32[d])`` of rotated neurons (NaN if dead)."""
        key = (model, layer)
        if key not in self._inv:
            if self.stats is None or key not in self.stats.rotvars:
                raise ValueError(f"no rotated variances for model {model} layer {layer}: "
                                 "build ModelStats.from_moments with these baselines")
            rv = self.stats.rotvars[key]  # [d] float64
            scale = self.stats.layer_scale[model][layer].clamp_min(1e-300)
            inv = torch.where(rv <= 1e-12 * scale, torch.nan, rv.clamp_min(1e-300).rsqrt())
            self._inv[key] = inv.float()
        return self.basis(model, layer), self._inv[key]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bases.values())


def summarize_moments(moments: CoMoments, stats: ModelStats,
                      summaries: dict[tuple[int, int], NeuronSummary],
                      baselines: Baselines | None, max_chunk: int = CHUNK_ELEMENTS) -> None:
    """Fold every cross block of ``moments`` into ``summaries[(a, b)]`` (neurons of ``a``
    against ``b``) in both directions.

    Works on chunks of one layer of ``a`` against as many whole layers of ``b`` as fit in
    ``max_chunk`` elements, so both rotations stay local to the chunk.
    """
    layout = stats.layout
    if baselines is not None:
        baselines.use(stats)
    inv = [stats.inv_std(m).float() for m in range(len(layout))]
    for block, cross in zip(moments.blocks, moments.cross):
        a = block.row
        da = layout.shapes[a].d_mlp
        col_base = layout.block_cols(block).start
        for b, lb0, lb1 in layout.block_partner_layers(block):
            db = layout.shapes[b].d_mlp
            group = max(1, min(lb1 - lb0, max_chunk // (da * db)))
            s_ab, s_ba = summaries[(a, b)], summaries[(b, a)]
            for la in range(block.layer_start, block.layer_stop):
                r0 = (la - block.layer_start) * da
                rows_a = slice(la * da, (la + 1) * da)
                ia = inv[a][rows_a]
                for g0 in range(lb0, lb1, group):
                    g1 = min(lb1, g0 + group)
                    rows_b = slice(g0 * db, g1 * db)
                    c0 = layout.offsets[b] - col_base
                    c = cross[r0:r0 + da, c0 + rows_b.start:c0 + rows_b.stop].float()  # [d_a, n_b]
                    ib = inv[b][rows_b]
                    rho = torch.mul(c, ia[:, None]).mul_(ib[None, :])
                    s_ab.add_pair(rho, rows_a, rows_b.start, s_ba)  # and rho.t() into s_ba
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
