"""One-line summaries of the ``paper-results`` tables (``RUN/paper/<result>.parquet``) for
the paper index: ``summarize(result, table) -> (value, text)``.

Each summary reads the columns that stage writes; a table without them raises
``KeyError`` (the index then falls back to the table's row count), so a change of that
stage's layout never breaks the index.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

Summary = tuple[float | int | str | None, str]


def _depth(df: pd.DataFrame) -> Summary:
    rows = df[(df["partner"] == "all")] if (df["partner"] == "all").any() else df

    def share(group: str) -> float | None:
        g = rows[rows["group"] == group]
        total = g["count"].sum()
        return None if not total else float(g.loc[g["layer"] == g["partner_layer"], "count"].sum()
                                             / total)
    all_, uni = share("all"), share("universal")
    if all_ is None:
        raise KeyError("group all")
    text = f"{100 * all_:.1f}% of best partners are in the neuron's own layer"
    if uni is not None:
        text += f" ({100 * uni:.1f}% for universal neurons)"
    return round(100 * all_, 4), text


def _corr(df: pd.DataFrame) -> Summary:
    q = ", ".join(dict.fromkeys(df["quantity"].astype(str)))
    return None, f"densities of {q} for {df['model'].nunique()} model(s)"


def _raw(df: pd.DataFrame) -> Summary:
    return None, (f"{df['statistic'].nunique()} statistics x {df['layer'].nunique()} layers, "
                  "universal vs not")


def _unigram(df: pd.DataFrame) -> Summary:
    per = df.drop_duplicates("neuron_name")
    tops = per["top_role"].value_counts()
    text = ", ".join(f"{r} {n}" for r, n in tops.items())
    return len(per), (f"{len(per)} unigram neurons ({int(per['passes_cut'].sum())} with VR > "
                      f"the cut); role of highest mean activation: {text}")


def _sources(df: pd.DataFrame) -> Summary:
    best = df.loc[df.groupby("source")["vr"].idxmax()].sort_values("vr", ascending=False)
    text = ", ".join(f"{r.source} {r.neuron_name} {r.vr:.2f}" for r in best.itertuples())
    return round(float(best["vr"].max()), 6), f"best neuron per source (VR): {text}"


def _topics(df: pd.DataFrame) -> Summary:
    per = df.drop_duplicates("neuron_name")
    n_topic = int(per["is_topic"].astype(bool).sum())
    listed = []
    for r in per.head(3).itertuples():
        tokens = df[(df["neuron_name"] == r.neuron_name) & (df["rank"] >= 0)]["token"]
        listed.append(f"{r.neuron_name} {r.feature} {r.vr:.3f} "
                      f"({', '.join(repr(str(t)) for t in tokens.head(3))})")
    return round(float(per["vr"].max()), 6), (
        f"{n_topic} topic neurons listed of {len(per)}; best topic VR: {'; '.join(listed)}")


def _skew(df: pd.DataFrame) -> Summary:
    m = df[df["model"] == df["model"].iloc[0]].sort_values("layer")
    last = m.iloc[-1]
    return round(float(last["median_skew"]), 6), (
        f"{last['model']} last layer L{int(last['layer'])}: {int(last['n_prediction'])} "
        f"prediction, {int(last['n_suppression'])} suppression neurons, median vocab skew "
        f"{last['median_skew']:.3f} (first layer {m.iloc[0]['median_skew']:.3f})")


def _class_split(df: pd.DataFrame) -> Summary:
    best = df[df["rank"] == 0].sort_values("vr", ascending=False)
    text = ", ".join(f"{r.neuron_name} {r.feature} {r.vr:.3f}" for r in best.head(3).itertuples())
    return round(float(best["vr"].max()), 6), f"best class per neuron (VR of cos(W_U, w_out)): {text}"


def _conditional(df: pd.DataFrame) -> Summary:
    d = df["diff"].to_numpy(np.float64)
    return int((d > 0).sum()), (f"{int((d > 0).sum())} of {len(d)} neurons fire more when the "
                                f"next token is in their set (difference of means "
                                f"{d.min():.2f} to {d.max():.2f})")


def _entropy(df: pd.DataFrame) -> Summary:
    e = df[df["is_entropy"].astype(bool)]
    if not len(e):
        raise KeyError("is_entropy")
    r = e.iloc[0]
    return round(float(r["d_entropy_at_min"]), 6), (
        f"{r['neuron_name']}: null-space fraction at the {r['null_frac_pct']:.1f}th percentile "
        f"of the candidates, l2 penalty at the {r['l2_penalty_pct']:.1f}th of all neurons; "
        f"at -0.17 the entropy changes by {r['d_entropy_at_min']:+.4f} nats")


def attention_panel(df: pd.DataFrame) -> str:
    """The paper's panel: Spearman rho of the change of BOS attention with that of the norm."""
    rho = df["spearman_bos_norm"].to_numpy(np.float64)
    return (f"paper panel: Spearman rho(change of BOS attention, change of norm) from "
            f"{np.nanmin(rho):.2f} to {np.nanmax(rho):.2f} (mean {np.nanmean(rho):.2f}) over "
            f"{len(rho)} pairs")


SUMMARIES: dict[str, Callable[[pd.DataFrame], Summary]] = {
    "corr_distributions": _corr, "depth_specialisation": _depth, "raw_by_layer": _raw,
    "unigram_roles": _unigram, "source_neurons": _sources, "topic_neurons": _topics,
    "prediction_skew_late": _skew,
    "prediction_class_split": _class_split, "prediction_conditional": _conditional,
    "entropy_weights": _entropy,
}


def summarize(result: str, df: pd.DataFrame) -> Summary:
    """``(value, text)`` of one table; ``KeyError`` when it lacks the expected columns."""
    if result not in SUMMARIES or not len(df):
        raise KeyError(result)
    return SUMMARIES[result](df)
