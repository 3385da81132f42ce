"""Finalized activation statistics of one model, saved to and loaded from safetensors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 2
"""Version of ``activation_stats.safetensors`` (its metadata's ``format_version``; files
without one are version 1). 2 added the bottom/sample candidates and the shown examples
with their window activations (``example_*``, ``band_edges``)."""


def _empty(ndim: int, dtype: Any = np.float32):
    return field(default_factory=lambda: np.zeros((0,) * ndim, dtype))


@dataclass
class ActivationStatsResult:
    """Finalized statistics; per-neuron arrays are ``[layers, d_mlp, ...]``.

    ``hist [L, d_mlp, n_bins + 2]`` counts ``[underflow, bins..., overflow]``; interior bin
    ``j`` of a neuron covers ``[hist_lo + j*hist_width, hist_lo + (j+1)*hist_width)`` for
    ``j < (hist_hi - hist_lo) / hist_width`` (later bins are unused). ``top_*`` are
    ``[L, d_mlp, k]`` sorted by decreasing post-activation (seq -1 where fewer tokens were
    seen). For ``token_ids [T]``: ``token_count [T]`` and ``token_mean``/``token_max``
    ``[T, L, d_mlp]`` over the positions holding the token (NaN / -inf if none);
    ``prev_token_count``, ``prev_token_mean`` over the positions that follow it.
    With the whole-vocabulary table: ``vocab_token_count [V]`` (every id) and
    ``token_top_ids``/``token_top_mean [L, d_mlp, k]`` (float32), per neuron the ids of
    highest mean activation among ids seen ``vocab_min_count`` times or more (-1 / NaN
    past those); otherwise these are empty.

    Example candidates (``engine.example_candidates``): ``bottom_*`` ``[L, d_mlp, k]`` by
    increasing value (seq -1 where empty); ``sample_*`` a uniform sample of positive
    activations (value NaN, seq -1 where empty). The examples a report shows
    (``engine.example_windows``; empty until selected): ``example_seq``, ``example_pos``,
    ``example_value`` (the pass's value at the token) and ``example_kind`` (``KIND_*`` of
    ``example_windows``, -1 = empty slot) ``[L, d_mlp, E]``; ``example_acts [L, d_mlp, E,
    before + 1 + after]`` the post-activation at every token of the example's window (NaN
    outside the sequence); ``band_edges [L, d_mlp, n_bands, 2]`` the value range of each
    quantile band; ``examples`` (metadata) the window and band settings.
    """

    model: str
    n_tokens: int
    sparsity_rule: str
    mean: np.ndarray
    var: np.ndarray
    skew: np.ndarray
    kurt: np.ndarray
    sparsity: np.ndarray
    pre_min: np.ndarray
    pre_max: np.ndarray
    hist: np.ndarray
    hist_lo: np.ndarray
    hist_hi: np.ndarray
    hist_width: np.ndarray
    top_values: np.ndarray
    top_seq: np.ndarray
    top_pos: np.ndarray
    token_ids: np.ndarray
    token_count: np.ndarray
    token_mean: np.ndarray
    token_max: np.ndarray
    prev_token_count: np.ndarray
    prev_token_mean: np.ndarray
    vocab_token_count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    token_top_ids: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.int32))
    token_top_mean: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))
    bottom_values: np.ndarray = _empty(3)
    bottom_seq: np.ndarray = _empty(3, np.int64)
    bottom_pos: np.ndarray = _empty(3, np.int64)
    sample_values: np.ndarray = _empty(3)
    sample_seq: np.ndarray = _empty(3, np.int64)
    sample_pos: np.ndarray = _empty(3, np.int64)
    example_seq: np.ndarray = _empty(3, np.int64)
    example_pos: np.ndarray = _empty(3, np.int64)
    example_value: np.ndarray = _empty(3)
    example_kind: np.ndarray = _empty(3, np.int8)
    example_acts: np.ndarray = _empty(4)
    band_edges: np.ndarray = _empty(4)
    examples: dict = field(default_factory=dict)
    """Window and band settings of ``example_*`` (``example_windows.ExampleConfig``)."""

    NEURON_COLUMNS = ("mean", "var", "skew", "kurt", "sparsity")

    def frame(self):
        """One row per neuron: ``layer, neuron, mean, var, skew, kurt, sparsity``."""
        import pandas as pd

        n_layers, d_mlp = self.mean.shape
        layer, neuron = np.divmod(np.arange(n_layers * d_mlp), d_mlp)
        cols = {c: getattr(self, c).reshape(-1) for c in self.NEURON_COLUMNS}
        return pd.DataFrame({"layer": layer, "neuron": neuron, **cols})

    def save(self, path: str | Path) -> None:
        """Write every array to one safetensors file (atomically)."""
        from safetensors.numpy import save_file

        from universal_neurons.rundir import atomic_path

        arrays = {k: np.ascontiguousarray(v) for k, v in self.__dict__.items()
                  if isinstance(v, np.ndarray)}
        meta = {"model": self.model, "n_tokens": str(self.n_tokens),
                "sparsity_rule": self.sparsity_rule, "format_version": FORMAT_VERSION,
                "examples": self.examples}
        with atomic_path(path) as tmp:
            save_file(arrays, str(tmp), metadata={"meta": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> ActivationStatsResult:
        from safetensors import safe_open
        from safetensors.numpy import load_file

        with safe_open(str(path), "np") as f:
            meta = json.loads(f.metadata()["meta"])
        return cls(model=meta["model"], n_tokens=int(meta["n_tokens"]),
                   sparsity_rule=meta["sparsity_rule"], examples=meta.get("examples") or {},
                   **load_file(str(path)))
