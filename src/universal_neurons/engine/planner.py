"""Memory planning: what a correlation run will hold, decided before it starts.

The big items are the cross co-moment sums (``T x N_partners`` per block; float64, or
float32 with ``sums="fp32"``), each
model's within-layer co-moments ``[L, d, d]`` (first pass only: afterwards they shrink to
``O(N)`` statistics), the baseline bases (``[d, d]`` float32 per layer, made once, kept),
the float32 row buffer the GEMMs read (with ``K`` baseline draws: the bases of draw 0
and of the draw being summarised, and ``K`` rotated variances and baseline maxima per
neuron), one forward batch's activations, and the
per-neuron summaries. If everything fits in the budget the run makes one pass over the
data; otherwise the cross co-moments are tiled over several passes: whole layers of the
row model when they fit, else one layer against as many whole partner layers as fit. The
planner first lowers ``rows_per_gemm`` and the batch size when that saves passes. If even
one layer against one partner layer cannot fit, :func:`plan_correlation` raises
:class:`~universal_neurons.errors.UserError` with the number of bytes needed.

Peak (bytes), with ``R = models + summaries + stats + extra + runtime`` and
``stream = forward + buffer + gemm_temp`` (``forward_first`` instead of ``forward`` in the
first pass, whose extra accumulators may capture more sites, e.g. pre- and
post-activations for the activation statistics):

- first pass:  ``R + cross_first + max(layer_cov + stream, layer_cov + bases_step,
  bases + finalize)`` (the co-moments are freed model by model as the bases are made)
- later passes: ``R + bases + cross + max(stream, finalize)``
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from universal_neurons.engine.layout import CrossBlock, Layout, Mode, ModelShape, partner_range
from universal_neurons.engine.sizes import (
    bases_bytes,
    finalize_bytes,
    format_bytes,
    qr_bytes,
    summaries_bytes,
)
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)

MIN_ROWS_PER_GEMM = 256
GEMM_TEMP_CAP = 128 * 2**20
"""Largest GEMM output scratch (bytes) before a block's rows are split over several GEMMs."""
GEMM_TEMP_BYTES = {("cpu", "fp64"): 12, ("cpu", "fp32"): 6, ("cuda", "fp64"): 4,
                   ("cuda", "fp32"): 4}
"""Scratch bytes per output element, by device and sums: float32 product + float64 copy on
CPU (with float32 sums none for float32 GEMMs, which add in place; a bf16 product and its
float32 copy for bf16 ones), a float32 product on CUDA."""
SUM_BYTES = {"fp64": 8, "fp32": 4}
"""Bytes per co-moment sum (``--sums``)."""
RUNTIME_BYTES = {"cpu": 160 * 2**20, "cuda": 256 * 2**20}
"""Allocations the run makes outside its tensors (BLAS/oneDNN scratch, allocator and thread
arenas, output libraries; cuBLAS workspaces and caching-allocator slack on CUDA): measured
by benchmarks/bench_correlate.py."""

Atom = tuple[int, int, int, int]
"""The finest unit of work: (row model, row layer, partner model, partner layer)."""


@dataclass
class Plan:
    """Passes over the data, GEMM sizes and the bytes each part will hold."""

    passes: list[list[CrossBlock]]
    rows_per_gemm: int
    gemm_rows: int
    budget_bytes: int
    batch_size: int = 0
    """Sequences per forward pass (0: as configured)."""
    sums: str = "fp64"
    """Dtype of the co-moment sums (``fp64`` or ``fp32``)."""
    bytes: dict[str, int] = field(default_factory=dict)
    """Components: ``models`` (weights), ``forward`` (activations of one batch; in the
    first pass ``forward_first``),
    ``layer_cov`` (first pass), ``stats`` (kept after it), ``summaries``, ``cross``
    (largest pass), ``cross_first`` (first pass), ``buffer``, ``gemm_temp``, ``bases``
    (baseline bases, kept from the end of the first pass), ``finalize`` (chunk
    temporaries), ``extra`` (other accumulators), ``runtime`` (allocations outside
    tensors)."""

    @property
    def n_passes(self) -> int:
        return len(self.passes)

    @property
    def total_bytes(self) -> int:
        """Peak estimate over the phases of the run (see the module doc)."""
        first, later = phase_bytes(self.bytes)
        return first if self.n_passes < 2 else max(first, later)

    @property
    def engine_bytes(self) -> int:
        """Peak estimate without the model weights (what the run adds once models are loaded)."""
        return self.total_bytes - self.bytes["models"]

    def to_dict(self) -> dict:
        return {
            "n_passes": self.n_passes, "rows_per_gemm": self.rows_per_gemm,
            "gemm_rows": self.gemm_rows, "batch_size": self.batch_size,
            "sums": self.sums, "budget_bytes": self.budget_bytes,
            "total_bytes": self.total_bytes, "bytes": dict(self.bytes),
            "passes": [[b.to_list() for b in p] for p in self.passes],
        }

    def describe(self, shapes: Sequence[ModelShape]) -> str:
        lines = [f"memory plan: {format_bytes(self.total_bytes)} of "
                 f"{format_bytes(self.budget_bytes)} budget, {self.n_passes} pass(es), "
                 f"{self.rows_per_gemm} rows per GEMM"
                 + (f", batch {self.batch_size}" if self.batch_size else "")
                 + (f", {self.sums} sums" if self.sums != "fp64" else "")]
        lines += [f"  {k:<11} {format_bytes(v)}" for k, v in self.bytes.items()]
        layout = Layout(shapes)
        n = len(self.passes)
        for i, p in enumerate(self.passes):
            if n > 12 and 5 <= i < n - 5:  # long plans: the first and last five passes
                if i == 5:
                    lines.append(f"  ... {n - 10} more passes")
                continue
            lines.append(f"  pass {i}: " + ", ".join(describe_block(layout, b) for b in p))
        return "\n".join(lines)


def phase_bytes(b: dict[str, int]) -> tuple[int, int]:
    """Peak bytes of the first pass and of the largest later pass (module doc)."""
    resident = b["models"] + b["summaries"] + b["stats"] + b["extra"] + b["runtime"]
    stream = b["forward"] + b["buffer"] + b["gemm_temp"]
    stream_first = b.get("forward_first", b["forward"]) + b["buffer"] + b["gemm_temp"]
    first = resident + b["cross_first"] + max(b["layer_cov"] + stream_first,
                                              b["layer_cov"] + b["bases_step"],
                                              b["bases"] + b["finalize"])
    later = resident + b["bases"] + b["cross"] + max(stream, b["finalize"])
    return first, later


def forward_bytes(dims: Sequence[Any], batch_tokens: int, n_sites: int = 1) -> int:
    """Estimate of one batch's activation memory, for models with ``n_layers, d_model,
    d_mlp, n_heads, n_ctx`` (adapters or :class:`~universal_neurons.models.dims.ModelDims`).
    With ``c_m`` the bytes of model ``m``'s kept rows ``[n, L * d_mlp]`` (float32): while
    the last model runs, every model's rows (``capture_rows`` writes each layer into them
    as its hook fires) plus one layer's gathered copy, ``sum c + max c / L``; plus the
    largest model's transients (residual stream, MLP hidden, one attention-score tensor)."""
    c = [batch_tokens * m.n_layers * m.d_mlp * 4 * n_sites for m in dims]
    layer = max(ci // m.n_layers for ci, m in zip(c, dims))
    transient = max(batch_tokens * 4 * (4 * m.d_model + m.d_mlp + m.n_heads * m.n_ctx)
                    for m in dims)
    return sum(c) + layer + transient


def describe_block(layout: Layout, b: CrossBlock) -> str:
    """``ma L0-2 x mb+mc`` or, for a column tile, ``ma L3 x mb L4-11+mc L0-1``."""
    rows = (f"L{b.layer_start}" if b.layer_stop - b.layer_start == 1
            else f"L{b.layer_start}-{b.layer_stop - 1}")
    parts = []
    for m, lo, hi in layout.block_partner_layers(b):
        name = layout.shapes[m].name
        full = lo == 0 and hi == layout.shapes[m].n_layers
        parts.append(name if full else f"{name} L{lo}" + (f"-{hi - 1}" if hi - lo > 1 else ""))
    return f"{layout.shapes[b.row].name} {rows} x {'+'.join(parts)}"


def plan_correlation(shapes: Sequence[ModelShape], mode: Mode, budget_bytes: int, *,
                     k: int = 10, bins: int = 100, baseline: bool = True,
                     rows_per_gemm: int = 4096, model_bytes: int = 0, forward_bytes: int = 0,
                     extra_bytes: int = 0, bf16_copy: bool = False,
                     device_type: str = "cpu", batch_size: int = 0,
                     scratch_bytes: int = 0, draws: int = 1, blocks: int = 1,
                     sums: str = "fp64", forward_first_bytes: int | None = None) -> Plan:
    """Plan a correlation run within ``budget_bytes`` (see module doc).

    ``model_bytes``/``forward_bytes``/``extra_bytes`` are the weights, one forward batch's
    activations (of ``batch_size`` sequences) and other accumulators' state, counted
    against the budget too; ``scratch_bytes`` the largest temporaries of one accumulator
    update (streaming phase, whatever the batch). ``bf16_copy``: the GEMMs read a bf16 copy of the row buffer
    (``--precision bf16``). ``device_type``: ``cpu`` or ``cuda`` (GEMM scratch differs).
    ``draws``/``blocks``: baseline draws and jackknife token blocks (engine/blocks.py).
    ``sums``: ``fp64`` or ``fp32`` co-moment sums (half the bytes; ``moments.CoMoments``).
    ``forward_first_bytes``: one batch's activations in the first pass, when its extra
    accumulators capture more sites than the co-moments (default: ``forward_bytes``).
    Candidates: ``rows_per_gemm`` halved down to 256 and, when ``batch_size`` is given, the
    batch halved down to 1 (forward memory scales with it); the plan with the fewest
    passes wins, then the most rows per GEMM, then the largest batch.
    """
    if len(shapes) < 2:
        raise UserError(f"correlation needs at least two models, got {len(shapes)}")
    layout = Layout(shapes)
    if sums not in SUM_BYTES:
        raise ValueError(f"sums must be one of {tuple(SUM_BYTES)}, got {sums!r}")
    sb = SUM_BYTES[sums]
    temp_bytes = GEMM_TEMP_BYTES.get((device_type, sums), 4)
    draws = draws if baseline else 1  # more: 2 draws' bases held, QRs between chunk loops
    fixed = {
        "models": model_bytes, "extra": extra_bytes,
        "layer_cov": sum(s.n_layers * s.d_mlp ** 2 * sb for s in shapes) + layout.total * 8,
        "stats": layout.total * (24 + 12 * (draws - 1)),  # mean, M_ii, rotated variances
        "summaries": summaries_bytes(shapes, mode, k, bins, draws),
        "bases": bases_bytes(shapes) * min(draws, 2) if baseline else 0,
        "bases_step": bases_bytes(shapes, True, draws) if baseline else 0,
        "finalize": max(finalize_bytes(shapes, mode), qr_bytes(shapes) if draws > 1 else 0),
        "temp_bytes": temp_bytes,
        "runtime": RUNTIME_BYTES.get(device_type, RUNTIME_BYTES["cuda"]), "cross_copies": 1,
        "sum_bytes": sb,
    }
    if blocks > 1:
        from universal_neurons.engine.blocks import plan_blocks
        plan_blocks(fixed, shapes, mode, blocks, draws,
                    union_summary_bytes=summaries_bytes(shapes, mode, 1, 1, draws))
    atoms = _atoms(shapes, mode)
    # GEMM scratch of the widest block the run could have: an upper bound for every pass
    widest = _blocks(layout, mode, atoms)
    fixed["gemm_temp"] = max(_gemm_rows(layout, widest, temp_bytes) * max(
        _cols(layout, b) for b in widest) * temp_bytes, max(s.d_mlp for s in shapes) ** 2
        * temp_bytes)
    first_fwd = forward_bytes if forward_first_bytes is None else forward_first_bytes
    batches = [batch_size]
    while batches[-1] > 1:
        batches.append(batches[-1] // 2)
    best: Plan | None = None
    rows = rows_per_gemm
    while True:
        for batch in batches:
            fwd, fwd1 = (_scaled(f, batch, batch_size) + scratch_bytes
                         for f in (forward_bytes, first_fwd))
            plan = _pack(layout, mode, atoms, budget_bytes, rows,
                         {**fixed, "forward": fwd, "forward_first": fwd1}, bf16_copy)
            if plan is not None:
                plan.batch_size, plan.sums = batch, sums
                if best is None or _cost(plan, layout, model_bytes) < _cost(best, layout,
                                                                             model_bytes):
                    best = plan
                break  # a larger batch that fits beats a smaller one with as many passes
        if rows <= MIN_ROWS_PER_GEMM or (best is not None and best.n_passes == 1):
            break
        rows = max(MIN_ROWS_PER_GEMM, rows // 2)
    if best is None:
        fwd, fwd1 = (_scaled(f, 1, batch_size) + scratch_bytes for f in (forward_bytes, first_fwd))
        need = max(_need(layout, mode, [a], MIN_ROWS_PER_GEMM,
                         {**fixed, "forward": fwd, "forward_first": fwd1}, bf16_copy, first)
                   for a in atoms for first in (True, False))
        raise UserError(
            f"--max-memory {format_bytes(budget_bytes)} is too small: the smallest tile (one "
            f"layer of one model against one layer of a partner) needs {need:,} bytes "
            f"({format_bytes(need)}); raise --max-memory to at least {format_bytes(need)}, "
            "use fewer or smaller models, or run on a device with more memory")
    log.debug("plan: %s", best.to_dict())
    return best


def _scaled(forward: int, batch: int, batch_size: int) -> int:
    """``forward`` bytes of ``batch_size`` sequences, for ``batch`` sequences."""
    return forward * batch // batch_size if batch_size else forward


FLOAT64_ADD_FLOPS = 142
"""Cost of folding one float32 GEMM output element into its float64 sum, in GEMM flops
(about 28 bytes of memory traffic at ~15 GB/s against a ~150 GFLOP/s matmul): a GEMM over
``r`` rows costs ``2 r`` flops per output element plus this. Float32 sums cost nothing
more: the GEMM adds into them as it writes its output (``addmm_``)."""


def accumulate_flops_per_token(plan: Plan, layout: Layout, layer_cov: bool = True) -> float:
    """GEMM flops per kept token of the whole run's accumulation (every pass's cross blocks
    and the first pass's within-layer co-moments), the float64 folds counted as
    :data:`FLOAT64_ADD_FLOPS` per output element per ``rows_per_gemm`` rows (float64 sums)."""
    fold = FLOAT64_ADD_FLOPS if plan.sums == "fp64" else 0
    per = 2 + fold / plan.rows_per_gemm
    cross = sum(_rows(layout, b) * _cols(layout, b) for p in plan.passes for b in p)
    cov = sum(s.n_layers * s.d_mlp ** 2 for s in layout.shapes) if layer_cov else 0
    return (cross + cov) * per


def _cost(plan: Plan, layout: Layout, model_bytes: int) -> float:
    """Relative time of a plan per token: every pass re-runs the forward passes (about 2
    flops per float32 parameter), plus the accumulation."""
    return (plan.n_passes * 2 * model_bytes / 4
            + accumulate_flops_per_token(plan, layout, layer_cov=False))


def _atoms(shapes: Sequence[ModelShape], mode: Mode) -> list[Atom]:
    """Every (row model, row layer, partner, partner layer) of the run, in layout order."""
    return [(m, layer, b, lb) for m in range(len(shapes))
            for layer in range(shapes[m].n_layers)
            for b in partner_range(m, len(shapes), mode) for lb in range(shapes[b].n_layers)]


def _pack(layout: Layout, mode: Mode, atoms: list[Atom], budget: int, rows: int,
          fixed: dict[str, int], bf16_copy: bool) -> Plan | None:
    """Greedy: each pass takes the longest run of the remaining atoms that fits (binary
    search: a pass's need grows with its run), the first pass under its own terms."""
    passes: list[list[CrossBlock]] = []
    i = 0
    while i < len(atoms):
        first = not passes
        if _need(layout, mode, atoms[i:i + 1], rows, fixed, bf16_copy, first) > budget:
            return None
        lo, hi = 1, len(atoms) - i  # lo fits; find the largest that fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _need(layout, mode, atoms[i:i + mid], rows, fixed, bf16_copy, first) <= budget:
                lo = mid
            else:
                hi = mid - 1
        passes.append(_blocks(layout, mode, atoms[i:i + lo]))
        i += lo
    worst = max(passes[1:] or passes, key=lambda p: _cross_bytes(layout, p, fixed["sum_bytes"]))
    plan = Plan(passes, rows, _gemm_rows(layout, worst + passes[0], fixed["temp_bytes"]),
                budget)
    plan.bytes = _components(layout, worst, passes[0], rows, fixed, bf16_copy)
    return plan


def _need(layout: Layout, mode: Mode, atoms: list[Atom], rows: int, fixed: dict[str, int],
          bf16_copy: bool, first: bool) -> int:
    """Peak bytes of one pass over ``atoms`` (the first pass, or a later one)."""
    blocks = _blocks(layout, mode, atoms)
    first_total, later_total = phase_bytes(
        _components(layout, blocks, blocks if first else [], rows, fixed, bf16_copy))
    return first_total if first else later_total


def single_pass_blocks(shapes: Sequence[ModelShape], mode: Mode) -> list[CrossBlock]:
    """Every cross block of a run in one pass (one block per row model)."""
    layout = Layout(shapes)
    return _blocks(layout, mode, _atoms(shapes, mode))


def _blocks(layout: Layout, mode: Mode, atoms: list[Atom]) -> list[CrossBlock]:
    """Group a run of atoms into blocks: one row layer's consecutive partner layers form a
    column tile; consecutive row layers against *all* their partners merge into one block."""
    n = len(layout)
    tiles: list[CrossBlock] = []
    for m, layer, b, lb in atoms:
        t = tiles[-1] if tiles else None
        if t is not None and (t.row, t.layer_start) == (m, layer):
            tiles[-1] = CrossBlock(m, layer, layer + 1, t.col_start, b + 1, t.col_layer_start,
                                   lb + 1)
        else:
            tiles.append(CrossBlock(m, layer, layer + 1, b, b + 1, lb, lb + 1))
    blocks: list[CrossBlock] = []
    for t in tiles:
        pr = partner_range(t.row, n, mode)
        full = (t.col_start, t.col_layer_start) == (pr.start, 0) and t.col_stop == pr.stop \
            and t.col_layer_stop == layout.shapes[pr.stop - 1].n_layers
        if full:
            t = CrossBlock(t.row, t.layer_start, t.layer_stop, pr.start, pr.stop)
        last = blocks[-1] if blocks else None
        if (full and last is not None and last.row == t.row and last.layer_stop == t.layer_start
                and last.col_layer_stop is None and last.col_layer_start == 0):
            blocks[-1] = CrossBlock(t.row, last.layer_start, t.layer_stop, pr.start, pr.stop)
        else:
            blocks.append(t)
    return blocks


def _cross_bytes(layout: Layout, blocks: list[CrossBlock], sum_bytes: int) -> int:
    return sum(_rows(layout, b) * _cols(layout, b) * sum_bytes for b in blocks)


def _rows(layout: Layout, b: CrossBlock) -> int:
    s = layout.block_rows(b)
    return s.stop - s.start


def _cols(layout: Layout, b: CrossBlock) -> int:
    s = layout.block_cols(b)
    return s.stop - s.start


def _gemm_rows(layout: Layout, blocks: list[CrossBlock], temp_bytes: int = 12) -> int:
    if not blocks:
        return 1
    widest = max(_cols(layout, b) for b in blocks)
    tallest = max(_rows(layout, b) for b in blocks)
    return max(1, min(tallest, max(128, GEMM_TEMP_CAP // (temp_bytes * widest))))


def _components(layout: Layout, blocks: list[CrossBlock], first: list[CrossBlock], rows: int,
                fixed: dict[str, int], bf16_copy: bool) -> dict[str, int]:
    """Bytes of each part, ``blocks`` the largest pass and ``first`` the first pass."""
    buffer = (rows + 1) * layout.total * (6 if bf16_copy else 4)
    gemm_temp = fixed["gemm_temp"]
    return {"models": fixed["models"], "forward": fixed["forward"],
            "forward_first": fixed.get("forward_first", fixed["forward"]),
            "layer_cov": fixed["layer_cov"], "stats": fixed["stats"],
            "summaries": fixed["summaries"],
            "cross": _cross_bytes(layout, blocks, fixed["sum_bytes"]) * fixed["cross_copies"],
            "cross_first": _cross_bytes(layout, first, fixed["sum_bytes"]) * fixed["cross_copies"],
            "buffer": buffer,
            "gemm_temp": gemm_temp, "bases": fixed["bases"], "bases_step": fixed["bases_step"],
            "finalize": fixed["finalize"], "extra": fixed["extra"], "runtime": fixed["runtime"]}
