"""Per-neuron summaries of a correlation matrix, built chunk by chunk.

For each neuron ``i`` of a model and one partner model, :class:`NeuronSummary` keeps the
max/argmax, min/argmin, top-k and bottom-k partners, a histogram on fixed bins of
``[-1, 1]``, power sums for the mean/var/skew/kurtosis of the correlation row
``rho(i, .)``, and the max/min of the baseline row (with ``draws > 1``, also the max of
the baseline row of every further baseline draw). Chunks may cover any subset of rows
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

_F64 = torch.float64


class NeuronSummary:
    """Summaries of ``n`` neurons against a partner with ``n_partner`` neurons."""

    def __init__(self, n: int, n_partner: int, k: int = 10, bins: int = 100,
                 device: str | torch.device = "cpu", draws: int = 1):
        if k < 1 or bins < 1 or draws < 1:
            raise ValueError(f"k, bins and draws must be positive, got k={k}, bins={bins}, "
                             f"draws={draws}")
        self.n, self.n_partner, self.bins, self.draws = n, n_partner, bins, draws
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
        self.draw_max = torch.full((draws - 1, n), -inf, device=dev)  # draws 1..K-1

    # ---- chunks -------------------------------------------------------------------------
    def add(self, rho: torch.Tensor, rows: slice, col_offset: int) -> None:
        """Fold in ``rho: Float[r, c]``: rows ``rows`` of this model against partner neurons
        ``col_offset .. col_offset + c - 1`` (NaN = missing)."""
        rho = rho.float().contiguous()
        r, c = rho.shape
        if math.isfinite(rho.sum().item()):  # the common case: nothing missing
            valid, hi, lo, x = None, rho, rho, rho
        else:
            valid = ~torch.isnan(rho)
            hi = torch.where(valid, rho, -math.inf)
            lo = torch.where(valid, rho, math.inf)
            x = torch.where(valid, rho, 0.0)
        self._extreme(hi, rows, col_offset, largest=True)
        self._extreme(lo, rows, col_offset, largest=False)
        del hi, lo
        # histogram: bins of width 2/bins on [-1, 1]; rho = 1 falls in the last bin
        idx = torch.add(x, 1.0).mul_(self.bins / 2.0).floor_().clamp_(0, self.bins - 1).long()
        idx += torch.arange(r, device=rho.device)[:, None] * self.bins
        idx = idx.view(-1) if valid is None else idx[valid]
        self.hist[rows] += torch.bincount(idx, minlength=r * self.bins).view(r, self.bins)
        del idx
        # power sums: float32 row sums (cascade summation), accumulated in float64
        x2 = x * x
        sums = (x.sum(1), x2.sum(1), torch.einsum("ij,ij->i", x2, x),
                torch.einsum("ij,ij->i", x2, x2))
        for j, sj in enumerate(sums):
            self.power[j, rows] += sj.to(_F64)
        del x2
        self.count[rows] += c if valid is None else valid.sum(1)

    def add_baseline(self, rho_bar: torch.Tensor, rows: slice, draw: int = 0) -> None:
        """Fold in baseline correlations ``rho_bar: Float[r, c]`` of rows ``rows`` of
        baseline draw ``draw`` (draw 0 keeps max and min, later draws the max)."""
        rho_bar = rho_bar.float()
        if draw:
            if math.isfinite(rho_bar.sum().item()):
                hi = rho_bar.amax(1)
            else:
                hi = torch.where(torch.isnan(rho_bar), -math.inf, rho_bar).amax(1)
            self.draw_max[draw - 1, rows] = torch.maximum(self.draw_max[draw - 1, rows], hi)
            return
        if math.isfinite(rho_bar.sum().item()):
            hi, lo = rho_bar.amax(1), rho_bar.amin(1)
        else:
            nan = torch.isnan(rho_bar)
            hi = torch.where(nan, -math.inf, rho_bar).amax(1)
            lo = torch.where(nan, math.inf, rho_bar).amin(1)
        self.base_max[rows] = torch.maximum(self.base_max[rows], hi)
        self.base_min[rows] = torch.minimum(self.base_min[rows], lo)

    def _extreme(self, x: torch.Tensor, rows: slice, col_offset: int, largest: bool) -> None:
        kk = min(self.k, x.shape[1])
        v, i = x.topk(kk, dim=1, largest=largest, sorted=True)  # [r, kk]
        i = i + col_offset
        val, idx = (self.max_val, self.max_idx) if largest else (self.min_val, self.min_idx)
        tv, ti = (self.top_val, self.top_idx) if largest else (self.bot_val, self.bot_idx)
        better = v[:, 0] > val[rows] if largest else v[:, 0] < val[rows]
        val[rows] = torch.where(better, v[:, 0], val[rows])
        idx[rows] = torch.where(better, i[:, 0], idx[rows])
        cv = torch.cat([tv[rows], v], 1)
        ci = torch.cat([ti[rows], i], 1)
        mv, mi = cv.topk(self.k, dim=1, largest=largest, sorted=True)
        tv[rows] = mv
        ti[rows] = ci.gather(1, mi)

    # ---- merging ------------------------------------------------------------------------
    def merge(self, other: NeuronSummary) -> None:
        """Combine with a summary of disjoint chunks of the same matrix."""
        if (other.n, other.n_partner, other.k, other.bins, other.draws) != (
                self.n, self.n_partner, self.k, self.bins, self.draws):
            raise ValueError("cannot merge summaries of different shapes")
        rows = slice(0, self.n)
        for largest in (True, False):
            v, i = (other.top_val, other.top_idx) if largest else (other.bot_val, other.bot_idx)
            val, idx = (self.max_val, self.max_idx) if largest else (self.min_val, self.min_idx)
            ov, oi = (other.max_val, other.max_idx) if largest else (other.min_val, other.min_idx)
            better = ov > val if largest else ov < val
            val.copy_(torch.where(better, ov, val))
            idx.copy_(torch.where(better, oi, idx))
            tv, ti = (self.top_val, self.top_idx) if largest else (self.bot_val, self.bot_idx)
            cv, ci = torch.cat([tv[rows], v], 1), torch.cat([ti[rows], i], 1)
            mv, mi = cv.topk(self.k, dim=1, largest=largest, sorted=True)
            tv.copy_(mv)
            ti.copy_(ci.gather(1, mi))
        self.hist += other.hist
        self.count += other.count
        self.power += other.power
        self.base_max = torch.maximum(self.base_max, other.base_max)
        self.base_min = torch.minimum(self.base_min, other.base_min)
        self.draw_max = torch.maximum(self.draw_max, other.draw_max)

    # ---- results --------------------------------------------------------------------------
    def finalize(self) -> dict[str, torch.Tensor]:
        """CPU tensors: ``max, argmax, min, argmin, top_values, top_indices, bottom_values,
        bottom_indices, hist, count, mean, var, skew, kurt, baseline_max, baseline_min`` and,
        with ``draws > 1``, ``baseline_max_draws: [draws, n]`` (row 0 = ``baseline_max``).

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
        out = {
            "max": nan_inf(self.max_val), "argmax": idx(self.max_idx, self.max_val),
            "min": nan_inf(self.min_val), "argmin": idx(self.min_idx, self.min_val),
            "top_values": nan_inf(self.top_val), "top_indices": idx(self.top_idx, self.top_val),
            "bottom_values": nan_inf(self.bot_val),
            "bottom_indices": idx(self.bot_idx, self.bot_val),
            "hist": self.hist.cpu(), "count": self.count.cpu(),
            "mean": m1.cpu(), "var": var.cpu(), "skew": skew.cpu(), "kurt": kurt.cpu(),
            "baseline_max": nan_inf(self.base_max), "baseline_min": nan_inf(self.base_min),
        }
        if self.draws > 1:
            out["baseline_max_draws"] = nan_inf(torch.cat([self.base_max[None], self.draw_max]))
        return out

    # ---- checkpoints ------------------------------------------------------------------------
    _TENSORS = ("max_val", "max_idx", "min_val", "min_idx", "top_val", "top_idx", "bot_val",
                "bot_idx", "hist", "count", "power", "base_max", "base_min", "draw_max")

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name).cpu() for name in self._TENSORS}
        out["shape"] = [self.n, self.n_partner, self.k, self.bins, self.draws]
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shape = list(state["shape"]) + [1] * (5 - len(state["shape"]))  # no draws: 1
        if shape != [self.n, self.n_partner, self.k, self.bins, self.draws]:
            raise ValueError(f"checkpointed summary has shape {state['shape']}, expected "
                             f"{[self.n, self.n_partner, self.k, self.bins, self.draws]}")
        dev = self.max_val.device
        for name in self._TENSORS:
            if name in state:
                setattr(self, name, state[name].to(dev))

    def nbytes(self) -> int:
        return sum(getattr(self, t).numel() * getattr(self, t).element_size()
                   for t in self._TENSORS)


def summary_nbytes(n: int, n_partner: int, k: int, bins: int, draws: int = 1) -> int:
    """Bytes a :class:`NeuronSummary` holds (for the planner)."""
    k = min(k, n_partner)
    return n * (4 * 4 + 8 * 2 + 2 * k * (4 + 8) + bins * 8 + 8 + 4 * 8 + 4 * (draws - 1))
