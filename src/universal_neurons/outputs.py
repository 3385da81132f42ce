"""What each stage writes into a run directory, and about how many bytes.

``universal-neurons run`` skips a stage only when every pattern of its row in
:data:`STAGE_OUTPUTS` matches at least one file, and never reports success otherwise;
stages check free space against these estimates before they compute.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from universal_neurons.constants import (
    CORRELATIONS_DIR,
    MANIFEST,
    NEURONS_DIR,
    PAPER_DIR,
    PAPER_INDEX_JSON,
    PAPER_INDEX_MD,
    REPORT_DIR,
    STATS_DIR,
)

STAGE_OUTPUTS: dict[str, tuple[str, ...]] = {
    "correlate": (MANIFEST, f"{NEURONS_DIR}/*.parquet", f"{CORRELATIONS_DIR}/*.safetensors",
                  f"{STATS_DIR}/*/activation_stats.safetensors"),
    "weights": (f"{STATS_DIR}/*/weights.safetensors",),
    "properties": ("properties/claims.json", "properties/claims.parquet"),
    "explain": ("explanations/*_vr.parquet",),
    "families": ("families/*_counts.csv",),
    "entropy": ("entropy/sweep.parquet",),
    "attention": ("attention/heuristic_summary.json",),
    "paper-results": ("paper/corr_distributions.parquet",),
    "paper": (f"{PAPER_DIR}/{PAPER_INDEX_JSON}", f"{PAPER_DIR}/{PAPER_INDEX_MD}"),
    "report": (f"{REPORT_DIR}/index.html",),
}
"""Stage name -> glob patterns relative to the run directory; each must match a file."""

MIN_FREE_BYTES = 16 << 20
"""Free space asked of any output directory, whatever the estimate (manifest, plots, temps)."""


def missing_outputs(run_dir: str | os.PathLike, stage: str) -> list[str]:
    """The patterns of ``stage``'s outputs that match no file in ``run_dir``."""
    root = Path(run_dir)
    return [pat for pat in STAGE_OUTPUTS.get(stage, ())
            if not any(p.is_file() for p in root.glob(pat))]


def output_state(run_dir: str | os.PathLike, stage: str) -> dict[str, list[int]]:
    """``{relative path: [size, mtime_ns]}`` of the files ``stage``'s patterns match."""
    root = Path(run_dir)
    out: dict[str, list[int]] = {}
    for pat in STAGE_OUTPUTS.get(stage, ()):
        for p in root.glob(pat):
            if p.is_file():
                st = p.stat()
                out[p.relative_to(root).as_posix()] = [st.st_size, st.st_mtime_ns]
    return dict(sorted(out.items()))


def changed_outputs(old: dict[str, list[int]], new: dict[str, list[int]]) -> list[str]:
    """Files added, removed or rewritten between two :func:`output_state` snapshots."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def correlate_output_bytes(n_neurons: Sequence[int], all_pairs: bool, top_k: int,
                           bins: int) -> int:
    """Rough size of the correlate stage's outputs for models of ``n_neurons`` neurons.

    Per ordered pair ``(a, b)`` summarised, ``n_a`` rows of about ``4 k + bins + 16``
    float64 values (top/bottom values and indices, histogram, moments); per neuron table,
    about 40 columns in parquet and CSV. Doubled for the temporary copy written before the
    rename; at least :data:`MIN_FREE_BYTES`."""
    n = list(n_neurons)
    refs = range(len(n)) if all_pairs else range(1)
    pairs = {(a, b) for a in refs for b in range(len(n)) if b != a}
    pairs |= {(b, a) for a, b in pairs}
    summaries = sum(n[a] * (4 * top_k + bins + 16) * 8 for a, _ in pairs)
    tables = sum(n[a] * (24 + 3 * len(n)) * 30 for a in refs)
    return max(MIN_FREE_BYTES, 2 * (summaries + tables))


def model_neurons(spec: str) -> int | None:
    """``n_layers * d_mlp`` read from a local or bundled model's ``config.json`` (None if
    the spec is a hub id or the config is unreadable; nothing is downloaded)."""
    import json

    from universal_neurons.errors import UserError
    from universal_neurons.models.registry import resolve_spec

    try:
        ref = resolve_spec(spec)
        if ref.kind not in ("local", "bundled"):
            return None
        cfg = json.loads((Path(ref.location) / "config.json").read_text())
    except (UserError, OSError, ValueError):
        return None
    layers = cfg.get("n_layer") or cfg.get("num_hidden_layers")
    d_model = cfg.get("n_embd") or cfg.get("hidden_size")
    d_mlp = cfg.get("n_inner") or cfg.get("intermediate_size") or (4 * d_model if d_model
                                                                   else None)
    return int(layers * d_mlp) if layers and d_mlp else None


def run_output_bytes(specs: Sequence[str], all_pairs: bool) -> int:
    """Rough size of a whole study's outputs: twice the correlate stage's (explanations and
    the report are of the same order) plus the activation statistics, when every model's
    size can be read locally; else :data:`MIN_FREE_BYTES`."""
    n = [model_neurons(s) for s in specs]
    if not n or any(x is None for x in n):
        return MIN_FREE_BYTES
    n_int = [int(x or 0) for x in n]
    return (2 * correlate_output_bytes(n_int, all_pairs, top_k=10, bins=100)
            + STATS_BYTES_PER_NEURON * sum(n_int))


STATS_BYTES_PER_NEURON = 4 * 1024
"""About what ``stats/<model>/activation_stats.safetensors`` holds per neuron by default:
histogram (66 int64), top/bottom/sample candidates (80 x 20 bytes), 24 shown examples with
11-token windows (about 1.6 KB)."""
