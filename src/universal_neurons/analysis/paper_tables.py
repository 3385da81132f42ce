"""Results of the paper computed from a run's tables alone (Gurnee et al. 2024).

Pure functions: per-neuron tables in, result tables out.

* :func:`corr_distributions`: densities of the mean max-correlation, its baseline and the
  excess correlation per model (Fig. 11-style).
* :func:`depth_specialisation`: the layer of each neuron's best partner in every sibling
  model against its own layer, for universal and for all neurons (Fig. 2c-style).
* :func:`raw_by_layer`: per-layer quantiles of the raw activation and weight statistics,
  universal vs not (Fig. 14-style).
* :func:`prediction_skew_late`: per layer, the share of prediction (vocab kurtosis above a
  cut, positive skew) and suppression (negative skew) neurons (Fig. 6c-style).
* :func:`entropy_weights`: weight norm, vocab variance and null-space fraction of the
  entropy neurons against every candidate of the last layers, with their sweep at -0.17.
* :func:`attention_panel`: per neuron-head pair, the fractional change of BOS attention and
  the Spearman correlation of the change in BOS attention with the change in output norm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from universal_neurons.constants import parse_neuron_name

CORR_QUANTITIES = ("mean_corr", "mean_baseline", "excess_corr")
RAW_STATISTICS = ("mean", "var", "skew", "kurt", "sparsity", "w_in_norm", "input_bias",
                  "w_out_norm", "in_out_sim", "l2_penalty", "vocab_mean", "vocab_var",
                  "vocab_skew", "vocab_kurt")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
ENTROPY_STATISTICS = ("w_out_norm", "vocab_var", "null_frac")
"""Columns of ``entropy/candidates.parquet`` compared (the paper: weight norm, Fig. 7a)."""
GELU_MIN = -0.17
"""The activation value the paper's entropy sweep starts at (about GELU's minimum)."""


def corr_distributions(tables: Mapping[str, pd.DataFrame], bins: int = 50) -> pd.DataFrame:
    """Histogram densities of :data:`CORR_QUANTITIES` per model, on bin edges shared by
    every model (``bins`` equal bins over the pooled range of each quantity).

    ``tables``: ``{model: neuron table}``; models without the columns are left out.
    Columns: ``model, quantity, bin, bin_left, bin_right, count, density`` (density
    integrates to 1 over a model's bins).
    """
    rows = []
    for q in CORR_QUANTITIES:
        values = {m: t[q].to_numpy(np.float64) for m, t in tables.items() if q in t.columns}
        values = {m: v[np.isfinite(v)] for m, v in values.items()}
        values = {m: v for m, v in values.items() if len(v)}
        if not values:
            continue
        pooled = np.concatenate(list(values.values()))
        lo, hi = float(pooled.min()), float(pooled.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        for model, v in values.items():
            count, _ = np.histogram(v, edges)
            density = count / (len(v) * np.diff(edges))
            rows.append(pd.DataFrame({"model": model, "quantity": q, "bin": np.arange(bins),
                                      "bin_left": edges[:-1], "bin_right": edges[1:],
                                      "count": count, "density": density}))
    cols = ["model", "quantity", "bin", "bin_left", "bin_right", "count", "density"]
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)


def partners(table: pd.DataFrame) -> list[str]:
    """Sibling models named by the ``<partner>_best`` columns of a neuron table."""
    return [c[: -len("_best")] for c in table.columns if c.endswith("_best")]


def depth_specialisation(table: pd.DataFrame) -> pd.DataFrame:
    """Counts of (own layer, best partner's layer), per partner and pooled (``partner =
    "all"``), for ``group`` "all" and "universal" neurons.

    ``share`` is the count over the neurons of that own layer (and group, partner) whose
    best partner is known, so each own layer's shares sum to 1. Columns: ``group, partner,
    layer, partner_layer, count, share``.
    """
    names = partners(table)
    if not names:
        raise ValueError("the neuron table has no <partner>_best columns (correlate output)")
    layers = table["layer"].to_numpy(np.int64)
    n_layers = int(layers.max()) + 1
    long = []
    for p in names:
        best = table[f"{p}_best"]
        known = best.notna().to_numpy()
        partner_layer = np.array([parse_neuron_name(b)[0] if k else -1
                                  for b, k in zip(best, known)], dtype=np.int64)
        n_layers = max(n_layers, int(partner_layer.max()) + 1)
        long.append(pd.DataFrame({"partner": p, "layer": layers[known],
                                  "partner_layer": partner_layer[known],
                                  "universal": table["is_universal"].to_numpy(bool)[known]}))
    pairs = pd.concat(long, ignore_index=True)
    pairs = pd.concat([pairs, pairs.assign(partner="all")], ignore_index=True)
    out = []
    for group, sel in (("all", pairs), ("universal", pairs[pairs["universal"]])):
        for p in [*names, "all"]:
            sub = sel[sel["partner"] == p]
            counts = np.zeros((n_layers, n_layers), dtype=np.int64)
            np.add.at(counts, (sub["layer"].to_numpy(), sub["partner_layer"].to_numpy()), 1)
            totals = counts.sum(axis=1, keepdims=True)
            share = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
            li, pi = np.meshgrid(np.arange(n_layers), np.arange(n_layers), indexing="ij")
            out.append(pd.DataFrame({"group": group, "partner": p, "layer": li.ravel(),
                                     "partner_layer": pi.ravel(), "count": counts.ravel(),
                                     "share": share.ravel()}))
    return pd.concat(out, ignore_index=True)


def raw_by_layer(table: pd.DataFrame, statistics: Sequence[str] = RAW_STATISTICS
                 ) -> pd.DataFrame:
    """Per layer and universal / not, the count, mean and :data:`QUANTILES` of each raw
    statistic present in ``table``. Columns: ``statistic, layer, universal, n, mean,
    q5, q25, q50, q75, q95``."""
    stats = [s for s in statistics if s in table.columns and table[s].notna().any()]
    if not stats:
        raise ValueError(f"the neuron table has none of the statistics {', '.join(statistics)}")
    rows = []
    for s in stats:
        for (layer, universal), g in table.groupby(["layer", "is_universal"]):
            v = g[s].dropna().to_numpy(np.float64)
            if not len(v):
                continue
            q = np.quantile(v, QUANTILES)
            rows.append({"statistic": s, "layer": int(layer), "universal": bool(universal),
                         "n": len(v), "mean": float(v.mean()),
                         **{f"q{round(p * 100)}": float(x) for p, x in zip(QUANTILES, q)}})
    return pd.DataFrame(rows)


def prediction_skew_late(table: pd.DataFrame, kurtosis: float = 10.0) -> pd.DataFrame:
    """Per layer: neurons, prediction neurons (``vocab_kurt > kurtosis``, skew > 0),
    suppression neurons (skew < 0), their shares, and the median ``vocab_skew`` and
    ``vocab_kurt``. Columns: ``layer, n, n_prediction, n_suppression, share_prediction,
    share_suppression, median_skew, median_kurt``."""
    missing = {"layer", "vocab_skew", "vocab_kurt"} - set(table.columns)
    if missing:
        raise ValueError(f"the neuron table lacks {', '.join(sorted(missing))}")
    heavy = table["vocab_kurt"] > kurtosis
    t = table.assign(pred=heavy & (table["vocab_skew"] > 0),
                     supp=heavy & (table["vocab_skew"] < 0))
    g = t.groupby("layer")
    out = pd.DataFrame({"n": g.size(), "n_prediction": g["pred"].sum(),
                        "n_suppression": g["supp"].sum(),
                        "median_skew": g["vocab_skew"].median(),
                        "median_kurt": g["vocab_kurt"].median()}).reset_index()
    out["share_prediction"] = out["n_prediction"] / out["n"]
    out["share_suppression"] = out["n_suppression"] / out["n"]
    return out[["layer", "n", "n_prediction", "n_suppression", "share_prediction",
                "share_suppression", "median_skew", "median_kurt"]]


def entropy_weights(candidates: pd.DataFrame, entropy_neurons: Sequence[str],
                    sweep: pd.DataFrame | None = None,
                    neurons: pd.DataFrame | None = None) -> pd.DataFrame:
    """Every candidate neuron of the entropy stage (the last layers) with ``is_entropy``,
    the within-candidates percentile (0-100, share of candidates at or below) of each of
    :data:`ENTROPY_STATISTICS`; with ``neurons`` (the model's neuron table) its
    ``l2_penalty`` and that value's percentile among *all* the model's neurons; and for
    swept neurons the sweep at :data:`GELU_MIN`: ``entropy_at_min``, ``loss_at_min`` and
    their changes from the clean model (``d_entropy_at_min``, ``d_loss_at_min``)."""
    stats = [s for s in ENTROPY_STATISTICS if s in candidates.columns]
    out = candidates[["layer", "neuron", "neuron_name", *stats]].copy()
    out["is_entropy"] = out["neuron_name"].isin(list(entropy_neurons))
    for s in stats:
        out[f"{s}_pct"] = out[s].rank(method="max", pct=True) * 100
    if neurons is not None and "l2_penalty" in neurons.columns:
        all_l2 = np.sort(neurons["l2_penalty"].dropna().to_numpy(np.float64))
        out = out.merge(neurons[["layer", "neuron", "l2_penalty"]], on=["layer", "neuron"],
                        how="left")
        out["l2_penalty_pct"] = (np.searchsorted(all_l2, out["l2_penalty"], side="right")
                                 / len(all_l2) * 100)
    for c in ("entropy_at_min", "loss_at_min", "d_entropy_at_min", "d_loss_at_min"):
        out[c] = np.nan
    if sweep is not None and not sweep.empty:
        clean = sweep[sweep["group"] == "clean"]
        point = sweep[(sweep["group"] == "target") & np.isclose(sweep["value"], GELU_MIN)]
        by = point.drop_duplicates("neuron").set_index("neuron")
        sel = out["neuron_name"].isin(by.index)
        for m in ("entropy", "loss"):
            val = out.loc[sel, "neuron_name"].map(by[m])
            out.loc[sel, f"{m}_at_min"] = val
            if not clean.empty:
                out.loc[sel, f"d_{m}_at_min"] = val - float(clean[m].iloc[0])
    return out.reset_index(drop=True)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN if either is constant."""
    rx = pd.Series(x).rank(method="average").to_numpy(np.float64)
    ry = pd.Series(y).rank(method="average").to_numpy(np.float64)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def attention_panel(points: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """Per path-ablated pair: ``n`` token points, mean BOS attention, mean change of BOS
    attention and its fraction of the mean (``frac_delta_bos_attn``), mean change of the
    output norm (in the summary's ``norm_measure``), and the Spearman correlations of
    ``delta_bos_attn`` with ``delta_out_norm`` and of ``act`` with ``delta_bos_attn``."""
    rows = []
    for pair, g in points.groupby("pair", sort=False):
        s = summary[summary["pair"] == pair]
        bos = float(s["mean_bos_attn"].iloc[0]) if len(s) else float("nan")
        d_bos = g["delta_bos_attn"].to_numpy(np.float64)
        rows.append({
            "pair": pair, "n": len(g), "mean_bos_attn": bos,
            "mean_delta_bos_attn": float(d_bos.mean()),
            "frac_delta_bos_attn": float(d_bos.mean() / bos) if bos else float("nan"),
            "mean_delta_out_norm": float(g["delta_out_norm"].mean()),
            "norm_measure": str(s["norm_measure"].iloc[0]) if "norm_measure" in s else "",
            "spearman_bos_norm": spearman(d_bos, g["delta_out_norm"].to_numpy(np.float64)),
            "spearman_act_bos": spearman(g["act"].to_numpy(np.float64), d_bos)})
    return pd.DataFrame(rows)
