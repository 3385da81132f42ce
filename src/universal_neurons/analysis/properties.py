"""Properties of universal neurons (paper §4.2, Fig. 3): how they differ from the rest.

For each model's neuron table: every statistic is turned into a **within-layer percentile**
(0-100, so that layers with different scales compare; the paper's Fig. 3 axis), and the
universal neurons are compared with the others per model: medians of both groups (raw and
percentile), the rank-biserial correlation ``r = 2U/(n_u n_o) - 1`` (``P(u > o) - P(u < o)``;
> 0: universal neurons higher), Cohen's d, and a one-sided Mann-Whitney U test in the
claimed direction (scipy), on the percentiles by default.

The paper's five claims (:data:`CLAIMS`) are then marked ``held`` (p < alpha in the claimed
direction), ``not held``, ``too few`` (fewer than ``min_universal`` universal neurons: use
``--top-percent``) or ``missing`` (the statistic was not computed).

The universal set is ``is_universal`` from correlate (``excess_corr > threshold``), or the
top ``top_percent`` % of neurons by ``excess_corr`` per model. The stage that reads the
run's tables and writes ``RUN/properties/`` is ``stages.properties``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from universal_neurons.analysis.selection import FALLBACK_PERCENT, top_percent_mask
from universal_neurons.errors import UserError
from universal_neurons.options import opt, run_opt, threshold_arg

STATISTICS = ("sparsity", "skew", "kurt", "input_bias", "l2_penalty", "mean", "var",
              "w_in_norm", "w_out_norm", "in_out_sim", "vocab_mean", "vocab_var", "vocab_skew",
              "vocab_kurt")
"""Columns compared between universal and other neurons (those present in the table)."""


@dataclass(frozen=True)
class Claim:
    statistic: str
    direction: Literal["lower", "higher"]
    text: str


CLAIMS = (
    Claim("sparsity", "lower", "universal neurons have lower activation frequency"),
    Claim("skew", "higher", "universal neurons have higher pre-activation skew"),
    Claim("kurt", "higher", "universal neurons have higher pre-activation kurtosis"),
    Claim("input_bias", "lower", "universal neurons have a more negative input bias"),
    Claim("l2_penalty", "higher", "universal neurons have a larger L2 weight penalty"),
)


@dataclass(frozen=True)
class PropertiesConfig:
    """Options of the properties stage (the CLI flags)."""

    out: str = run_opt()
    """Run directory holding ``neurons/<model>.parquet``."""
    top_percent: float | None = opt(None, metavar="P")
    """Call the top P% of neurons by excess_corr universal (per model) instead of
    is_universal; useful when few neurons pass the threshold."""
    threshold: float = opt(0.5, type=threshold_arg)
    """excess_corr threshold, used only when a table has no is_universal column."""
    alpha: float = 0.05
    """Significance level."""
    min_universal: int = 10
    """Fewest universal neurons for a claim to be tested."""
    on: Literal["percentile", "raw"] = opt("percentile", "--raw", action="store_const",
                                           const="raw", help="test raw values instead of "
                                           "within-layer percentiles")
    """Values the tests compare: within-layer percentiles (default) or raw values."""
    plots: bool = opt(True, "--no-plots", help="skip the plots")
    """Write the plots."""
    fallback_percent: float | None = opt(FALLBACK_PERCENT, metavar="P")
    """When fewer than min_universal neurons are universal (and top_percent is not given),
    also test the claims on the top P% by excess_corr, labelled in a selection column
    (0: do not)."""

    def __post_init__(self) -> None:
        if self.top_percent is not None and not 0 < self.top_percent < 100:
            raise ValueError(f"--top-percent must be in (0, 100), got {self.top_percent}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.fallback_percent is not None and not 0 <= self.fallback_percent < 100:
            raise ValueError(f"--fallback-percent must be in [0, 100), got {self.fallback_percent}")
        if self.on not in ("percentile", "raw"):
            raise ValueError(f"on must be 'percentile' or 'raw', got {self.on!r}")


def universal_mask(df, threshold: float = 0.5, top_percent: float | None = None
                   ) -> tuple[np.ndarray, str]:
    """``Bool[n]`` universal neurons of one table and a description of the rule used."""
    if "excess_corr" not in df.columns and (top_percent is not None or "is_universal" not in df):
        raise UserError("the neuron table has no excess_corr column; run `universal-neurons "
                        "correlate` on this run directory first")
    if top_percent is not None:
        mask = top_percent_mask(df["excess_corr"].to_numpy(dtype=np.float64), top_percent)
        return mask, f"top {top_percent:g}% by excess_corr"
    if "is_universal" in df.columns:
        return df["is_universal"].fillna(False).to_numpy(dtype=bool), "is_universal (correlate)"
    excess = df["excess_corr"].to_numpy(dtype=np.float64)
    return np.nan_to_num(excess, nan=-np.inf) > threshold, f"excess_corr > {threshold:g}"


def within_layer_percentiles(df, columns):
    """Percentile (0-100, ties averaged) of each column within its layer; NaN stays NaN."""
    present = [c for c in columns if c in df.columns]
    return df.groupby("layer")[present].rank(pct=True) * 100


def compare_groups(u: np.ndarray, o: np.ndarray, direction: str = "two-sided") -> dict[str, Any]:
    """Effect sizes and Mann-Whitney U of ``u`` (universal) vs ``o`` (others), NaNs dropped.

    ``direction``: ``higher``/``lower`` (one-sided, the claim's) or ``two-sided``.
    """
    from scipy.stats import mannwhitneyu

    u, o = u[~np.isnan(u)], o[~np.isnan(o)]
    out: dict[str, Any] = dict(n_universal=len(u), n_other=len(o), median_universal=np.nan,
                               median_other=np.nan, rank_biserial=np.nan, cohens_d=np.nan,
                               u_statistic=np.nan, p_value=np.nan)
    if len(u):
        out["median_universal"] = float(np.median(u))
    if len(o):
        out["median_other"] = float(np.median(o))
    if len(u) and len(o):
        alt = {"higher": "greater", "lower": "less"}.get(direction, "two-sided")
        res = mannwhitneyu(u, o, alternative=alt)
        out["u_statistic"] = float(res.statistic)
        out["p_value"] = float(res.pvalue)
        out["rank_biserial"] = 2 * float(res.statistic) / (len(u) * len(o)) - 1
        if len(u) > 1 and len(o) > 1:
            pooled = ((len(u) - 1) * u.var(ddof=1) + (len(o) - 1) * o.var(ddof=1)) / (
                len(u) + len(o) - 2)
            if pooled > 0:
                out["cohens_d"] = float((u.mean() - o.mean()) / math.sqrt(pooled))
    return out


def analyse_table(model: str, df, config: PropertiesConfig):
    """``(comparison rows, claim rows, percentile frame)`` for one model's table."""
    import pandas as pd

    mask, rule = universal_mask(df, config.threshold, config.top_percent)
    pct = within_layer_percentiles(df, STATISTICS)
    frame = pd.concat([df[["layer", "neuron"]], pct], axis=1).assign(model=model, universal=mask)
    direction = {c.statistic: c.direction for c in CLAIMS}
    comparison = []
    for stat in pct.columns:
        raw = df[stat].to_numpy(dtype=np.float64)
        vals = pct[stat].to_numpy(dtype=np.float64) if config.on == "percentile" else raw
        row = compare_groups(vals[mask], vals[~mask], direction.get(stat, "two-sided"))
        p_u, p_o = pct[stat].to_numpy(dtype=np.float64)[mask], pct[stat].to_numpy()[~mask]
        row.update(model=model, statistic=stat, universal_set=rule, tested_on=config.on,
                   alternative=direction.get(stat, "two-sided"),
                   median_universal=float(np.nanmedian(raw[mask])) if mask.any() else np.nan,
                   median_other=float(np.nanmedian(raw[~mask])) if (~mask).any() else np.nan,
                   pct_median_universal=_nanmedian(p_u), pct_median_other=_nanmedian(p_o))
        comparison.append(row)
    by_stat = {r["statistic"]: r for r in comparison}
    claims = [_claim_row(model, c, by_stat.get(c.statistic), rule, int(mask.sum()), len(df),
                         config) for c in CLAIMS]
    return comparison, claims, frame


def _nanmedian(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(np.median(x)) if len(x) else np.nan


def _claim_row(model: str, claim: Claim, stats: dict | None, rule: str, n_universal: int,
               n: int, config: PropertiesConfig) -> dict[str, Any]:
    row: dict[str, Any] = dict(model=model, claim=claim.text, statistic=claim.statistic,
                               direction=claim.direction, universal_set=rule,
                               n_universal=n_universal, n_other=n - n_universal)
    if stats is None or (stats["n_universal"] == 0 and stats["n_other"] == 0):
        return {**row, "status": "missing", "held": None,
                "note": f"column {claim.statistic!r} not computed; run `universal-neurons "
                        f"{'weights' if claim.statistic in ('input_bias', 'l2_penalty') else 'stats'}`"}
    keys = ("median_universal", "median_other", "pct_median_universal", "pct_median_other",
            "rank_biserial", "cohens_d", "p_value", "tested_on")
    row.update({k: stats[k] for k in keys})
    sign = 1 if claim.direction == "higher" else -1
    held = bool(stats["p_value"] < config.alpha and sign * stats["rank_biserial"] > 0)
    if n_universal < config.min_universal:
        hint = ("" if config.top_percent else
                f"; also tested on the top {config.fallback_percent:g}% by excess_corr (rows "
                "labelled so in the selection column)" if config.fallback_percent else
                "; rerun with --top-percent, e.g. 1")
        return {**row, "status": "too few", "held": None,
                "note": f"only {n_universal} universal neurons (< {config.min_universal}){hint}"}
    return {**row, "status": "held" if held else "not held", "held": held,
            "note": f"one-sided Mann-Whitney U on {stats['tested_on']} values, alpha {config.alpha:g}"}


def claims_text(claims) -> str:
    """Plain-text lines for the CLI: one per model and claim."""
    lines, shown = [], None
    for r in claims.to_dict("records"):
        if r.get("selection") != shown:  # the neurons compared, when the table says
            shown = r.get("selection")
            if isinstance(shown, str):
                lines.append(f"-- universal = {shown}")
        nums = ""
        if r["status"] != "missing":
            nums = (f" (medians: within-layer percentile {r['pct_median_universal']:.0f} vs "
                    f"{r['pct_median_other']:.0f}, raw {r['median_universal']:.4g} vs "
                    f"{r['median_other']:.4g}; r={r['rank_biserial']:+.2f}, "
                    f"p={r['p_value']:.2g} on {r['tested_on']})")
        lines.append(f"{r['model']}: {r['status']:>8}: {r['claim']}{nums}")
    return "\n".join(lines)

