"""Memory planning: what a correlation run will hold, decided before it starts.

The big items are the float64 cross co-moments (``T x N_partners`` per block), each
model's within-layer co-moments ``[L, d, d]``, the float32 row buffer the GEMMs read,
and the per-neuron summaries. If every block fits in the budget the run makes one pass
over the data; otherwise the reference (row) neurons are tiled, whole layers at a time,
over several passes. If one layer against its partners cannot fit, :func:`plan_correlation`
raises :class:`~universal_neurons.errors.UserError` with the number of bytes needed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from universal_neurons.engine.layout import CrossBlock, Layout, Mode, ModelShape, partner_range
from universal_neurons.engine.summary import summary_nbytes
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)

MIN_ROWS_PER_GEMM = 256
GEMM_TEMP_CAP = 128 * 2**20
"""Largest GEMM output scratch (bytes) before a block's rows are split over several GEMMs."""
GEMM_TEMP_BYTES = {"cpu": 12, "cuda": 4}
"""Scratch bytes per output element: float32 product + float64 copy on CPU, float32 on CUDA."""
RUNTIME_BYTES = {"cpu": 160 * 2**20, "cuda": 256 * 2**20}
"""Allocations the run makes outside its tensors (BLAS/oneDNN scratch, allocator and thread
arenas, output libraries; cuBLAS workspaces and caching-allocator slack on CUDA): measured
by benchmarks/bench_correlate.py."""
FINALIZE_BYTES_PER_ELEMENT = 28
"""Peak temporaries per element of one summarised chunk (see ``finalize.summarize_moments``)."""


@dataclass
class Plan:
    """Passes over the data, GEMM sizes and the bytes each part will hold."""

    passes: list[list[CrossBlock]]
    rows_per_gemm: int
    gemm_rows: int
    budget_bytes: int
    bytes: dict[str, int] = field(default_factory=dict)
    """Components: ``models`` (weights), ``forward`` (activations of one batch),
    ``layer_cov``, ``summaries``, ``cross`` (largest pass), ``buffer``, ``gemm_temp``,
    ``finalize`` (bases and chunk temporaries), ``extra`` (other accumulators),
    ``runtime`` (allocations outside tensors)."""

    @property
    def n_passes(self) -> int:
        return len(self.passes)

    @property
    def total_bytes(self) -> int:
        """Peak estimate: resident parts plus the larger of the streaming and finalising phases."""
        b = self.bytes
        resident = (b["models"] + b["layer_cov"] + b["summaries"] + b["cross"] + b["extra"]
                    + b["runtime"])
        stream = b["forward"] + b["buffer"] + b["gemm_temp"]
        return resident + max(stream, b["finalize"])

    @property
    def engine_bytes(self) -> int:
        """Peak estimate without the model weights (what the run adds once models are loaded)."""
        return self.total_bytes - self.bytes["models"]

    def to_dict(self) -> dict:
        return {
            "n_passes": self.n_passes, "rows_per_gemm": self.rows_per_gemm,
            "gemm_rows": self.gemm_rows, "budget_bytes": self.budget_bytes,
            "total_bytes": self.total_bytes, "bytes": dict(self.bytes),
            "passes": [[[b.row, b.layer_start, b.layer_stop, b.col_start, b.col_stop]
                        for b in p] for p in self.passes],
        }

    def describe(self, shapes: Sequence[ModelShape]) -> str:
        lines = [f"memory plan: {format_bytes(self.total_bytes)} of "
                 f"{format_bytes(self.budget_bytes)} budget, {self.n_passes} pass(es), "
                 f"{self.rows_per_gemm} rows per GEMM"]
        lines += [f"  {k:<10} {format_bytes(v)}" for k, v in self.bytes.items()]
        for i, p in enumerate(self.passes):
            desc = ", ".join(f"{shapes[b.row].name} L{b.layer_start}-{b.layer_stop - 1} x "
                             f"{'+'.join(shapes[m].name for m in b.partners)}" for b in p)
            lines.append(f"  pass {i}: {desc}")
        return "\n".join(lines)


def plan_correlation(shapes: Sequence[ModelShape], mode: Mode, budget_bytes: int, *,
                     k: int = 10, bins: int = 100, baseline: bool = True,
                     rows_per_gemm: int = 4096, model_bytes: int = 0, forward_bytes: int = 0,
                     extra_bytes: int = 0, bf16_copy: bool = False,
                     device_type: str = "cpu") -> Plan:
    """Plan a correlation run within ``budget_bytes`` (see module doc).

    ``model_bytes``/``forward_bytes``/``extra_bytes`` are the weights, one forward batch's
    activations and other accumulators' state, counted against the budget too.
    ``bf16_copy``: the GEMMs read a bf16 copy of the row buffer (``--precision bf16``).
    ``device_type``: ``cpu`` or ``cuda`` (GEMM scratch differs).
    Candidate ``rows_per_gemm`` are halved down to 256 if that saves passes.
    """
    if len(shapes) < 2:
        raise UserError(f"correlation needs at least two models, got {len(shapes)}")
    layout = Layout(shapes)
    temp_bytes = GEMM_TEMP_BYTES.get(device_type, 4)
    fixed = {
        "models": model_bytes, "forward": forward_bytes, "extra": extra_bytes,
        "layer_cov": sum(s.n_layers * s.d_mlp ** 2 * 8 for s in shapes) + layout.total * 8,
        "summaries": _summaries_bytes(shapes, mode, k, bins),
        "finalize": _finalize_bytes(shapes, mode, baseline),
        "temp_bytes": temp_bytes,
        "runtime": RUNTIME_BYTES.get(device_type, RUNTIME_BYTES["cuda"]),
    }
    best: Plan | None = None
    rows = rows_per_gemm
    while True:
        plan = _pack(shapes, layout, mode, budget_bytes, rows, fixed, bf16_copy)
        if plan is not None and (best is None or plan.n_passes < best.n_passes):
            best = plan
        if rows <= MIN_ROWS_PER_GEMM or (best is not None and best.n_passes == 1):
            break
        rows = max(MIN_ROWS_PER_GEMM, rows // 2)
    if best is None:
        need = _min_need(shapes, layout, mode, MIN_ROWS_PER_GEMM, fixed, bf16_copy)
        raise UserError(
            f"--max-memory {format_bytes(budget_bytes)} is too small: the smallest tile (one "
            f"layer of one model against its partners) needs {need:,} bytes "
            f"({format_bytes(need)}); raise --max-memory to at least {format_bytes(need)}, "
            "use fewer or smaller models, or run on a device with more memory")
    log.debug("plan: %s", best.to_dict())
    return best


def _pack(shapes: Sequence[ModelShape], layout: Layout, mode: Mode, budget: int, rows: int,
          fixed: dict[str, int], bf16_copy: bool) -> Plan | None:
    """Greedy: add one (row model, layer) unit at a time; a new pass when the next won't fit."""
    units = [(m, layer) for m in range(len(shapes)) if len(partner_range(m, len(shapes), mode))
             for layer in range(shapes[m].n_layers)]
    passes: list[list[tuple[int, int]]] = [[]]
    for unit in units:
        trial = passes[-1] + [unit]
        if _pass_total(shapes, layout, mode, trial, rows, fixed, bf16_copy) <= budget:
            passes[-1] = trial
            continue
        if not passes[-1] or _pass_total(shapes, layout, mode, [unit], rows, fixed,
                                         bf16_copy) > budget:
            return None
        passes.append([unit])
    block_passes = [_blocks(shapes, mode, p) for p in passes]
    worst = max(block_passes, key=lambda p: _cross_bytes(layout, p))
    plan = Plan(block_passes, rows, _gemm_rows(layout, worst, fixed["temp_bytes"]), budget)
    plan.bytes = _components(layout, worst, rows, fixed, bf16_copy)
    return plan


def _min_need(shapes, layout, mode, rows, fixed, bf16_copy) -> int:
    units = [(m, layer) for m in range(len(shapes)) if len(partner_range(m, len(shapes), mode))
             for layer in range(shapes[m].n_layers)]
    return max(_pass_total(shapes, layout, mode, [u], rows, fixed, bf16_copy) for u in units)


def _pass_total(shapes, layout, mode, units, rows, fixed, bf16_copy) -> int:
    blocks = _blocks(shapes, mode, units)
    plan = Plan([blocks], rows, _gemm_rows(layout, blocks, fixed["temp_bytes"]), 0)
    plan.bytes = _components(layout, blocks, rows, fixed, bf16_copy)
    return plan.total_bytes


def single_pass_blocks(shapes: Sequence[ModelShape], mode: Mode) -> list[CrossBlock]:
    """Every cross block of a run in one pass (one block per row model)."""
    units = [(m, layer) for m in range(len(shapes)) if len(partner_range(m, len(shapes), mode))
             for layer in range(shapes[m].n_layers)]
    return _blocks(shapes, mode, units)


def _blocks(shapes: Sequence[ModelShape], mode: Mode, units: list[tuple[int, int]]
            ) -> list[CrossBlock]:
    """Runs of consecutive layers of one row model become one block."""
    blocks: list[CrossBlock] = []
    for m, layer in units:
        pr = partner_range(m, len(shapes), mode)
        last = blocks[-1] if blocks else None
        if last is not None and last.row == m and last.layer_stop == layer:
            blocks[-1] = CrossBlock(m, last.layer_start, layer + 1, pr.start, pr.stop)
        else:
            blocks.append(CrossBlock(m, layer, layer + 1, pr.start, pr.stop))
    return blocks


def _cross_bytes(layout: Layout, blocks: list[CrossBlock]) -> int:
    return sum(_rows(layout, b) * _cols(layout, b) * 8 for b in blocks)


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


def _components(layout: Layout, blocks: list[CrossBlock], rows: int, fixed: dict[str, int],
                bf16_copy: bool) -> dict[str, int]:
    d_max = max(s.d_mlp for s in layout.shapes)
    buffer = (rows + 1) * layout.total * (6 if bf16_copy else 4)
    widest = max((_cols(layout, b) for b in blocks), default=0)
    tb = fixed["temp_bytes"]
    gemm_temp = max(_gemm_rows(layout, blocks, tb) * widest * tb, d_max * d_max * tb)
    return {"models": fixed["models"], "forward": fixed["forward"],
            "layer_cov": fixed["layer_cov"], "summaries": fixed["summaries"],
            "cross": _cross_bytes(layout, blocks), "buffer": buffer, "gemm_temp": gemm_temp,
            "finalize": fixed["finalize"], "extra": fixed["extra"], "runtime": fixed["runtime"]}


def _summaries_bytes(shapes: Sequence[ModelShape], mode: Mode, k: int, bins: int) -> int:
    total = 0
    for a in range(len(shapes)):
        for b in partner_range(a, len(shapes), mode):
            na, nb = shapes[a].n_neurons, shapes[b].n_neurons
            total += summary_nbytes(na, nb, k, bins) + summary_nbytes(nb, na, k, bins)
    return total


def _finalize_bytes(shapes: Sequence[ModelShape], mode: Mode, baseline: bool) -> int:
    """Cached float32 bases of every model, plus the temporaries of the largest chunk."""
    from universal_neurons.engine.finalize import CHUNK_ELEMENTS

    chunk = 0
    for a in range(len(shapes)):
        for b in partner_range(a, len(shapes), mode):
            da, db = shapes[a].d_mlp, shapes[b].d_mlp
            group = max(1, min(shapes[b].n_layers, CHUNK_ELEMENTS // (da * db)))
            chunk = max(chunk, da * db * group)
    temps = FINALIZE_BYTES_PER_ELEMENT * chunk
    if not baseline:
        return temps
    d_max = max(s.d_mlp for s in shapes)
    bases = sum(s.n_layers * s.d_mlp * (s.d_mlp + 1) * 4 for s in shapes)
    return bases + temps + 4 * d_max * d_max * 8  # float64 Gaussian, Q, R, S B while caching


# ---- sizes --------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20,
          "mb": 10**6, "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40,
          "tb": 10**12}


def parse_bytes(text: str | int) -> int:
    """``"8G"``/``"8GiB"`` -> 8 * 2**30, ``"8GB"`` -> 8e9, ``"1.5e9"`` -> 1500000000."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        raise UserError(f"bad memory size {text!r}; write e.g. 8G (GiB), 8GB (10^9 bytes), "
                        "512M or 2e9")
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def default_budget(device: str) -> int:
    """50% of available RAM on CPU; 90% of free device memory on CUDA."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free * 0.9)
    try:
        import psutil

        return int(psutil.virtual_memory().available * 0.5)
    except ImportError:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024 // 2
