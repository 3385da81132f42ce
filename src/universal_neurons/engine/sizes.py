"""Byte sizes: parsing ``--max-memory`` values, printing them, the default budget, and the
baseline bases the planner counts (shapes with ``n_layers`` and ``d_mlp``)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from universal_neurons.errors import UserError

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


CPU_BUDGET_FRACTION = 0.7
"""Share of available RAM a CPU run plans for by default: the plan is a peak estimate
(measured within 10% at GPT-2-small shape, docs/scale.md), so 30% stays for the rest of
the machine."""


def default_budget(device: str) -> int:
    """70% of available RAM on CPU; 90% of free device memory on CUDA."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        free, _total = torch.cuda.mem_get_info(dev)
        return int(free * 0.9)
    try:
        import psutil

        available = int(psutil.virtual_memory().available)
    except ImportError:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        available = int(info["MemAvailable"].split()[0]) * 1024
    return int(available * CPU_BUDGET_FRACTION)


QR_WORKERS = min(8, os.cpu_count() or 1)
"""Bases made at once (``finalize.Baselines.prepare``: one single-threaded QR per core, at
most ``finalize.MAX_QR_WORKERS`` = 8)."""


def bases_bytes(shapes: Sequence[Any], largest_only: bool = False, draws: int = 1) -> int:
    """Float32 bases and rotated inverse stds of every layer; ``largest_only``: those of
    the largest model plus the float64 transients of the QRs in flight (Gaussian, Q, R, a
    float64 copy for the rotated variances), what is made while the co-moments are held."""
    per_model = [s.n_layers * s.d_mlp * (s.d_mlp + 1) * 4 for s in shapes]
    if largest_only:
        return max(per_model) * min(draws, 2) + qr_bytes(shapes)
    return sum(per_model)


def qr_bytes(shapes: Sequence[Any]) -> int:
    """Float64 transients of the QRs in flight (Gaussian, Q, R, a float64 copy)."""
    return QR_WORKERS * 4 * max(s.d_mlp for s in shapes) ** 2 * 8


FINALIZE_BYTES_PER_ELEMENT = 28
"""Peak temporaries per element of one summarised chunk (see ``finalize.summarize_moments``)."""


def summaries_bytes(shapes: Sequence[Any], mode: str, k: int, bins: int,
                    draws: int = 1) -> int:
    """Per-neuron summaries of both directions of every compared pair."""
    from universal_neurons.engine.layout import partner_range
    from universal_neurons.engine.summary import summary_nbytes

    total = 0
    for a in range(len(shapes)):
        for b in partner_range(a, len(shapes), mode):  # type: ignore[arg-type]
            na, nb = shapes[a].n_neurons, shapes[b].n_neurons
            total += (summary_nbytes(na, nb, k, bins, draws)
                      + summary_nbytes(nb, na, k, bins, draws))
    return total


def finalize_bytes(shapes: Sequence[Any], mode: str) -> int:
    """Temporaries of the largest summarised chunk."""
    from universal_neurons.engine.finalize import CHUNK_ELEMENTS
    from universal_neurons.engine.layout import partner_range

    chunk = 0
    for a in range(len(shapes)):
        for b in partner_range(a, len(shapes), mode):  # type: ignore[arg-type]
            da, db = shapes[a].d_mlp, shapes[b].d_mlp
            group = max(1, min(shapes[b].n_layers, CHUNK_ELEMENTS // (da * db)))
            chunk = max(chunk, da * db * group)
    return FINALIZE_BYTES_PER_ELEMENT * chunk
