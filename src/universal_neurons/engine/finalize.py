"""From float64 co-moments to per-neuron correlation summaries and rotated baselines.

For a cross block of model ``a`` (rows) against partner ``b`` (columns), every chunk of
one layer of ``a`` against whole layers of ``b``, ``C: [d_a, n_b]``, gives

- correlations ``rho = C / (s_a s_b^T)`` with ``s = sqrt(M_ii)``, summarised both ways
  (``a -> b`` along rows, ``b -> a`` along columns);
- the ``a -> b`` baseline, ``b``'s layer rotated by ``B_b``:
  ``Cov(x, y B) = C B`` and ``Var((y B)_j) = B_j^T S_b B_j``;
- the ``b -> a`` baseline, ``a``'s layer rotated: ``B_a^T C`` over ``diag(B_a^T S_a B_a)``.

With ``K`` baseline draws (``--rotations K``) every layer has ``K`` bases; draw 0 is the
single-draw basis and is kept for the run, draws ``1..K-1`` are made (again) per pass and
draw by draw, so at most two draws' bases are held at once; each extra draw costs one more
pair of GEMMs per chunk.

Chunks are at most ``CHUNK_ELEMENTS``: temporaries stay at a few float32 chunk copies.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

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
    squared deviations and, for the baseline, each layer's rotated variances (per draw).

    Built once from the first pass's within-layer co-moments (:meth:`from_moments`), after
    which those ``[L, d, d]`` co-moments can be freed: later passes need only ``O(N)``.
    ``m2s[m]: Float64[N_m]``; ``rotvars[(m, layer, draw)]: Float64[d]`` is
    ``diag(B^T S B)``.
    """

    def __init__(self, layout: Layout, n: int, mean: torch.Tensor, m2s: list[torch.Tensor],
                 rotvars: dict[tuple[int, int, int], torch.Tensor] | None = None,
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
        m2s = [c.diagonal(dim1=1, dim2=2).reshape(-1).to(torch.float64, copy=True)
               for c in moments.cov]
        rotvars: dict[tuple[int, int, int], torch.Tensor] = {}
        for m, s in enumerate(moments.layout.shapes):
            for draw in range(baselines.draws if baselines is not None else 0):
                assert baselines is not None
                baselines.prepare([(m, layer, draw) for layer in range(s.n_layers)])
                for layer in range(s.n_layers):
                    basis = baselines.basis(m, layer, draw)
                    rotvars[(m, layer, draw)] = rotated_variances(
                        moments.cov[m][layer].double(), basis)
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
        rotvars = {(int(k[0]), int(k[1]), int(k[2]) if len(k) > 2 else 0): v.to(device)
                   for k, v in zip(state["rotvar_keys"], state["rotvar"])}
        return cls(layout, int(state["n"]), state["mean"].to(device),
                   [m.to(device) for m in state["m2"]], rotvars)


Key = tuple[int, int, int]
"""(model, layer, draw) of one baseline basis."""


class Baselines:
    """Baseline bases per (model, layer, draw) as float32, and the rotated inverse stds
    from :class:`ModelStats`. Draw 0 is made once per run and kept; of the draws
    ``1..draws-1`` only the bases of the draw last asked for are kept."""

    def __init__(self, kind: str, seed: int, layout: Layout, device: torch.device,
                 draws: int = 1):
        if draws < 1:
            raise ValueError(f"draws must be positive, got {draws}")
        self.kind, self.seed, self.layout, self.device = kind, seed, layout, device
        self.draws = draws
        self.stats: ModelStats | None = None
        self._bases: dict[Key, torch.Tensor] = {}
        self._inv: dict[Key, torch.Tensor] = {}
        self._draw = 0  # the draw >= 1 whose bases are held

    def _hold(self, draw: int) -> None:
        """Drop the bases of draws other than 0 and ``draw``."""
        if draw and draw != self._draw:
            self._bases = {k: v for k, v in self._bases.items() if k[2] in (0, draw)}
            self._draw = draw

    def prepare(self, keys: list[tuple[int, int]] | list[Key],
                workers: int | None = None) -> None:
        """Make the bases of ``keys`` (model, layer[, draw]) of one draw concurrently: each
        QR runs on one thread (so its bits do not depend on the thread count), one per core."""
        full = [(k[0], k[1], k[2] if len(k) > 2 else 0) for k in keys]
        if len({k[2] for k in full} - {0}) > 1:
            raise ValueError("prepare takes the bases of one draw at a time")
        for k in full:
            self._hold(k[2])
        todo = [k for k in full if k not in self._bases]
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

    def _make(self, model: int, layer: int, draw: int = 0) -> torch.Tensor:
        shape = self.layout.shapes[model]
        basis = baseline_basis(self.kind, self.seed, shape.name, layer, shape.d_mlp, draw)
        return basis.to(self.device, torch.float32)

    def basis(self, model: int, layer: int, draw: int = 0) -> torch.Tensor:
        """``Float32[d, d]``: basis ``draw`` of ``model``'s ``layer`` (QR once, then cached
        as the class doc says)."""
        key = (model, layer, draw)
        self._hold(draw)
        if key not in self._bases:
            self._bases[key] = self._make(*key)
        return self._bases[key]

    def use(self, stats: ModelStats) -> None:
        """Take the rotated variances from ``stats`` (built with these baselines)."""
        if stats is not self.stats:
            self.stats, self._inv = stats, {}

    def get(self, model: int, layer: int, draw: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B: Float32[d, d], inv_std: Float32[d])`` of rotated neurons (NaN if dead)."""
        key = (model, layer, draw)
        if key not in self._inv:
            if self.stats is None or key not in self.stats.rotvars:
                raise ValueError(f"no rotated variances for model {model} layer {layer} draw "
                                 f"{draw}: build ModelStats.from_moments with these baselines")
            rv = self.stats.rotvars[key]  # [d] float64
            scale = self.stats.layer_scale[model][layer].clamp_min(1e-300)
            inv = torch.where(rv <= 1e-12 * scale, torch.nan, rv.clamp_min(1e-300).rsqrt())
            self._inv[key] = inv.float()
        return self.basis(model, layer, draw), self._inv[key]

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._bases.values())


class _Chunk(NamedTuple):
    """One summarised chunk: layer ``la`` of model ``a`` against layers ``[g0, g1)`` of
    partner ``b``; ``cross: Float64[d_a, n_b]`` is a view of the co-moments."""

    a: int
    b: int
    la: int
    g0: int
    g1: int
    rows_a: slice
    rows_b: slice
    cross: torch.Tensor


def _chunks(moments: Any, layout: Layout, max_chunk: int) -> Iterator[_Chunk]:
    """Every chunk of ``moments``' cross blocks, at most ``max_chunk`` elements each."""
    for block, cross in zip(moments.blocks, moments.cross):
        a = block.row
        da = layout.shapes[a].d_mlp
        col_base = layout.block_cols(block).start
        for b, lb0, lb1 in layout.block_partner_layers(block):
            db = layout.shapes[b].d_mlp
            group = max(1, min(lb1 - lb0, max_chunk // (da * db)))
            for la in range(block.layer_start, block.layer_stop):
                r0 = (la - block.layer_start) * da
                for g0 in range(lb0, lb1, group):
                    g1 = min(lb1, g0 + group)
                    rows_b = slice(g0 * db, g1 * db)
                    c0 = layout.offsets[b] - col_base
                    yield _Chunk(a, b, la, g0, g1, slice(la * da, (la + 1) * da), rows_b,
                                 cross[r0:r0 + da, c0 + rows_b.start:c0 + rows_b.stop])


def _pass_keys(moments: Any, layout: Layout, draw: int) -> list[Key]:
    """The (model, layer, draw) bases the chunks of ``moments`` rotate."""
    keys: dict[Key, None] = {}
    for block in moments.blocks:
        for la in range(block.layer_start, block.layer_stop):
            keys[(block.row, la, draw)] = None
        for b, lb0, lb1 in layout.block_partner_layers(block):
            for lb in range(lb0, lb1):
                keys[(b, lb, draw)] = None
    return list(keys)


def summarize_moments(moments: Any, stats: ModelStats,
                      summaries: dict[tuple[int, int], NeuronSummary],
                      baselines: Baselines | None, max_chunk: int = CHUNK_ELEMENTS,
                      draws: Sequence[int] | None = None) -> None:
    """Fold every cross block of ``moments`` (a :class:`CoMoments`, or anything with its
    ``blocks`` and ``cross``) into ``summaries[(a, b)]`` (neurons of ``a`` against ``b``) in
    both directions, then every further baseline draw; ``draws``: only these (draw 0 also
    folds the correlations).

    Works on chunks of one layer of ``a`` against as many whole layers of ``b`` as fit in
    ``max_chunk`` elements, so both rotations stay local to the chunk.
    """
    layout = stats.layout
    if baselines is not None:
        baselines.use(stats)
    inv = [stats.inv_std(m).float() for m in range(len(layout))]
    todo = list(range(baselines.draws if baselines is not None else 1) if draws is None
                else draws)
    for ch in _chunks(moments, layout, max_chunk) if 0 in todo else ():
        s_ab, s_ba = summaries[(ch.a, ch.b)], summaries[(ch.b, ch.a)]
        c = ch.cross.float()  # [d_a, n_b]
        ia, ib = inv[ch.a][ch.rows_a], inv[ch.b][ch.rows_b]
        rho = torch.mul(c, ia[:, None]).mul_(ib[None, :])
        s_ab.add_pair(rho, ch.rows_a, ch.rows_b.start, s_ba)  # and rho.t() into s_ba
        del rho
        if baselines is not None:
            _baseline_chunk(ch, c, ia, ib, s_ab, s_ba, baselines, 0)
        del c
    for draw in (d for d in todo if d > 0):
        assert baselines is not None
        baselines.prepare(_pass_keys(moments, layout, draw))
        for ch in _chunks(moments, layout, max_chunk):
            _baseline_chunk(ch, ch.cross.float(), inv[ch.a][ch.rows_a], inv[ch.b][ch.rows_b],
                            summaries[(ch.a, ch.b)], summaries[(ch.b, ch.a)], baselines, draw)


def _baseline_chunk(ch: _Chunk, c: torch.Tensor, ia: torch.Tensor, ib: torch.Tensor,
                    s_ab: NeuronSummary, s_ba: NeuronSummary, baselines: Baselines,
                    draw: int) -> None:
    """Both baselines of one chunk ``c: Float32[d_a, n_b]`` for baseline ``draw``."""
    db = baselines.layout.shapes[ch.b].d_mlp
    rot = torch.empty_like(c)
    for lb in range(ch.g0, ch.g1):  # a -> b: rotate each layer of b
        bb, ibr = baselines.get(ch.b, lb, draw)
        cols = slice((lb - ch.g0) * db, (lb - ch.g0 + 1) * db)
        torch.mm(c[:, cols], bb, out=rot[:, cols])
        rot[:, cols].mul_(ibr[None, :])
    s_ab.add_baseline(rot.mul_(ia[:, None]), ch.rows_a, draw)
    ba, iar = baselines.get(ch.a, ch.la, draw)  # b -> a: rotate this layer of a
    torch.mm(ba.t(), c, out=rot)
    s_ba.add_baseline(rot.mul_(iar[:, None]).mul_(ib[None, :]).t(), ch.rows_b, draw)
