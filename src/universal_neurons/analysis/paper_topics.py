"""Topic neurons (paper §4.3, ``paper_notebooks/topic_neurons.ipynb``): pure functions.

* :func:`topic_candidates`: from the wide explanation table, the neurons whose best topic
  feature (``analysis.topics``) explains them most, with the family rule
  (``analysis.families.topic_neurons``), universality and excess correlation;
* :func:`token_means`: count and mean activation per token id of chosen neurons;
* :func:`top_token_table`: the paper's place-neuron figure as a table: per neuron its top
  tokens by mean activation among tokens seen at least ``min_count`` times, each mean
  also divided by the neuron's largest (the figure's colour).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from universal_neurons.analysis.families import _best, topic_neurons
from universal_neurons.constants import neuron_name

CANDIDATE_COLUMNS = ["layer", "neuron", "neuron_name", "feature", "vr", "is_topic",
                     "best_feature", "best_vr", "is_universal", "excess_corr", "selection"]


def topic_candidates(vr: pd.DataFrame, neurons: pd.DataFrame | None, cut: float,
                     top: int) -> pd.DataFrame:
    """The ``top`` neurons of highest best-topic VR among the topic neurons (the family
    rule with ``cut``), or among all neurons when none passes (``selection`` says which).

    ``vr``: ``layer, neuron`` and ``<kind>/<feature>`` columns; ``neurons``: the neuron
    table (for ``is_universal``, ``excess_corr``) or None. Columns :data:`CANDIDATE_COLUMNS`;
    ``feature`` is the best ``topic:*`` feature, ``best_feature`` the best of all
    (``<kind>/<feature>``).
    """
    if not any(c.startswith("current/topic:") for c in vr.columns):
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    is_topic, score, feat = topic_neurons(vr, cut)
    feature_cols = [c for c in vr.columns if "/" in c]
    m = np.nan_to_num(vr[feature_cols].to_numpy(np.float64), nan=-1.0)
    best_i = m.argmax(axis=1)
    best_vr, _ = _best(vr, feature_cols)
    out = pd.DataFrame({"layer": vr["layer"].to_numpy(), "neuron": vr["neuron"].to_numpy(),
                        "feature": feat, "vr": score, "is_topic": is_topic,
                        "best_feature": np.asarray(feature_cols, dtype=object)[best_i],
                        "best_vr": best_vr})
    known = [c for c in ("is_universal", "excess_corr")
             if neurons is not None and c in neurons.columns]
    if known:
        assert neurons is not None
        out = out.merge(neurons[["layer", "neuron", *known]], on=["layer", "neuron"],
                        how="left")
    if "is_universal" not in out.columns:
        out["is_universal"] = pd.NA
    if "excess_corr" not in out.columns:
        out["excess_corr"] = np.nan
    if out["is_topic"].any():
        pick = out[out["is_topic"]]
        selection = f"topic neurons (best feature a topic, VR > {cut:g})"
    else:
        pick, selection = out, f"highest topic VR (no topic neuron: none best explained by a " \
                               f"topic with VR > {cut:g})"
    pick = pick.sort_values(["vr", "layer", "neuron"], ascending=[False, True, True],
                            kind="stable").head(top).reset_index(drop=True)
    pick.insert(2, "neuron_name", [neuron_name(int(a), int(b))
                                   for a, b in zip(pick["layer"], pick["neuron"])])
    pick["selection"] = selection
    return pick[CANDIDATE_COLUMNS]


def token_means(acts: np.ndarray, token_ids: np.ndarray, n_vocab: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(count Int[vocab], mean Float64[vocab, k])`` of ``acts: [rows, k]`` grouped by
    ``token_ids: [rows]`` (NaN where a token never occurs)."""
    acts = np.asarray(acts, dtype=np.float64)
    ids = np.asarray(token_ids, dtype=np.int64)
    count = np.bincount(ids, minlength=n_vocab)
    sums = np.zeros((n_vocab, acts.shape[1]))
    np.add.at(sums, ids, acts)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / count[:, None]
    return count, np.where(count[:, None] > 0, mean, np.nan)


def top_token_table(candidates: pd.DataFrame, acts: np.ndarray, token_ids: np.ndarray,
                    strings: Sequence[str], k: int = 10, min_count: int = 20,
                    exclude: Sequence[int] = ()) -> pd.DataFrame:
    """Per candidate (row ``j`` of ``candidates``, column ``j`` of ``acts: [rows, n]``), its
    ``k`` tokens of highest mean activation among the ids seen at least ``min_count``
    times (``exclude``: ids never listed), one row each: the candidate's columns, then
    ``rank, token_id, token, count, mean, mean_norm`` (``mean`` over the neuron's largest
    listed mean, the paper's colour). A neuron with no such token keeps one row, ``rank``
    -1."""
    count, mean = token_means(acts, token_ids, len(strings))
    ok = count >= min_count
    ok[np.asarray(list(exclude), dtype=np.int64)] = False
    ids = np.flatnonzero(ok)
    rows = []
    for j, cand in enumerate(candidates.to_dict("records")):
        col = mean[ids, j]
        order = np.lexsort((ids, -col))[:k]  # ties by token id
        top = mean[ids[order], j]
        peak = top.max() if len(top) else np.nan
        if not len(order):
            rows.append({**cand, "rank": -1, "token_id": -1, "token": "", "count": 0,
                         "mean": np.nan, "mean_norm": np.nan})
        for r, (t, v) in enumerate(zip(ids[order], top)):
            rows.append({**cand, "rank": r, "token_id": int(t), "token": strings[int(t)],
                         "count": int(count[t]), "mean": float(v),
                         "mean_norm": float(v / peak) if peak > 0 else np.nan})
    cols = [*candidates.columns, "rank", "token_id", "token", "count", "mean", "mean_norm"]
    return pd.DataFrame(rows, columns=cols)
