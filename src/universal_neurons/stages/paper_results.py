"""The ``paper-results`` stage: the paper's results that the other stages do not draw.

Reads a finished run (neuron tables, explanations, entropy and attention outputs), loads
the reference model for its weights, streams at most ``tokens`` tokens of the dataset
through it once, and writes one table ``RUN/paper/<result>.parquet`` and one figure
``RUN/plots/paper_<result>.png`` per result of ``constants.PAPER_RESULTS``. A result whose
input is missing is skipped with its reason (logged, and in the manifest and the returned
status); the stage itself fails only on a missing run directory.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from universal_neurons.analysis import paper_tables as pt
from universal_neurons.constants import (
    ATTENTION_DIR,
    ATTENTION_PATH_ABLATION,
    ATTENTION_PATH_ABLATION_POINTS,
    ENTROPY_CANDIDATES,
    ENTROPY_DIR,
    ENTROPY_SWEEP,
    FIG_PAPER,
    NEURONS_DIR,
    PAPER_DIR,
    PAPER_TABLE,
    PLOTS_DIR,
    safe_name,
)
from universal_neurons.errors import UserError
from universal_neurons.options import dataset_opt, opt, run_opt, tokens_opt
from universal_neurons.stages import paper_model as pm
from universal_neurons.stages.paper_model import Skip

log = logging.getLogger(__name__)

STAGE = "paper_results"
WRITTEN = "written"


@dataclass(frozen=True)
class PaperResultsConfig:
    """Options of the ``paper-results`` stage."""

    out: str = run_opt()
    """Run directory (read and written)."""
    model: str | None = opt(None, metavar="M")
    """Model whose weights and activations are used (default: the run's reference model,
    the neuron table with correlation columns)."""
    dataset: str | None = dataset_opt()
    """Token dataset folder (default: the bundled test split, tokenized)."""
    tokens: int = tokens_opt(131_072)
    """Tokens streamed for the activation results (whole sequences, rounded up)."""
    n_ctx: int | None = None
    """Context of the default dataset (default min(512, model n_ctx))."""
    batch_size: int = 8
    """Sequences per forward pass."""
    device: str = "cpu"
    """Where to compute (cpu or cuda)."""
    bins: int = 50
    """Histogram bins of the correlation densities."""
    top_neurons: int = 6
    """Neurons per example result (unigram roles, class split, conditional)."""
    token_set: int = 20
    """Tokens in a prediction / suppression neuron's set."""
    kurtosis: float = opt(10.0, "--vocab-kurtosis", metavar="X")
    """Vocab kurtosis above which a neuron is a prediction / suppression neuron."""
    unigram_vr: float = opt(0.5, "--unigram", metavar="X")
    """Variance reduction above which a neuron is a unigram neuron."""
    topic_vr: float = opt(0.1, "--topic", metavar="X")
    """A topic neuron's best feature is a topic feature with VR above this (families
    --topic)."""
    topic_min_count: int = opt(20, metavar="N")
    """Occurrences a token needs to be among a topic neuron's top tokens (the paper: 50-90
    in a larger sample)."""
    activations: bool = opt(True, "--no-activations", help="skip the streaming pass (source "
                            "neurons, unigram roles, conditional activations, topic "
                            "neurons)")
    """Stream the dataset (source neurons, unigram roles, prediction conditional, topic
    neurons)."""
    plots: bool = opt(True, "--no-plots", help="tables only")
    """Write the figures."""
    progress: bool = True

    def __post_init__(self) -> None:
        if min(self.tokens, self.batch_size, self.bins, self.top_neurons, self.token_set,
               self.topic_min_count) < 1:
            raise ValueError(f"tokens, batch_size, bins, top_neurons, token_set and "
                             f"topic_min_count must be >= 1, got {self.tokens}, "
                             f"{self.batch_size}, {self.bins}, {self.top_neurons}, "
                             f"{self.token_set}, {self.topic_min_count}")


Producer = Callable[[], tuple[pd.DataFrame, Callable[[Path], Any] | None]]


def run_paper_results(config: PaperResultsConfig) -> dict[str, str]:
    """Write every result it can; returns ``{result: "written" or the reason skipped}``."""
    from universal_neurons.rundir import RunDir

    t0 = time.perf_counter()
    run = Path(config.out)
    if not (run / NEURONS_DIR).is_dir():
        raise UserError(f"{run} holds no {NEURONS_DIR}/ folder; run `universal-neurons run "
                        f"--out {run}` (or correlate) first")
    tables = {p.stem: pd.read_parquet(p) for p in sorted((run / NEURONS_DIR).glob("*.parquet"))}
    ref = _reference(tables, config.model)
    status: dict[str, str] = {}
    model = pm.try_load(ref, config.device) if ref is not None else None
    for result, producer in _table_producers(run, tables, ref, config, model).items():
        status[result] = _emit(run, result, producer, config.plots)
    status.update(_model_results(run, tables, ref, model, config))
    RunDir(run).record_stage(STAGE, json.loads(json.dumps(asdict(config), default=str)),
                             model=ref, results=status,
                             seconds=round(time.perf_counter() - t0, 2))
    return status


def _reference(tables: dict[str, pd.DataFrame], model: str | None) -> str | None:
    if model is not None:
        return safe_name(model)
    with_corr = [m for m, t in tables.items() if "mean_corr" in t.columns]
    candidates = with_corr or list(tables)
    return candidates[0] if candidates else None


def _emit(run: Path, result: str, producer: Producer, plots: bool) -> str:
    """Compute one result and write its table and figure; the reason if it was skipped."""
    from universal_neurons.rundir import write_table

    try:
        table, plot = producer()
    except Skip as e:
        log.warning("paper result %s skipped: %s", result, e)
        return str(e)
    except Exception as e:  # noqa: BLE001 - one result's failure never stops the others
        log.warning("paper result %s failed: %s", result, e,
                    exc_info=not isinstance(e, (UserError, ValueError, KeyError)))
        return f"failed: {type(e).__name__}: {e}"
    write_table(run / PAPER_DIR / PAPER_TABLE.format(result=result), table, csv=False)
    if plots and plot is not None:
        try:
            plot(run / PLOTS_DIR / FIG_PAPER.format(result=result))
        except Exception as e:  # noqa: BLE001 - the table stands without its figure
            log.warning("figure of paper result %s not drawn: %s", result, e,
                        exc_info=not isinstance(e, UserError))
    log.info("paper result %s: %d rows", result, len(table))
    return WRITTEN


def _need(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise Skip(f"no {path.parent.name}/{path.name} ({what})")
    return pd.read_parquet(path)


def _table_producers(run: Path, tables: dict[str, pd.DataFrame], ref: str | None,
                     config: PaperResultsConfig, model: Any) -> dict[str, Producer]:
    """The results computed from tables (``model``, or None, adds weight panels)."""
    from universal_neurons.report import plots_paper as pp

    def ref_table(*cols: str) -> pd.DataFrame:
        if ref not in tables:
            raise Skip(f"no neuron table of the model {ref!r}")
        missing = [c for c in cols if c not in tables[ref].columns]
        if missing:
            raise Skip(f"the neuron table of {ref} lacks {', '.join(missing)}")
        return tables[ref]

    def corr() -> Any:
        with_corr = {m: t for m, t in tables.items() if "mean_corr" in t.columns}
        if not with_corr:
            raise Skip("no neuron table has correlation columns (run correlate)")
        d = pt.corr_distributions(with_corr, config.bins)
        return d, lambda p: pp.plot_corr_distributions(d, p)

    def depth() -> Any:
        t = ref_table("is_universal")
        if not pt.partners(t):
            raise Skip(f"the neuron table of {ref} has no best-partner columns")
        d = pt.depth_specialisation(t)
        return d, lambda p: pp.plot_depth_specialisation(d, p)

    def raw() -> Any:
        d = pt.raw_by_layer(ref_table("is_universal"))
        return d, lambda p: pp.plot_raw_by_layer(d, p)

    def skew() -> Any:
        frames = {m: t for m, t in tables.items() if {"vocab_skew", "vocab_kurt"} <= set(t)}
        if not frames:
            raise Skip("no neuron table has vocab_skew / vocab_kurt (run weights)")
        d = pd.concat([pt.prediction_skew_late(t, config.kurtosis).assign(model=m)
                       for m, t in frames.items()], ignore_index=True)
        d = d[["model", *[c for c in d.columns if c != "model"]]]
        order = {ref: frames[ref]} if ref in frames else frames
        return d, lambda p: pp.plot_prediction_skew(order, d, config.kurtosis, p)

    def entropy() -> Any:
        cand = _need(run / ENTROPY_DIR / ENTROPY_CANDIDATES, "run entropy")
        if "model" in cand.columns:
            ran = sorted(set(cand["model"].astype(str)))
            cand = cand[cand["model"].astype(str).map(safe_name) == ref]
            if cand.empty:
                raise Skip(f"the entropy stage ran on {', '.join(ran)}, not on {ref}")
        sweep_path = run / ENTROPY_DIR / f"{ENTROPY_SWEEP}.parquet"
        sweep = pd.read_parquet(sweep_path) if sweep_path.is_file() else None
        targets = (list(dict.fromkeys(sweep.loc[sweep["group"] == "target", "neuron"]))
                   if sweep is not None else [])
        if not targets:
            raise Skip("the entropy stage swept no neuron (entropy/sweep.parquet)")
        table = tables.get(str(ref))
        d = pt.entropy_weights(cand, targets, sweep, table)
        baseline = tuple(dict.fromkeys(sweep.loc[sweep["group"] == "baseline", "neuron"])
                         if sweep is not None else ())
        comp = pm.vocab_cos(model, [*targets, *baseline]) if model is not None else None
        l2 = (table["l2_penalty"].dropna().to_numpy() if table is not None
              and "l2_penalty" in table.columns else None)
        return d, lambda p: pp.plot_entropy_weights(d, p, l2, comp, baseline)

    def attention() -> Any:
        pts = _need(run / ATTENTION_DIR / ATTENTION_PATH_ABLATION_POINTS, "run attention")
        summ = _need(run / ATTENTION_DIR / ATTENTION_PATH_ABLATION, "run attention")
        if pts.empty:
            raise Skip("path ablation kept no token points")
        d = pt.attention_panel(pts, summ)
        return d, lambda p: pp.plot_attention_panel(pts, d, p)

    return {"corr_distributions": corr, "depth_specialisation": depth, "raw_by_layer": raw,
            "prediction_skew_late": skew, "entropy_weights": entropy, "attention_panel": attention}


def _model_results(run: Path, tables: dict[str, pd.DataFrame], ref: str | None, model: Any,
                   config: PaperResultsConfig) -> dict[str, str]:
    """The results that need the model: class split (weights) and the streamed ones."""
    names = ("prediction_class_split", "source_neurons", "unigram_roles",
             "prediction_conditional", "topic_neurons")
    if model is None:
        reason = f"cannot load the model {ref!r} for its weights and activations"
        log.warning("paper results %s skipped: %s", ", ".join(names), reason)
        return dict.fromkeys(names, reason)
    try:
        ctx = pm.ModelContext.build(model, run, tables.get(str(ref)), config)
    except Exception as e:  # noqa: BLE001 - reported per result
        log.warning("paper results %s failed: %s", ", ".join(names), e, exc_info=True)
        return dict.fromkeys(names, f"failed: {type(e).__name__}: {e}")
    status = {"prediction_class_split": _emit(run, "prediction_class_split",
                                              ctx.class_split, config.plots)}
    if not config.activations:
        reason = "activations not streamed (--no-activations)"
        return {**status, **dict.fromkeys(names[1:], reason)}
    try:
        ctx.stream()
    except Exception as e:  # noqa: BLE001 - reported per result
        log.warning("paper results' streaming pass failed: %s", e,
                    exc_info=not isinstance(e, UserError))
        return {**status, **dict.fromkeys(names[1:], f"failed: {type(e).__name__}: {e}")}
    for result, producer in (("source_neurons", ctx.source_neurons),
                             ("unigram_roles", ctx.unigram_roles),
                             ("prediction_conditional", ctx.prediction_conditional),
                             ("topic_neurons", ctx.topic_neurons)):
        status[result] = _emit(run, result, producer, config.plots)
    return status

