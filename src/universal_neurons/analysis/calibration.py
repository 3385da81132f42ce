"""Calibration of universality: baseline draws, p-values, q-values and block jackknife.

- Empirical p-value of an observed statistic ``t`` against ``K`` null draws ``t_k``:
  ``(1 + #{k: t_k >= t}) / (K + 1)`` (never 0; exact under exchangeability).
- Benjamini-Hochberg q-values: ``q_(i) = min_{j >= i} m p_(j) / j`` over the ``m`` finite
  p-values, capped at 1.
- Delete-one-block jackknife over ``B`` token blocks: with leave-one-out estimates
  ``t_(-j)`` and their mean ``t_.``, ``se^2 = (B - 1) / B * sum_j (t_(-j) - t_.)^2`` and the
  interval ``t_full -/+ t_{B-1, 1 - alpha/2} se`` (Student's t with ``B - 1`` degrees of
  freedom, as the jackknife has ``B - 1``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

CURVE_THRESHOLDS = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))
"""Thresholds of the threshold curve: 0.1, 0.15, ..., 0.9."""


def empirical_pvalues(observed: np.ndarray, null: np.ndarray) -> np.ndarray:
    """``observed: [n]`` against ``null: [n, K]`` -> ``Float64[n]`` p-values (NaN where the
    observed value is NaN; NaN null draws count as not reaching it)."""
    observed = np.asarray(observed, dtype=np.float64)
    null = np.asarray(null, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        reach = (null >= observed[:, None]).sum(1)
    p = (1.0 + reach) / (null.shape[1] + 1.0)
    return np.where(np.isnan(observed), np.nan, p)


def bh_qvalues(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg q-values of ``p: [n]`` (NaN p-values are left out and stay NaN)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def jackknife_ci(full: np.ndarray, loo: np.ndarray, level: float = 0.95
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Delete-one jackknife interval of ``full: [n]`` from ``loo: [n, B]`` (module doc)."""
    from scipy import stats

    loo = np.asarray(loo, dtype=np.float64)
    b = loo.shape[1]
    if b < 2:
        raise ValueError(f"the jackknife needs at least 2 blocks, got {b}")
    se = np.sqrt((b - 1) / b * ((loo - loo.mean(1, keepdims=True)) ** 2).sum(1))
    half = stats.t.ppf(0.5 + level / 2, b - 1) * se
    full = np.asarray(full, dtype=np.float64)
    return full - half, full + half


def share_ci(excess_loo: np.ndarray, share: float, threshold: float, level: float = 0.95
             ) -> tuple[float, float]:
    """Jackknife interval of the universal share ``share`` from leave-one-block-out excess
    correlations ``excess_loo: [n, B]`` (NaN = never universal), clipped to [0, 1]."""
    shares = (np.nan_to_num(excess_loo, nan=-np.inf) > threshold).mean(0)  # [B]
    lo, hi = jackknife_ci(np.array([share]), shares[None, :], level)
    return max(0.0, float(lo[0])), min(1.0, float(hi[0]))


def threshold_curve(excess: np.ndarray, excess_loo: np.ndarray | None = None,
                    thresholds=CURVE_THRESHOLDS) -> dict[str, list[float]]:
    """Share of neurons with ``excess > threshold`` for each threshold, with its jackknife
    interval when leave-one-block-out values ``excess_loo: [n, B]`` are given (else NaN)."""
    x = np.nan_to_num(np.asarray(excess, dtype=np.float64), nan=-np.inf)
    out: dict[str, list[float]] = {"threshold": [], "share": [], "share_ci_low": [],
                                   "share_ci_high": []}
    for t in thresholds:
        share = float((x > t).mean())
        lo, hi = (share_ci(excess_loo, share, t) if excess_loo is not None
                  else (np.nan, np.nan))
        for key, v in zip(out, (float(t), share, lo, hi)):
            out[key].append(v)
    return out


def block_columns(excess: np.ndarray, union_excess: dict[tuple[int, ...], np.ndarray],
                  n_blocks: int, threshold: float) -> dict[str, np.ndarray]:
    """Columns of the delete-one-block jackknife from the excess correlation of every union
    of token blocks (``union_excess[(0, 2, 3)]``: blocks 0, 2 and 3): ``excess_ci_low/high``
    (95%), ``excess_corr_block<j>`` and ``split_half_agreement`` (universal in every
    block; NaN excess is never universal)."""
    full = tuple(range(n_blocks))
    loo = loo_excess(union_excess, n_blocks)
    single = np.stack([union_excess[(j,)] for j in full], 1)
    lo, hi = jackknife_ci(excess, loo)
    cols = {"excess_ci_low": lo, "excess_ci_high": hi}
    cols.update({f"excess_corr_block{j}": single[:, j] for j in full})
    cols["split_half_agreement"] = (np.nan_to_num(single, nan=-np.inf) > threshold).all(1)
    return cols


def loo_excess(union_excess: dict[tuple[int, ...], np.ndarray], n_blocks: int) -> np.ndarray:
    """``[n, B]``: the excess correlation without each block."""
    full = tuple(range(n_blocks))
    return np.stack([union_excess[tuple(b for b in full if b != j)] for j in full], 1)


SIGNIFICANCE = 0.05
"""q-value under which a neuron counts as significant in the run summary."""


def share_summary(table, loo: np.ndarray | None, threshold: float) -> dict[str, Any]:
    """The universal share of a model's table for the manifest: ``n_universal``, ``fraction``
    and, with token blocks (``loo: [n, B]``), its jackknife interval ``fraction_ci_low/high``;
    with baseline draws, ``n_significant`` (q-value below :data:`SIGNIFICANCE`)."""
    out: dict[str, Any] = {"n_universal": int(table["is_universal"].sum()),
                           "fraction": float(table["is_universal"].mean())}
    if loo is not None:
        out["fraction_ci_low"], out["fraction_ci_high"] = share_ci(loo, out["fraction"],
                                                                   threshold)
    if "baseline_std" in table and table["baseline_std"].notna().any():
        out["n_significant"] = int((table["q_value"] < SIGNIFICANCE).sum())
    return out


def threshold_curve_table(excess: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> Any:
    """The threshold curve (``RUN/universality/threshold_curve.parquet``): per model and
    threshold (0.1..0.9) the share of neurons with ``excess_corr`` above it and, with token
    blocks, its jackknife interval; ``excess[model] = (excess_corr: [n], leave-one-block-out:
    [n, B] or None)``."""
    import pandas as pd

    rows = [pd.DataFrame({"model": model, **threshold_curve(x, loo)})
            for model, (x, loo) in excess.items()]
    return pd.concat(rows, ignore_index=True)
