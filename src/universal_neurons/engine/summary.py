"""Per-neuron summaries of a correlation matrix, built chunk by chunk.

For each neuron ``i`` of a model and one partner model, :class:`NeuronSummary` keeps the
max/argmax, min/argmin, top-k and bottom-k partners, a histogram on fixed bins of
``[-1, 1]``, power sums for the mean/var/skew/kurtosis of the correlation row
``rho(i, .)``, and the max/min of the baseline row. Chunks may cover any subset of rows
and any range of partner columns, in any order, so the full ``[N_a, N_b]`` matrix never
exists; two summaries of disjoint chunks merge exactly.

Missing correlations (a dead neuron on either side) are NaN in the chunks: they are
skipped by every statistic, and a neuron with no valid correlation gets NaN values and
index ``-1``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from universal_neurons.engine.summary_fold import Extremes, fold_chunk

_F64 = torch.float64


class NeuronSummary:
    """Summaries of ``n`` neurons against a partner with ``n_partner`` neurons."""

    def __init__(self, n: int, n_partner: int, k: int = 10, bins: int = 100,
                 device: str | torch.device = "cpu"):
        if k < 1 or bins < 1:
            raise ValueError(f"k and bins must be positive, got k={k}, bins={bins}")
        self.n, self.n_partner, self.bins = n, n_partner, bins
        self.k = min(k, n_partner)
        inf = math.inf
        dev = torch.device(device)
        self.max_val = torch.full((n,), -inf, device=dev)
        self.max_idx = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.min_val = torch.full((n,), inf, device=dev)
        self.min_idx = torch.full((n,), -1, dtype=torch.long, device=dev)
        self.top_val = torch.full((n, self.k), -inf, device=dev)
        self.top_idx = torch.full((n, self.k), -1, dtype=torch.long, device=dev)
        self.bot_val = torch.full((n, self.k), inf, device=dev)
        self.bot_idx = torch.full((n, self.k), -1, dtype=torch.long, device=dev)
        self.hist = torch.zeros(n, bins, dtype=torch.long, device=dev)
        self.count = torch.zeros(n, dtype=torch.long, device=dev)
        self.power = torch.zeros(4, n, dtype=_F64, device=dev)  # sums of rho^1..4
        self.base_max = torch.full((n,), -inf, device=dev)
        self.base_min = torch.full((n,), inf, device=dev)

    # ---- chunks -------------------------------------------------------------------------
    def add(self, rho: torch.Tensor, rows: slice, col_offset: int) -> None:
        """Fold in ``rho: Float[r, c]``: rows ``rows`` of this model against partner neurons
        ``col_offset .. col_offset + c - 1`` (NaN = missing). A transposed view (``x.t()``
        of a contiguous ``x``) is read in place, without a transposed copy."""
        rho = rho.float()
        r, c = rho.shape
        rows = slice(*rows.indices(self.n))
        cols = slice(col_offset, col_offset + c)
        if not rho.is_contiguous() and rho.t().is_contiguous():
            fold_chunk(rho.t(), None, cols, self, rows)
        else:
            fold_chunk(rho.contiguous(), self, rows, None, cols)

    def add_pair(self, rho: torch.Tensor, rows: slice, col_offset: int,
                 other: NeuronSummary) -> None:
        """:meth:`add` of ``rho: Float[r, c]`` here and of ``rho.t()`` into ``other``
        (partner neurons ``col_offset ..`` against this model's ``rows``), sharing the
        passes over the chunk."""
        rho = rho.float().contiguous()
        rows = slice(*rows.indices(self.n))
        fold_chunk(rho, self, rows, other, slice(col_offset, col_offset + rho.shape[1]))

    def fold_parts(self, rows: slice, col_offset: int, ext: Extremes, hist: torch.Tensor,
                   power: torch.Tensor, count: torch.Tensor) -> None:
        """Fold in a chunk's per-row results (:func:`fold_chunk`): extremes ``[r, k']``
        with chunk column indices, ``hist: Long[r, bins]``, ``power: Float64[4, r]``,
        ``count: Long[r]``."""
        self._merge_extremes(rows, ext, col_offset)
        self.hist[rows] += hist
        self.power[:, rows] += power
        self.count[rows] += count

    def _merge_extremes(self, rows: slice, ext: Extremes, col_offset: int) -> None:
        for largest, v, i in ((True, ext.top_val, ext.top_idx),
                              (False, ext.bot_val, ext.bot_idx)):
            tv, ti = (self.top_val, self.top_idx) if largest else (self.bot_val, self.bot_idx)
            cv = torch.cat([tv[rows], v], 1)
            ci = torch.cat([ti[rows], i + col_offset], 1)
            mv, mi = cv.topk(self.k, dim=1, largest=largest, sorted=True)
            tv[rows] = mv
            ti[rows] = ci.gather(1, mi)
        self._sync_extremes(rows)

    def _sync_extremes(self, rows: slice) -> None:
        """max/min are the first of the sorted top/bottom-k."""
        self.max_val[rows], self.max_idx[rows] = self.top_val[rows, 0], self.top_idx[rows, 0]
        self.min_val[rows], self.min_idx[rows] = self.bot_val[rows, 0], self.bot_idx[rows, 0]

    def add_baseline(self, rho_bar: torch.Tensor, rows: slice) -> None:
        """Fold in baseline correlations ``rho_bar: Float[r, c]`` of rows ``rows``."""
        rho_bar = rho_bar.float()
        if math.isfinite(rho_bar.sum().item()):
            hi, lo = rho_bar.amax(1), rho_bar.amin(1)
        else:
            nan = torch.isnan(rho_bar)
            hi = torch.where(nan, -math.inf, rho_bar).amax(1)
            lo = torch.where(nan, math.inf, rho_bar).amin(1)
        self.base_max[rows] = torch.maximum(self.base_max[rows], hi)
        self.base_min[rows] = torch.minimum(self.base_min[rows], lo)

    # ---- merging ------------------------------------------------------------------------
    def merge(self, other: NeuronSummary) -> None:
        """Combine with a summary of disjoint chunks of the same matrix."""
        if (other.n, other.n_partner, other.k, other.bins) != (self.n, self.n_partner, self.k,
                                                                self.bins):
            raise ValueError("cannot merge summaries of different shapes")
        self._merge_extremes(slice(0, self.n), Extremes(other.top_val, other.top_idx,
                                                        other.bot_val, other.bot_idx), 0)
        self.hist += other.hist
        self.count += other.count
        self.power += other.power
        self.base_max = torch.maximum(self.base_max, other.base_max)
        self.base_min = torch.minimum(self.base_min, other.base_min)

    # ---- results --------------------------------------------------------------------------
    def finalize(self) -> dict[str, torch.Tensor]:
        """CPU tensors: ``max, argmax, min, argmin, top_values, top_indices, bottom_values,
        bottom_indices, hist, count, mean, var, skew, kurt, baseline_max, baseline_min``.

        ``var`` is the population variance of the correlation row, ``skew`` its
        population skewness and ``kurt`` its (non-excess) kurtosis, as in the paper code;
        a neuron without valid correlations has NaN and index -1 throughout."""
        def nan_inf(t: torch.Tensor) -> torch.Tensor:
            return torch.where(torch.isinf(t), math.nan, t).cpu()

        def idx(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return torch.where(torch.isinf(v), -1, t).cpu()

        n = self.count.to(_F64)
        with torch.no_grad():
            m1, m2, m3, m4 = (self.power / n).unbind(0)
            var = (m2 - m1 ** 2).clamp_min(0)
            mu3 = m3 - 3 * m1 * m2 + 2 * m1 ** 3
            mu4 = m4 - 4 * m1 * m3 + 6 * m1 ** 2 * m2 - 3 * m1 ** 4
            skew = mu3 / var ** 1.5
            kurt = mu4 / var ** 2
        return {
            "max": nan_inf(self.max_val), "argmax": idx(self.max_idx, self.max_val),
            "min": nan_inf(self.min_val), "argmin": idx(self.min_idx, self.min_val),
            "top_values": nan_inf(self.top_val), "top_indices": idx(self.top_idx, self.top_val),
            "bottom_values": nan_inf(self.bot_val),
            "bottom_indices": idx(self.bot_idx, self.bot_val),
            "hist": self.hist.cpu(), "count": self.count.cpu(),
            "mean": m1.cpu(), "var": var.cpu(), "skew": skew.cpu(), "kurt": kurt.cpu(),
            "baseline_max": nan_inf(self.base_max), "baseline_min": nan_inf(self.base_min),
        }

    # ---- checkpoints ------------------------------------------------------------------------
    _TENSORS = ("max_val", "max_idx", "min_val", "min_idx", "top_val", "top_idx", "bot_val",
                "bot_idx", "hist", "count", "power", "base_max", "base_min")

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name).cpu() for name in self._TENSORS}
        out["shape"] = [self.n, self.n_partner, self.k, self.bins]
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["shape"]) != [self.n, self.n_partner, self.k, self.bins]:
            raise ValueError(f"checkpointed summary has shape {state['shape']}, expected "
                             f"{[self.n, self.n_partner, self.k, self.bins]}")
        dev = self.max_val.device
        for name in self._TENSORS:
            setattr(self, name, state[name].to(dev))

    def nbytes(self) -> int:
        return sum(getattr(self, t).numel() * getattr(self, t).element_size()
                   for t in self._TENSORS)


def summary_nbytes(n: int, n_partner: int, k: int, bins: int) -> int:
    """Bytes a :class:`NeuronSummary` holds (for the planner)."""
    k = min(k, n_partner)
    return n * (4 * 4 + 8 * 2 + 2 * k * (4 + 8) + bins * 8 + 8 + 4 * 8)
