"""Neuron families (paper §4.3, §5.1): each neuron gets zero or more families with a score.

Rules (:class:`FamilyThresholds`, defaults in brackets; VR = variance reduction from
``analysis.explain``; "best" = the largest VR over that group of features):

* ``unigram``: best current-token ``unigram:*`` VR > [0.5] (paper). Score = that VR.
* ``alphabet``: for each letter feature ``alpha:c`` (the single-letter token, the paper's
  ``{c}_unigram``) the *one* neuron with the highest current-token VR, if that VR >
  [0.37] (paper). Score = VR (best letter if several).
* ``previous_token``: best previous-token feature VR (any token feature) > [0.5].
* ``token``: best current-token property (not unigram, not alphabet; e.g. ``is_year``,
  ``all_caps``) VR > [0.5].
* ``syntax``: best spaCy POS or dependency feature VR > [0.3].
* ``entity``: best spaCy entity feature (type or in-entity) VR > [0.3].
* ``context``: best context feature (in quotes / parentheses / brackets, after newline)
  VR > [0.3].
* ``topic``: the neuron's best feature of all (current token, previous token and sequence)
  is a current-token topic feature ``topic:<name>`` (``analysis.topics``: a token set
  derived from the corpus), with VR > [0.1]. The paper's family count
  (``family_count.ipynb``) gives each neuron its best feature (``idxmax`` over all of
  them) and its topic features ``is_<name>_topic`` sit in the same vocabulary frame; it
  states no cut for them. 0.1, not the 0.5 of one-token features, because a set of ~100
  tokens cannot explain as much as one token: a topic neuron's activation also varies
  within its topic.
* ``position`` (the paper's, ``paper_notebooks/position_neurons.ipynb``): universal
  neurons (``is_universal`` of the neuron table, when it has the column) whose activation
  kurtosis ``kurt`` (non-excess, as the paper's ``neuron_df``) is < [2.0], scored by
  ``position_mi``: the mutual information in nats between the context position and
  firing (``analysis.explain``). The paper ranks these candidates by that score and has
  no cut on it; ``position_min_mi`` [0.0] (nats) and ``position_information`` [0.0]
  (I / H(fires)) are optional extra cuts, both off by default. Without a ``kurt`` column
  the kurtosis cut cannot be applied and every neuron passes it. (An earlier version used
  16 position bins, bits, I/H >= 0.25 and kurtosis < 3, which it wrongly attributed to
  the paper.)
* ``prediction`` / ``suppression`` / ``partition``: ``analysis.prediction.classify`` on the
  vocabulary moments (score: vocab kurtosis, or variance ratio for partition).

Outputs: per neuron ``families`` (names joined by ``;``, highest score first, ``""`` for
none), ``family_scores`` (JSON object family -> score) and ``family_features`` (JSON
object family -> the explaining feature), merged into ``RUN/neurons/<model>.parquet``;
``RUN/families/<model>_counts.csv``; ``RUN/plots/families_<model>.png`` (written by
``stages.families``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from universal_neurons.analysis.features import feature_group
from universal_neurons.analysis.prediction import PredictionThresholds, classify

FAMILIES = ("unigram", "alphabet", "previous_token", "token", "syntax", "entity", "context",
            "topic", "position", "prediction", "suppression", "partition")


@dataclass(frozen=True)
class FamilyThresholds:
    unigram: float = 0.5
    alphabet: float = 0.37
    previous_token: float = 0.5
    token: float = 0.5
    syntax: float = 0.3
    entity: float = 0.3
    context: float = 0.3
    topic: float = 0.1
    """Topic neurons need their best feature to be a topic feature with VR above this."""
    position_min_mi: float = 0.0
    """Position neurons need I(position; fires) > this, in nats (paper: no cut, 0)."""
    position_information: float = 0.0
    """Position neurons need I(position; fires) / H(fires) >= this (paper: none, 0)."""
    position_max_kurt: float = 2.0
    """Position neurons need activation kurtosis (non-excess) < this, when known (paper: 2)."""
    position_universal_only: bool = True
    """Position neurons must be universal, when the neuron table says (paper: yes)."""
    prediction: PredictionThresholds = PredictionThresholds()


# feature-column selectors: (kind, groups) -> family
_VR_FAMILIES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "unigram": ("current", ("unigram",)),
    "previous_token": ("prev", None),
    "token": ("current", ("token",)),
    "syntax": ("sequence", ("pos", "dep")),
    "entity": ("sequence", ("ent",)),
    "context": ("sequence", ("ctx",)),
}


def _columns(vr: pd.DataFrame, kind: str, groups: tuple[str, ...] | None) -> list[str]:
    out = []
    for c in vr.columns:
        k, _, feat = c.partition("/")
        if k == kind and feat and (groups is None or feature_group(feat) in groups):
            out.append(c)
    return out


def _best(vr: pd.DataFrame, cols: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(best VR [N], its feature name [N])`` over ``cols`` (0 / '' if none)."""
    if not cols:
        return np.zeros(len(vr)), np.full(len(vr), "", dtype=object)
    m = vr[cols].to_numpy(np.float64)
    i = np.nanargmax(np.nan_to_num(m, nan=-1.0), axis=1)
    names = np.array([c.split("/", 1)[1] for c in cols], dtype=object)
    return np.nan_to_num(m[np.arange(len(m)), i]), names[i]


def topic_neurons(vr: pd.DataFrame, cut: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(is topic neuron [N], best topic VR [N], its feature [N])`` over the rows of the
    wide explanation table ``vr``: the best of all ``<kind>/<feature>`` columns is a
    current-token ``topic:*`` feature with VR > ``cut``."""
    score, feat = _best(vr, _columns(vr, "current", ("topic",)))
    best, _ = _best(vr, [c for c in vr.columns if "/" in c])
    return (score > cut) & (score >= best), score, feat


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    """In nats, like ``position_mi``."""
    p = np.clip(p, 1e-300, 1 - 1e-16)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def assign_families(vr: pd.DataFrame | None, neurons: pd.DataFrame | None = None,
                    thresholds: FamilyThresholds = FamilyThresholds()) -> pd.DataFrame:
    """Families of every neuron of one model.

    ``vr``: the wide explanation table (``RUN/explanations/<model>_vr.parquet``: ``layer,
    neuron``, ``position_*``, ``fire_rate`` and ``<kind>/<feature>`` columns) or None.
    ``neurons``: the neuron table (for ``kurt``, ``vocab_*`` and ``is_universal``) or None.
    Returns ``layer, neuron, families, family_scores, family_features`` for the union of
    neurons in both.
    """
    hits: list[pd.DataFrame] = []  # layer, neuron, family, score, feature
    if vr is not None and len(vr):
        hits += _explanation_hits(vr, neurons, thresholds)
    if neurons is not None and {"vocab_var", "vocab_skew", "vocab_kurt", "vocab_mean"} <= set(
            neurons.columns):
        cls = classify(neurons, thresholds.prediction)
        lab = cls[cls["prediction_class"] != ""]
        if len(lab):
            hits.append(pd.DataFrame({"layer": lab["layer"], "neuron": lab["neuron"],
                                      "family": lab["prediction_class"],
                                      "score": lab["prediction_score"],
                                      "feature": "vocab"}))
    return _family_columns(hits, [df for df in (vr, neurons) if df is not None and len(df)])


def _explanation_hits(vr: pd.DataFrame, neurons: pd.DataFrame | None,
                      thresholds: FamilyThresholds) -> list[pd.DataFrame]:
    """``layer, neuron, family, score, feature`` rows of the families read from the
    explanations: the VR families, alphabet (best neuron per letter) and position."""
    lay, neu = vr["layer"].to_numpy(), vr["neuron"].to_numpy()
    hits: list[pd.DataFrame] = []

    def add(family: str, mask: np.ndarray, score: np.ndarray, feat: np.ndarray) -> None:
        if mask.any():
            hits.append(pd.DataFrame({"layer": lay[mask], "neuron": neu[mask],
                                      "family": family, "score": score[mask],
                                      "feature": feat[mask]}))

    for family, (kind, groups) in _VR_FAMILIES.items():
        score, feat = _best(vr, _columns(vr, kind, groups))
        add(family, score > getattr(thresholds, family), score, feat)
    # alphabet: the best neuron for each letter
    best_alpha = np.zeros(len(vr))
    alpha_feat = np.full(len(vr), "", dtype=object)
    for c in _columns(vr, "current", ("alpha",)):
        col = np.nan_to_num(vr[c].to_numpy(np.float64))
        i = int(np.argmax(col))
        if col[i] > thresholds.alphabet and col[i] > best_alpha[i]:
            best_alpha[i], alpha_feat[i] = col[i], c.split("/", 1)[1]
    add("alphabet", best_alpha > 0, best_alpha, alpha_feat)
    add("topic", *topic_neurons(vr, thresholds.topic))
    if "position_mi" in vr.columns:
        ok, mi = _position_candidates(vr, neurons, thresholds)
        add("position", ok, mi, np.full(len(vr), "position", dtype=object))
    return hits


def _position_candidates(vr: pd.DataFrame, neurons: pd.DataFrame | None,
                         thresholds: FamilyThresholds) -> tuple[np.ndarray, np.ndarray]:
    """The paper's position candidates (universal, kurtosis < 2, enough MI): ``(mask,
    mutual information in nats)`` over the rows of ``vr``."""
    mi = np.nan_to_num(vr["position_mi"].to_numpy(np.float64))
    ok = mi > thresholds.position_min_mi
    if thresholds.position_information > 0 and "fire_rate" in vr.columns:
        with np.errstate(divide="ignore", invalid="ignore"):
            u = mi / _binary_entropy(vr["fire_rate"].to_numpy(np.float64))
        ok &= np.nan_to_num(u) >= thresholds.position_information
    cols = [c for c in ("kurt", "is_universal") if neurons is not None and c in neurons.columns]
    if cols:
        assert neurons is not None
        known = vr[["layer", "neuron"]].merge(neurons[["layer", "neuron", *cols]],
                                              on=["layer", "neuron"], how="left")
        if "kurt" in cols:
            kurt = known["kurt"].to_numpy(np.float64)
            ok &= ~(kurt >= thresholds.position_max_kurt)  # unknown (NaN) passes
        if "is_universal" in cols and thresholds.position_universal_only:
            ok &= known["is_universal"].fillna(False).astype(bool).to_numpy()
    return ok, mi


def _family_columns(hits: list[pd.DataFrame], tables: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per neuron of ``tables``: ``families`` (";"-joined, best score first) and
    the JSON ``family_scores`` / ``family_features`` of its ``hits``."""
    if not tables:
        return pd.DataFrame(columns=["layer", "neuron", "families", "family_scores",
                                     "family_features"])
    base = pd.concat([t[["layer", "neuron"]] for t in tables]).drop_duplicates().sort_values(
        ["layer", "neuron"], ignore_index=True)
    if not hits:
        base["families"] = ""
        base["family_scores"] = "{}"
        base["family_features"] = "{}"
        return base
    h = pd.concat(hits, ignore_index=True).sort_values("score", ascending=False, kind="stable")
    grouped = h.groupby(["layer", "neuron"], sort=False)
    agg = pd.DataFrame({
        "families": grouped["family"].agg(";".join),
        "family_scores": grouped.apply(lambda g: json.dumps(
            {f: round(float(s), 6) for f, s in zip(g["family"], g["score"])}),
            include_groups=False),
        "family_features": grouped.apply(lambda g: json.dumps(
            dict(zip(g["family"], g["feature"])), ensure_ascii=False), include_groups=False),
    }).reset_index()
    out = base.merge(agg, on=["layer", "neuron"], how="left")
    out["families"] = out["families"].fillna("")
    out["family_scores"] = out["family_scores"].fillna("{}")
    out["family_features"] = out["family_features"].fillna("{}")
    return out


def parse_families(value: str) -> list[str]:
    """``"unigram;previous_token"`` -> ``["unigram", "previous_token"]``."""
    return [f for f in str(value or "").split(";") if f]


def family_counts(fam: pd.DataFrame, neurons: pd.DataFrame | None = None) -> pd.DataFrame:
    """``family, n_neurons, frac`` (+ ``n_universal`` when the neuron table has
    ``is_universal``); ``frac`` is over the neurons in ``fam``."""
    exploded = fam.assign(family=fam["families"].map(parse_families)).explode("family")
    exploded = exploded[exploded["family"].notna() & (exploded["family"] != "")]
    counts = exploded.groupby("family").size().reindex(FAMILIES, fill_value=0)
    out = pd.DataFrame({"family": counts.index, "n_neurons": counts.to_numpy()})
    out["frac"] = out["n_neurons"] / max(len(fam), 1)
    if neurons is not None and "is_universal" in neurons.columns:
        uni = exploded.merge(neurons[["layer", "neuron", "is_universal"]],
                             on=["layer", "neuron"], how="left")
        u = uni[uni["is_universal"].fillna(False).astype(bool)].groupby("family").size()
        out["n_universal"] = u.reindex(FAMILIES, fill_value=0).to_numpy()
    return out


def merge_into_neuron_table(path: str | Path, fam: pd.DataFrame) -> pd.DataFrame:
    """Read-modify-write ``RUN/neurons/<model>.parquet`` keyed on ``layer, neuron``: replace
    the family columns, keep every other column and row; create the table if absent."""
    from universal_neurons.rundir import write_table

    cols = ["families", "family_scores", "family_features"]
    path = Path(path)
    if path.exists():
        old = pd.read_parquet(path)
        old = old.drop(columns=[c for c in cols if c in old.columns])
        df = old.merge(fam[["layer", "neuron", *cols]], on=["layer", "neuron"], how="outer")
        df = df.sort_values(["layer", "neuron"], ignore_index=True)
    else:
        df = fam[["layer", "neuron", *cols]].copy()
    df["families"] = df["families"].fillna("")
    df["family_scores"] = df["family_scores"].fillna("{}")
    df["family_features"] = df["family_features"].fillna("{}")
    write_table(path, df)
    return df


def neuron_families(run: str | Path, model: str) -> pd.DataFrame:
    """``layer, neuron, families (list), family_scores (dict)`` from a run's neuron table."""
    from universal_neurons.constants import neuron_table

    df = pd.read_parquet(Path(run) / neuron_table(model), columns=["layer", "neuron", "families",
                                                                   "family_scores"])
    df["families"] = df["families"].map(parse_families)
    df["family_scores"] = df["family_scores"].map(json.loads)
    return df

