"""The families stage (paper §4.3, §5.1): label every neuron of a run with its families.

``run_families(FamiliesConfig(...))`` is what ``universal-neurons families`` runs: read each
model's explanations and neuron table, load the model when its vocabulary moments or token
sets are needed, assign families (``analysis.families.assign_families``), merge them into
``RUN/neurons/<model>.parquet``, write ``RUN/families/`` and the plots, and record the stage.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from universal_neurons.analysis.families import (
    FamilyThresholds,
    assign_families,
    family_counts,
    merge_into_neuron_table,
)
from universal_neurons.analysis.prediction import classify
from universal_neurons.analysis.selection import (
    FALLBACK_PERCENT,
    MIN_UNIVERSAL,
    recorded_threshold,
)
from universal_neurons.options import opt, run_opt

log = logging.getLogger(__name__)

STAGE = "families"


@dataclass(frozen=True)
class FamiliesConfig:
    """Options of the families stage."""

    out: str = run_opt()
    """Run directory."""
    models: tuple[str, ...] = opt((), metavar="M")
    """Models to label (default: every model with explanations or a neuron table in RUN)."""
    thresholds: FamilyThresholds = FamilyThresholds()
    """The families' thresholds (options of their own, see ``families --help``)."""
    weights: bool = opt(True, "--no-weights", help="do not load models (no vocab moments "
                        "beyond the tables, no token sets)")
    """Load models for vocab moments missing from the tables and for token sets."""
    top_tokens: int = 20
    """Tokens listed per prediction/suppression/partition neuron."""
    plots: bool = opt(True, "--no-plots", help="skip the plots")
    """Write the plots."""
    device: str = "cpu"
    """Where to compute (cpu or cuda)."""
    fallback_percent: float | None = opt(FALLBACK_PERCENT, metavar="P")
    """When fewer than min_universal neurons are universal, also count the families of the
    top P% by excess_corr (columns n_selected, frac_selected, selection; 0: do not)."""
    min_universal: int = MIN_UNIVERSAL
    """Fewest universal neurons for the universal-family counts to stand alone."""


def _models_in_run(run: Path) -> list[str]:
    from universal_neurons.constants import EXPLANATIONS_DIR, EXPLANATIONS_VR, NEURONS_DIR

    prefix, suffix = EXPLANATIONS_VR.split("{model}")
    names = [p.name[len(prefix): -len(suffix)] for p in sorted((run / EXPLANATIONS_DIR).glob(
        EXPLANATIONS_VR.format(model="*")))]
    names += [p.stem for p in sorted((run / NEURONS_DIR).glob("*.parquet"))]
    return list(dict.fromkeys(names))


def run_families(config: FamiliesConfig) -> dict[str, pd.DataFrame]:
    """Families for every model of a run; returns ``{model: counts}``."""
    from universal_neurons.constants import (
        FAMILIES_DIR,
        FAMILY_COUNTS,
        FIG_FAMILIES,
        FIG_PREDICTION_CURVES,
        PLOTS_DIR,
        PREDICTION_TOKENS,
        neuron_table,
        safe_name,
    )
    from universal_neurons.errors import UserError
    from universal_neurons.rundir import RunDir, atomic_path, write_table
    from universal_neurons.stages.explain import explanation_paths

    run = Path(config.out)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist; run `universal-neurons explain` "
                        "or `correlate` with --out there first")
    models = list(config.models) or _models_in_run(run)
    if not models:
        raise UserError(f"{run} holds no explanations/*_vr.parquet and no neurons/*.parquet; "
                        "run `universal-neurons explain --model M --out RUN` first")
    rd = RunDir(run)
    result, moment_frames = {}, {}
    selections: dict[str, str] = {}
    threshold = recorded_threshold(rd.manifest())
    for name in models:
        safe = safe_name(name)
        vr_path = explanation_paths(run, name)["vr"]
        table_path = run / neuron_table(name)
        vr = pd.read_parquet(vr_path) if vr_path.exists() else None
        neurons = pd.read_parquet(table_path) if table_path.exists() else None
        if vr is None and neurons is None:
            raise UserError(f"no explanations ({vr_path}) and no neuron table ({table_path}) "
                            f"for model {name!r}")
        weights = _LazyWeights(name, config.device) if config.weights else None
        if weights and (neurons is None or "vocab_kurt" not in neurons.columns):
            pw = weights.processed()
            if pw is not None:
                neurons = _with_moments(neurons, pw)
        fam = assign_families(vr, neurons, config.thresholds)
        merged = merge_into_neuron_table(table_path, fam)
        considered = fam if vr is None else fam.merge(vr[["layer", "neuron"]])
        counts = family_counts(considered, merged)
        counts = fallback_counts(counts, vr, neurons, config, threshold)
        if "selection" in counts.columns:
            selections[name] = str(counts["selection"].iloc[0])
        with atomic_path(run / FAMILIES_DIR / FAMILY_COUNTS.format(model=safe)) as tmp:
            counts.to_csv(tmp, index=False)
        if neurons is not None and "vocab_kurt" in neurons.columns:
            moment_frames[name] = neurons
            labelled = classify(neurons, config.thresholds.prediction)
            if (labelled["prediction_class"] != "").any() and weights:
                pw = weights.processed()
                if pw is not None:
                    from universal_neurons.analysis.features import surface_strings
                    from universal_neurons.analysis.prediction import token_sets

                    tokens = token_sets(pw, labelled, surface_strings(weights.model.tokenizer),
                                        config.top_tokens)
                    write_table(run / FAMILIES_DIR / PREDICTION_TOKENS.format(model=safe), tokens)
        if config.plots:
            from universal_neurons.report.plots_families import plot_family_counts

            plot_family_counts(counts[counts["n_neurons"] > 0] if counts["n_neurons"].any()
                               else counts, run / PLOTS_DIR / FIG_FAMILIES.format(model=safe), name)
        result[name] = counts
        log.info("%s: %s", name, ", ".join(f"{f} {n}" for f, n in
                                          zip(counts["family"], counts["n_neurons"]) if n))
    if config.plots and moment_frames:
        from universal_neurons.report.plots_families import plot_prediction_curves

        plot_prediction_curves(moment_frames, run / PLOTS_DIR / FIG_PREDICTION_CURVES)
    rd.record_stage(STAGE, _jsonable(config), models=models,
                    counts={m: dict(zip(c["family"], c["n_neurons"].tolist()))
                            for m, c in result.items()}, selection=selections)
    return result


def fallback_counts(counts: pd.DataFrame, vr: pd.DataFrame | None,
                    neurons: pd.DataFrame | None, config: FamiliesConfig,
                    threshold: float | None) -> pd.DataFrame:
    """``counts`` plus ``n_selected``, ``frac_selected`` and ``selection`` (the label) when
    the neuron table has ``excess_corr`` and fewer than ``config.min_universal`` neurons are
    universal: the families (the position family's candidates included) of the top
    ``config.fallback_percent`` % by excess correlation; else ``counts`` unchanged."""
    from universal_neurons.analysis.selection import select_neurons

    if neurons is None or not {"excess_corr", "is_universal"} <= set(neurons.columns):
        return counts
    top, label, fallback = select_neurons(neurons, threshold, config.fallback_percent,
                                          config.min_universal)
    if not fallback:
        return counts
    alt = neurons.assign(is_universal=top)
    fam = assign_families(vr, alt, config.thresholds)
    considered = fam if vr is None else fam.merge(vr[["layer", "neuron"]])
    n_selected = family_counts(considered, alt)["n_universal"].to_numpy()
    log.info("too few universal neurons; families also counted for the %s", label)
    return counts.assign(n_selected=n_selected, frac_selected=n_selected / max(int(top.sum()), 1),
                         selection=label)


def _jsonable(config: FamiliesConfig) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(config), default=str))


class _LazyWeights:
    """A model's processed weights, loaded on first use (None if it cannot be loaded)."""

    def __init__(self, name: str, device: str):
        self.name, self.device = name, device
        self.model: Any = None
        self._pw: Any = None
        self._tried = False

    def processed(self) -> Any:
        if not self._tried:
            self._tried = True
            self.model = _try_load(self.name, self.device)
            if self.model is not None:
                self._pw = self.model.adapter.processed_weights()
        return self._pw


def _try_load(name: str, device: str) -> Any:
    """Load ``name`` (a display name, or a file-safe one with ``--`` for ``/``)."""
    from universal_neurons.errors import UserError
    from universal_neurons.models.loading import load_model

    err: Exception | None = None
    for spec in dict.fromkeys([name, name.replace("--", "/")]):
        try:
            return load_model(spec, device=device)
        except UserError as e:
            err = err or e
    log.warning("cannot load %s for its weights (%s); skipping weight-based families and "
                "token sets", name, err)
    return None


def _with_moments(neurons: pd.DataFrame | None, pw: Any) -> pd.DataFrame:
    from universal_neurons.analysis.prediction import vocab_moments

    moments = vocab_moments(pw)
    if neurons is None:
        return moments
    return neurons.drop(columns=[c for c in moments.columns if c in neurons.columns
                                 and c not in ("layer", "neuron")]).merge(
        moments, on=["layer", "neuron"], how="left")
