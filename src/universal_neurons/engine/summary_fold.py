"""One correlation chunk folded into per-neuron summaries along rows and columns at once.

:func:`fold_chunk` is what :meth:`NeuronSummary.add` and :meth:`NeuronSummary.add_pair`
run. On CPU it works on blocks of rows small enough to stay in cache, and shares every
pass between the two directions: one pass of bin indices serves the histograms of rows and
of columns, one ``x^2, x^3, x^4`` serves both power sums, and the columns are never copied
into a transposed layout. It runs single-threaded on CPU: on cache-sized blocks, per-op
OpenMP synchronisation cost more than a second thread gained (4x slower with 2 threads
than with 1 on a shared 2-core machine), and worker threads do not help because torch ops
hold the GIL (measured: docs/scale.md).

Top-k is two-stage: the maxima (minima) of groups of ``g`` values, then ``topk`` over the
values of the ``k`` best groups only. The ``k`` largest values lie in the ``k`` groups of
largest maxima (a value outside them is below ``k`` group maxima), so this finds the same
values as a full ``topk``; only which of two equal values comes first may differ. The
max/argmax are the first entry of the top-k.

Histogram bins: ``floor((x + 1) bins / 2)`` clamped to ``[0, bins - 1]``, in float32 (a
value within float32 rounding of a bin edge may land on either side); a missing value
(NaN) goes to an extra bin ``bins`` that is dropped, so no masked copies are made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import torch

if TYPE_CHECKING:
    from universal_neurons.engine.summary import NeuronSummary

BLOCK_ELEMENTS = 2**18
"""Elements per block of rows on CPU (1 MiB of float32: the block and its temporaries stay
in the core's cache through all the passes). CUDA takes the whole chunk as one block."""
COL_HIST_ROWS = 512
"""Rows of column bin indices gathered before one ``bincount`` into the ``[c, bins]``
column histogram (whose zeroing would otherwise cost as much as counting one block)."""
COL_GATHER_COST = 6
"""Cost of gathering one column candidate relative to ranking one group (measured)."""
MIN_GROUPS_PER_K = 4
"""Two-stage top-k only with at least this many groups per wanted value."""
_F64 = torch.float64


class Extremes(NamedTuple):
    """``k`` largest (``top_*``) and smallest (``bot_*``) values per row, sorted, with
    their column indices; ``[n, k]``."""
    top_val: torch.Tensor
    top_idx: torch.Tensor
    bot_val: torch.Tensor
    bot_idx: torch.Tensor


def group_size(n: int, k: int, gather_cost: int = 1) -> int:
    """Group size ``g`` (a divisor of ``n``, at most 64) for a two-stage top-``k`` of ``n``
    values: the one of least work ``gather_cost k g + n / g`` (candidates gathered, groups
    ranked) among those leaving at least ``MIN_GROUPS_PER_K * k`` groups; 1 (a plain
    ``topk``) when none ``>= 2`` does."""
    fits = [g for g in range(2, 65) if n % g == 0 and n // g >= MIN_GROUPS_PER_K * k]
    return min(fits, key=lambda g: gather_cost * k * g + n // g) if fits else 1


def _pick(x: torch.Tensor, group_ext: torch.Tensor, k: int, g: int,
          largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` of ``x: [n, m]`` along dim 1 given ``group_ext: [n, m / g]``, the extreme
    of each group of ``g`` columns ``{j, j + m / g, j + 2 m / g, ..}`` (strided, so the
    group extremes are a reduction over an outer dimension); ``x`` itself when ``g == 1``."""
    if g == 1:
        return x.topk(k, 1, largest=largest, sorted=True)
    n, m = x.shape
    _, gi = group_ext.topk(k, 1, largest=largest, sorted=False)  # [n, k]
    cols = (gi[:, :, None] + torch.arange(0, m, m // g, device=x.device)).view(n, k * g)
    v, pos = x.gather(1, cols).topk(k, 1, largest=largest, sorted=True)
    return v, cols.gather(1, pos)


@dataclass
class _Geometry:
    """What every block of one chunk shares."""
    r: int
    c: int
    bins: int
    k_row: int  # 0: no row summary
    k_col: int  # 0: no column summary
    g_row: int
    g_col: int
    rb: int  # rows per block


@dataclass
class _Partial:
    """Results of the row blocks; the row parts are per block, keyed by first row."""
    rows: dict[int, tuple[Extremes, torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    col_groups: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    col_power: torch.Tensor | None = None  # [4, c] float64
    col_hist: torch.Tensor | None = None  # [c * (bins + 1)] long
    any_nan: bool = False


def fold_chunk(rho: torch.Tensor, row_sum: NeuronSummary | None, rows: slice,
               col_sum: NeuronSummary | None, cols: slice) -> None:
    """Fold ``rho: Float32[r, c]`` (contiguous; NaN = missing) into ``row_sum`` (rows
    ``rows`` of that summary against partner columns ``cols``) and ``col_sum`` (its
    transpose: rows ``cols`` of that summary against partner columns ``rows``). Either
    summary may be ``None``."""
    r, c = rho.shape
    ref = row_sum if row_sum is not None else col_sum
    if ref is None or r == 0 or c == 0:
        return
    k_row = min(row_sum.k, c) if row_sum is not None else 0
    k_col = min(col_sum.k, r) if col_sum is not None else 0
    g_row = group_size(c, k_row) if k_row else 1
    # a column candidate is a cache miss (rows apart), a row candidate is in cache
    g_col = group_size(r, k_col, gather_cost=COL_GATHER_COST) if k_col else 1
    rb = r
    if rho.device.type == "cpu":
        rb = min(r, max(g_col, BLOCK_ELEMENTS // c // g_col * g_col))
    geo = _Geometry(r, c, ref.bins, k_row, k_col, g_row, g_col, rb)
    starts = list(range(0, r, rb))
    threads = torch.get_num_threads()
    if rho.device.type == "cpu":
        torch.set_num_threads(1)  # see the module docstring
    try:
        _fold(rho, row_sum, rows, col_sum, cols, geo, starts)
    finally:
        torch.set_num_threads(threads)


def _fold(rho: torch.Tensor, row_sum: NeuronSummary | None, rows: slice,
          col_sum: NeuronSummary | None, cols: slice, geo: _Geometry, starts: list[int]) -> None:
    r, c = rho.shape
    part = _fold_blocks(rho, starts, geo)
    if row_sum is not None:
        blocks = [part.rows[i0] for i0 in starts]
        ext = Extremes(*(torch.cat([b[0][j] for b in blocks]) for j in range(4)))
        hist = torch.cat([b[1] for b in blocks])  # [r, bins + 1]
        power = torch.cat([b[2] for b in blocks], 1)
        row_sum.fold_parts(rows, cols.start, ext, hist[:, :-1], power, c - hist[:, -1])
    if col_sum is not None:
        assert part.col_power is not None and part.col_hist is not None
        hist = part.col_hist.view(c, geo.bins + 1)
        groups = [part.col_groups[i0] for i0 in starts if i0 in part.col_groups]
        ext = _column_extremes(rho, groups, geo, part.any_nan)
        col_sum.fold_parts(cols, rows.start, ext, hist[:, :-1], part.col_power,
                           r - hist[:, -1])


def _fold_blocks(rho: torch.Tensor, starts: list[int], geo: _Geometry) -> _Partial:
    """Row blocks ``rho[i0 : i0 + rb]`` for ``i0`` in ``starts``."""
    dev, c, bins = rho.device, geo.c, geo.bins
    out = _Partial()
    row_off = torch.arange(geo.rb, device=dev, dtype=torch.int32)[:, None] * (bins + 1)
    col_off = torch.arange(c, device=dev, dtype=torch.int32) * (bins + 1)
    if geo.k_col:
        out.col_power = torch.zeros(4, c, dtype=_F64, device=dev)
        out.col_hist = torch.zeros(c * (bins + 1), dtype=torch.long, device=dev)
        pend = torch.empty(max(geo.rb, COL_HIST_ROWS // geo.rb * geo.rb), c, device=dev,
                           dtype=torch.int32)
    filled = 0
    for i0 in starts:
        blk = rho[i0:i0 + geo.rb]
        n = blk.shape[0]
        s1 = blk.sum(1)
        valid, hi, lo, x = None, blk, blk, blk
        if not math.isfinite(s1.sum().item()):
            out.any_nan = True
            valid = ~torch.isnan(blk)
            hi = torch.where(valid, blk, -math.inf)
            lo = torch.where(valid, blk, math.inf)
            x = torch.where(valid, blk, 0.0)
            s1 = x.sum(1)
        # histogram bins once for both directions; a missing value goes to bin ``bins``
        b = torch.add(x, 1.0).mul_(bins / 2.0).clamp_(0, bins - 1).to(torch.int32)
        if valid is not None:
            b.masked_fill_(~valid, bins)
        # power sums: float32 sums (cascade) of each block, accumulated in float64
        x2 = x * x
        x3 = x2 * x
        x4 = x2 * x2
        if geo.k_row:
            hist = torch.bincount((b + row_off[:n]).view(-1), minlength=n * (bins + 1))
            power = torch.stack([s1, x2.sum(1), x3.sum(1), x4.sum(1)]).to(_F64)
            out.rows[i0] = (_block_extremes(hi, lo, geo.k_row, geo.g_row),
                            hist.view(n, bins + 1), power)
        if geo.k_col:
            assert out.col_power is not None and out.col_hist is not None
            out.col_power += torch.stack([x.sum(0), x2.sum(0), x3.sum(0),
                                          x4.sum(0)]).to(_F64)
            if filled + n > pend.shape[0]:
                out.col_hist += torch.bincount(pend[:filled].view(-1), minlength=out.col_hist.numel())
                filled = 0
            torch.add(b, col_off, out=pend[filled:filled + n])
            filled += n
            if geo.g_col > 1:
                g = geo.g_col
                out.col_groups[i0] = (hi.view(n // g, g, c).amax(1), lo.view(n // g, g, c).amin(1))
    if geo.k_col and filled:
        assert out.col_hist is not None
        out.col_hist += torch.bincount(pend[:filled].view(-1), minlength=out.col_hist.numel())
    return out


def _nan_to(x: torch.Tensor, fill: float) -> torch.Tensor:
    return torch.where(torch.isnan(x), fill, x)


def _block_extremes(hi: torch.Tensor, lo: torch.Tensor, k: int, g: int) -> Extremes:
    """Row-wise top-``k`` of ``hi`` and bottom-``k`` of ``lo`` (``[n, m]``)."""
    n, m = hi.shape
    if g == 1:
        return Extremes(*_pick(hi, hi, k, 1, True), *_pick(lo, lo, k, 1, False))
    gmax = hi.view(n, g, m // g).amax(1)
    gmin = lo.view(n, g, m // g).amin(1)
    return Extremes(*_pick(hi, gmax, k, g, True), *_pick(lo, gmin, k, g, False))


def _column_extremes(rho: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor]],
                     geo: _Geometry, any_nan: bool) -> Extremes:
    """Column-wise top/bottom-``k`` of ``rho: [r, c]`` as ``[c, k]``, from the extremes of
    the groups of ``g`` consecutive rows (or directly when ``g == 1``)."""
    k, g = geo.k_col, geo.g_col
    if g == 1:
        x = rho.t()
        hi = lo = x
        if any_nan:
            hi, lo = _nan_to(x, -math.inf), _nan_to(x, math.inf)
        return Extremes(*_pick(hi, hi, k, 1, True), *_pick(lo, lo, k, 1, False))
    out = []
    for j, largest in ((0, True), (1, False)):
        ext = torch.cat([p[j] for p in groups]).t()  # [c, G]
        _, gi = ext.topk(k, 1, largest=largest, sorted=False)  # [c, k] group ids
        rws = (gi[:, :, None] * g + torch.arange(g, device=rho.device)).view(-1, k * g)
        cols = torch.arange(geo.c, device=rho.device)[:, None]
        v = rho.view(-1).take(rws * geo.c + cols)  # [c, k g]
        if any_nan:
            v = _nan_to(v, -math.inf if largest else math.inf)
        v, pos = v.topk(k, 1, largest=largest, sorted=True)
        out += [v, rws.gather(1, pos)]
    return Extremes(*out)
