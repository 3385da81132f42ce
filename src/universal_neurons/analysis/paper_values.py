"""How the paper index reads the value of each result from a run's files.

Each reader takes a :class:`RunFiles` view and the :class:`RunInfo` and returns a
:class:`Reading` (the value, a short text, and the selection when the result was computed
for a stand-in set of neurons), or raises :class:`NotComputed` with the reason. Readers
only read tables; ``analysis.paper_index`` says which reader belongs to which result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd

from universal_neurons.analysis.selection import SELECTION
from universal_neurons.constants import (
    ATTENTION_BOS_VALUE_NORMS,
    ATTENTION_DIR,
    ATTENTION_HEURISTIC_SUMMARY,
    ATTENTION_HEURISTIC_TOP,
    ATTENTION_PATH_ABLATION,
    ENTROPY_CANDIDATE_PAIRS,
    ENTROPY_DIR,
    ENTROPY_SWEEP,
    EXPLANATIONS_DIR,
    EXPLANATIONS_VR,
    FAMILIES_DIR,
    FAMILY_COUNTS,
    PROPERTIES_CLAIMS,
    PROPERTIES_COMPARISON,
    PROPERTIES_DIR,
    neuron_table,
    paper_result_files,
    safe_name,
)

CLAIM_STATISTICS = ("sparsity", "skew", "kurt", "input_bias", "l2_penalty")
ATTENTION_PANEL = "attention_panel"
"""The ``paper-results`` table of the paper's attention panel (ΔBOS attention vs Δnorm)."""
ALPHABET_VR = 0.37
"""The paper's cut for an alphabet neuron (variance reduction of its letter's token)."""


class RunFiles(Protocol):
    """Read-only view of a run directory; paths are relative to it (``/`` separated)."""

    def exists(self, rel: str) -> bool: ...
    def glob(self, pattern: str) -> list[str]: ...
    def table(self, rel: str, columns: Sequence[str] | None = None) -> pd.DataFrame: ...
    def columns(self, rel: str) -> list[str]: ...
    def json(self, rel: str) -> Any: ...


@dataclass(frozen=True)
class RunInfo:
    """What the index needs to know about a run besides its files."""

    run: str = "RUN"
    """How commands name the run directory."""
    reference: str | None = None
    """The model explained in depth (the correlate stage's first model)."""
    models: tuple[str, ...] = ()
    threshold: float | None = None
    """The excess-correlation threshold of ``is_universal`` (None: not recorded)."""
    skipped: tuple[str, ...] = ()
    """Stages the ``run`` command was told to skip."""
    produced: Mapping[str, str] = field(default_factory=dict)
    """Result -> "written" or why not, as the stage writing ``paper/<result>.*`` recorded
    it in the manifest (``stages.paper_results.results``)."""


@dataclass(frozen=True)
class Reading:
    value: float | int | str | None
    text: str
    selection: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


class NotComputed(Exception):
    """The result cannot be read on this run; the message says why."""


# ---- paths of the reference model's files -------------------------------------------------
def neurons_file(info: RunInfo) -> str:
    return neuron_table(_ref(info))


def counts_file(info: RunInfo) -> str:
    return f"{FAMILIES_DIR}/{FAMILY_COUNTS.format(model=safe_name(_ref(info)))}"


def vr_file(info: RunInfo) -> str:
    return f"{EXPLANATIONS_DIR}/{EXPLANATIONS_VR.format(model=safe_name(_ref(info)))}"


def _ref(info: RunInfo) -> str:
    if info.reference is None:
        raise NotComputed("no reference model (no neuron table with correlation columns)")
    return info.reference


CLAIMS_FILE = f"{PROPERTIES_DIR}/{PROPERTIES_CLAIMS}"
COMPARISON_FILE = f"{PROPERTIES_DIR}/{PROPERTIES_COMPARISON}"
SWEEP_FILE = f"{ENTROPY_DIR}/{ENTROPY_SWEEP}.parquet"
PAIRS_FILE = f"{ENTROPY_DIR}/{ENTROPY_CANDIDATE_PAIRS}"
HEURISTIC_SUMMARY_FILE = f"{ATTENTION_DIR}/{ATTENTION_HEURISTIC_SUMMARY}"
HEURISTIC_TOP_FILE = f"{ATTENTION_DIR}/{ATTENTION_HEURISTIC_TOP}"
PATH_ABLATION_FILE = f"{ATTENTION_DIR}/{ATTENTION_PATH_ABLATION}"
BOS_NORMS_FILE = f"{ATTENTION_DIR}/{ATTENTION_BOS_VALUE_NORMS}"


def _model_rows(df: pd.DataFrame, info: RunInfo) -> pd.DataFrame:
    """The reference model's rows (all rows when the table has no ``model`` column)."""
    if "model" not in df.columns:
        return df
    rows = df[df["model"] == info.reference]
    return rows if len(rows) else df[df["model"] == df["model"].iloc[0]]


def _split(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(ordinary rows, fallback rows)`` by the ``selection`` label (fallback: "top ...")."""
    if SELECTION not in df.columns:
        return df, df.iloc[:0]
    top = df[SELECTION].fillna("").astype(str).str.startswith("top")
    if top.all():
        return df, df.iloc[:0]
    return df[~top], df[top]


def _pct(x: float) -> str:
    return f"{x:.2f}%"


# ---- readers ----------------------------------------------------------------------------------
def universal_share(files: RunFiles, info: RunInfo) -> Reading:
    df = files.table(neurons_file(info), ["layer", "is_universal"])
    share = 100 * float(df["is_universal"].fillna(False).astype(bool).mean())
    n = int(df["is_universal"].fillna(False).astype(bool).sum())
    rule = "" if info.threshold is None else f", excess correlation > {info.threshold:g}"
    return Reading(round(share, 4), f"{_pct(share)} ({n} of {len(df)} neurons of "
                                    f"{info.reference}{rule})")


def universal_by_layer(files: RunFiles, info: RunInfo) -> Reading:
    df = files.table(neurons_file(info), ["layer", "is_universal"])
    share = df.assign(u=df["is_universal"].fillna(False).astype(bool)).groupby("layer")["u"].mean()
    text = ", ".join(f"L{int(k)} {_pct(100 * v)}" for k, v in share.items())
    return Reading(text, f"universal share per layer: {text}")


def property_percentiles(files: RunFiles, info: RunInfo) -> Reading:
    df = _model_rows(files.table(COMPARISON_FILE), info)
    main, top = _split(df)

    def medians(rows: pd.DataFrame) -> str:
        by = rows.set_index("statistic")["pct_median_universal"]
        return ", ".join(f"{s} {by[s]:.0f}" for s in CLAIM_STATISTICS if s in by.index)

    text = f"median within-layer percentile of universal neurons: {medians(main)}"
    selection = None
    if len(top):
        selection = str(top[SELECTION].iloc[0])
        text += f"; {selection}: {medians(top)}"
    return Reading(medians(top if len(top) else main), text, selection)


def property_claims(files: RunFiles, info: RunInfo) -> Reading:
    df = _model_rows(files.table(CLAIMS_FILE), info)
    main, top = _split(df)

    def held(rows: pd.DataFrame) -> tuple[int, int, str]:
        tested = rows[rows["status"].isin(["held", "not held"])]
        n_held = int((tested["status"] == "held").sum())
        p = tested.loc[tested["status"] == "held", "p_value"]
        span = f" (p from {p.max():.2g} to {p.min():.2g})" if len(p) else ""
        return n_held, len(tested), span

    n_main = int(main["n_universal"].iloc[0]) if len(main) else 0
    if len(main) and (main["status"] != "too few").any():
        k, n, span = held(main)
        return Reading(k, f"{k} of {n} claims held{span}")
    if not len(top):
        cut = "the threshold" if info.threshold is None else f"{info.threshold:g}"
        raise NotComputed(f"needs >= 10 universal neurons (only {n_main} pass {cut})")
    k, n, span = held(top)
    selection = str(top[SELECTION].iloc[0])
    return Reading(k, f"too few universal neurons ({n_main}); {selection}: {k} of {n} claims "
                      f"held{span}", selection)


def families(files: RunFiles, info: RunInfo) -> Reading:
    df = files.table(counts_file(info))
    n = df[df["n_neurons"] > 0]
    text = ", ".join(f"{f} {k}" for f, k in zip(n["family"], n["n_neurons"])) or "none"
    text = f"neurons per family: {text}"
    if "n_universal" in df.columns:
        u = df[df["n_universal"] > 0]
        text += "; universal: " + (", ".join(f"{f} {k}" for f, k in
                                            zip(u["family"], u["n_universal"])) or "none")
    selection = None
    if "n_selected" in df.columns:
        selection = str(df[SELECTION].iloc[0])
        s = df[df["n_selected"] > 0]
        text += f"; {selection}: " + (", ".join(f"{f} {k}" for f, k in
                                               zip(s["family"], s["n_selected"])) or "none")
    return Reading(int((df["n_neurons"] > 0).sum()), text, selection)


def family_count(name: str, vr_prefixes: tuple[str, ...] = ()):
    """Reader of one family's count (and the best VR over columns with these prefixes)."""
    def read(files: RunFiles, info: RunInfo) -> Reading:
        df = files.table(counts_file(info)).set_index("family")
        if name not in df.index:
            raise NotComputed(f"family {name!r} not in {counts_file(info)}")
        row = df.loc[name]
        text = f"{int(row['n_neurons'])} {name} neurons"
        if "n_universal" in df.columns:
            text += f" ({int(row['n_universal'])} universal)"
        selection = None
        if "n_selected" in df.columns:
            selection = str(row[SELECTION])
            text += f"; {int(row['n_selected'])} among the {selection}"
        if vr_prefixes and files.exists(vr_file(info)):
            cols = [c for c in files.columns(vr_file(info)) if c.startswith(vr_prefixes)]
            if cols:
                vr = files.table(vr_file(info), ["layer", "neuron", *cols])
                m = vr[cols].to_numpy(np.float64)
                i, j = np.unravel_index(np.nanargmax(np.nan_to_num(m, nan=-1.0)), m.shape)
                text += (f"; best VR {m[i, j]:.3f} (L{int(vr['layer'].iloc[i])}."
                         f"{int(vr['neuron'].iloc[i])}, {cols[j]})")
        return Reading(int(row["n_neurons"]), text, selection)
    return read


def alphabet(files: RunFiles, info: RunInfo) -> Reading:
    """Letters whose best alphabet neuron among the universal neurons (the paper's count:
    GPT2-medium-a, 18 of 26) has VR above :data:`ALPHABET_VR`; with too few universal
    neurons, among the top 5% by excess correlation (labelled). All neurons in the text."""
    from universal_neurons.analysis.selection import select_neurons

    cols = [c for c in files.columns(vr_file(info)) if c.startswith("current/alpha:")]
    if not cols:
        raise NotComputed(f"{vr_file(info)} has no current/alpha:* columns; rerun explain")
    vr = files.table(vr_file(info), ["layer", "neuron", *cols])
    table = files.table(neurons_file(info), ["layer", "neuron", "excess_corr", "is_universal"])
    mask, selection, fallback = select_neurons(table, info.threshold)

    def letters(rows: pd.DataFrame) -> list[str]:
        best = np.nan_to_num(rows[cols].to_numpy(np.float64), nan=0.0).max(
            axis=0, initial=0.0)
        return [c.split(":", 1)[1] for c, b in zip(cols, best) if b > ALPHABET_VR]

    chosen = letters(vr.merge(table.loc[mask, ["layer", "neuron"]], on=["layer", "neuron"]))
    every = letters(vr)
    text = (f"{len(chosen)} of {len(cols)} letters have a neuron with VR > {ALPHABET_VR:g} "
            f"among the {selection} ({''.join(chosen) or 'none'}); among all explained "
            f"neurons {len(every)}")
    return Reading(len(chosen), text, selection if fallback else None)


def position(files: RunFiles, info: RunInfo) -> Reading:
    if "position_mi" not in files.columns(vr_file(info)):
        raise NotComputed(f"{vr_file(info)} has no position_mi column; rerun explain")
    return family_count("position")(files, info)


def prediction_curves(files: RunFiles, info: RunInfo) -> Reading:
    if not files.exists(counts_file(info)):
        return Reading(None, "figure only (no family counts)")
    df = files.table(counts_file(info)).set_index("family")
    names = [f for f in ("prediction", "suppression", "partition") if f in df.index]
    text = ", ".join(f"{f} {int(df.loc[f, 'n_neurons'])}" for f in names)
    return Reading(text, f"{info.reference}: {text} neurons")


def entropy_sweep(files: RunFiles, info: RunInfo) -> Reading:
    df = files.table(SWEEP_FILE)
    clean = df[df["group"] == "clean"]
    target = df[df["group"] == "target"]
    if not len(clean) or not len(target):
        raise NotComputed(f"{SWEEP_FILE} has no clean or target rows")
    h0 = float(clean["entropy"].iloc[0])
    first = target[target["neuron"] == target["neuron"].iloc[0]]
    top = first.loc[first["value"].idxmax()]
    delta = float(top["entropy"]) - h0
    text = (f"fixing {top['neuron']} at {top['value']:g}: next-token entropy {h0:.3f} -> "
            f"{float(top['entropy']):.3f} nats ({delta:+.3f})")
    base = df[(df["group"] == "baseline") & (df["value"] == top["value"])]
    if len(base):
        text += f"; baseline neurons at {top['value']:g}: median {np.median(base['entropy'] - h0):+.3f}"
    return Reading(round(delta, 6), text)


def entropy_pair(files: RunFiles, info: RunInfo) -> Reading:
    df = files.table(PAIRS_FILE)
    if not len(df):
        raise NotComputed(f"{PAIRS_FILE} is empty")
    row = df.loc[df["cos"].idxmin()]
    return Reading(round(float(row["cos"]), 6), f"most negative cos(w_out) among entropy "
                   f"candidates: {row['cos']:.3f} ({row['neuron_a']}, {row['neuron_b']})")


def attention_heuristic(files: RunFiles, info: RunInfo) -> Reading:
    summary = files.json(HEURISTIC_SUMMARY_FILE)
    text = (f"heuristic std {summary.get('std', float('nan')):.3f} vs baseline "
            f"{summary.get('baseline_std', float('nan')):.3f}")
    value = summary.get("std")
    if files.exists(HEURISTIC_TOP_FILE):
        top = _model_rows(files.table(HEURISTIC_TOP_FILE), info)
        if len(top):
            r = top.iloc[0]
            value = round(float(r["score_over_baseline_std"]), 6)
            text = (f"top pair {r['pair']}: score {r['score']:.3f} = {value:.1f} baseline std; "
                    + text)
    return Reading(value, text)


def attention_path_ablation(files: RunFiles, info: RunInfo) -> Reading:
    df = _model_rows(files.table(PATH_ABLATION_FILE), info)
    if not len(df):
        raise NotComputed(f"{PATH_ABLATION_FILE} is empty")
    r = df.iloc[0]
    text = (f"{r['pair']}: corr(activation, change of BOS attention) "
            f"{r['corr_act_delta_bos_attn']:+.2f}, corr(activation, change of output norm) "
            f"{r['corr_act_delta_out_norm']:+.2f} over {int(r['n_tokens'])} tokens "
            f"({r.get('norm_measure', '?')}, positions {r.get('positions', '?')})")
    panel = paper_result_files(ATTENTION_PANEL)
    notes = () if files.exists(panel[0]) else (f"{panel[0]} missing (the paper's panel)",)
    if not notes:
        from universal_neurons.analysis.paper_summaries import attention_panel

        try:
            text += "; " + attention_panel(files.table(panel[0]))
        except (KeyError, ValueError):
            pass
    return Reading(round(float(r["corr_act_delta_out_norm"]), 6), text, notes=notes)


def bos_value_ratio(files: RunFiles, info: RunInfo) -> Reading:
    df = _model_rows(files.table(BOS_NORMS_FILE), info)
    if not len(df):
        raise NotComputed(f"{BOS_NORMS_FILE} is empty")
    ratio = df["ratio"].to_numpy(np.float64)
    i = int(np.nanargmax(ratio))
    med = float(np.nanmedian(ratio))
    return Reading(round(med, 6), f"other tokens' value norm / BOS's: median {med:.2f}x over "
                   f"{len(df)} heads, largest {ratio[i]:.2f}x (L{int(df['layer'].iloc[i])}."
                   f"H{int(df['head'].iloc[i])})")


def paper_result(result: str):
    """Reader of a result written by the paper stage's producers: ``paper/<result>.json``
    (``value``, ``text``) if present, else the row count of ``paper/<result>.parquet``."""
    def read(files: RunFiles, info: RunInfo) -> Reading:
        table, scalar, figure = paper_result_files(result)
        notes = () if files.exists(figure) else (f"{figure} missing",)
        if files.exists(scalar):
            obj = files.json(scalar)
            if isinstance(obj, dict):
                value = obj.get("value")
                value = value if isinstance(value, (int, float, str)) else None
                return Reading(value, str(obj.get("text", value if value is not None else "")),
                               obj.get(SELECTION), notes)
        from universal_neurons.analysis.paper_summaries import summarize

        df = files.table(table)
        selection = None
        if SELECTION in df.columns and df[SELECTION].notna().any():
            selection = "; ".join(dict.fromkeys(df[SELECTION].dropna().astype(str)))
        try:
            value, text = summarize(result, df)
        except (KeyError, AttributeError, ValueError, TypeError):
            value, text = None, f"{len(df)} rows in {table}"
        return Reading(value, text, selection, notes)
    return read
