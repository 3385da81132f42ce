"""The paper index: every result of Gurnee et al. 2024 with the paper's value, the command
that produces it on a run, its files and its value on this run.

:data:`RESULTS` is the one table of result id -> (where in the paper, the paper's value or
description, the producing stage, the files, how to read the value). :func:`build_index`
turns it into one entry per result for a run (:class:`~analysis.paper_values.RunFiles`
view, no writing); a result that cannot be read is still listed, with ``status`` "not
computed" and the reason. ``stages.paper`` writes ``RUN/paper/index.json`` and ``index.md``.

Results other stages do not produce yet (:data:`PAPER_RESULTS`) are read from
``RUN/paper/<id>.parquet`` (or ``<id>.json`` for a scalar: ``{"value": ..., "text": ...}``)
with the figure ``RUN/plots/paper_<id>.png`` (``constants.paper_result_files``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from universal_neurons.analysis import paper_values as pv
from universal_neurons.analysis.paper_values import NotComputed, Reading, RunFiles, RunInfo
from universal_neurons.constants import (
    FIG_ATTENTION_BOS_VALUE_NORMS,
    FIG_ATTENTION_HEURISTIC,
    FIG_ATTENTION_PATH_ABLATION,
    FIG_FAMILIES,
    FIG_PREDICTION_CURVES,
    FIG_PROPERTIES_PERCENTILES,
    FIG_UNIVERSAL_BY_LAYER,
    PAPER_RESULTS,
    PLOTS_DIR,
    PROPERTIES_DIR,
    PROPERTIES_PERCENTILES,
    paper_result_files,
    safe_name,
)

Files = Callable[[RunInfo], list[tuple[str, ...]]]
"""Run -> the files of a result: each tuple lists alternatives (glob patterns allowed),
one of which must exist."""


@dataclass(frozen=True)
class PaperResult:
    id: str
    where: str
    """Figure or section of the paper."""
    paper: str
    """The paper's value or a description of its result."""
    stage: str
    """The subcommand that produces it."""
    required: Files
    optional: Files
    read: Callable[[RunFiles, RunInfo], Reading]
    paper_value: float | None = None


def _plot(name: str, info: RunInfo) -> str:
    model = safe_name(info.reference) if info.reference else "*"
    return f"{PLOTS_DIR}/{name.format(model=model, neuron='*')}"


def _fixed(*groups: tuple[str, ...] | Callable[[RunInfo], str]) -> Files:
    """Files from fixed paths or ``info -> path`` functions; a missing reference model
    makes the model's paths unreadable (the result is then not computed)."""
    def files(info: RunInfo) -> list[tuple[str, ...]]:
        out = []
        for g in groups:
            out.append(g if isinstance(g, tuple) else (g(info),))
        return out
    return files


def _new(id_: str, where: str, paper: str) -> PaperResult:
    """A result the ``paper-results`` stage writes: ``paper/<id>.parquet`` or ``.json``
    required, its figure optional."""
    table, scalar, figure = paper_result_files(id_)
    return PaperResult(id_, where, paper, "paper-results", _fixed((table, scalar)),
                       _fixed((figure,)), pv.paper_result(id_))


def _plots(name: str) -> Files:
    return _fixed(lambda i: _plot(name, i))


NEURONS, COUNTS, VR = pv.neurons_file, pv.counts_file, pv.vr_file
PERCENTILES = f"{PROPERTIES_DIR}/{PROPERTIES_PERCENTILES}"

PAPER_RESULT_IDS = tuple(r for r in PAPER_RESULTS if r != pv.ATTENTION_PANEL)
"""Ids read from ``RUN/paper/<id>.*`` (``constants.PAPER_RESULTS``, written by
``paper-results``); its ``attention_panel`` is listed under ``attention_path_ablation``."""

RESULTS: tuple[PaperResult, ...] = (
    PaperResult("universal_share", "§4.1",
                "share of neurons with excess correlation > 0.5: GPT2-small-a 4.16%, "
                "GPT2-medium-a 1.23%, Pythia-160m 1.26%", "correlate",
                _fixed(NEURONS), _fixed(), pv.universal_share, 4.16),
    _new("corr_distributions", "§4.1, Fig. 2a; §6.3, Fig. 11",
         "distributions of the mean max correlation, its random-rotation baseline and the "
         "excess correlation (Fig. 2a: GPT2-medium-a; Fig. 11: the three models); universal "
         "neurons are the right tail of the excess"),
    PaperResult("universal_by_layer", "App. B, Fig. 14 (nearest)",
                "no per-layer share of universal neurons is given; Fig. 14 sets universal "
                "against other neurons layer by layer (GPT2-medium-a)", "properties",
                _fixed(NEURONS), _plots(FIG_UNIVERSAL_BY_LAYER), pv.universal_by_layer),
    _new("depth_specialisation", "§4.1, Fig. 2c",
         "depth specialisation: a neuron's most correlated neuron in another seed tends to "
         "sit at the same depth (GPT2-small-a, Pythia-160m: Figs. 12c, 13c)"),
    PaperResult("property_percentiles", "§4.2, Fig. 3",
                "universal neurons sit at high within-layer percentiles of activation "
                "skew and kurtosis and of the weight norm, low ones of activation "
                "frequency and input bias", "properties",
                _fixed((PERCENTILES,), (pv.COMPARISON_FILE,)),
                _plots(FIG_PROPERTIES_PERCENTILES), pv.property_percentiles),
    PaperResult("property_claims", "§4.2",
                "all five hold: lower activation frequency, higher pre-activation skew "
                "and kurtosis, more negative input bias, larger L2 weight penalty",
                "properties", _fixed((pv.CLAIMS_FILE,)),
                _fixed(), pv.property_claims, 5),
    _new("raw_by_layer", "App. B, Fig. 14",
         "the raw neuron statistics per layer, universal vs not (GPT2-medium-a)"),
    PaperResult("families", "§4.3, Figs. 1, 4",
                "universal neurons fall into a few families: unigram, alphabet, previous "
                "token, position, syntax, semantic/context (and, by their weights, "
                "prediction, suppression and partition neurons, §5.1)", "families",
                _fixed(COUNTS), _plots(FIG_FAMILIES), pv.families),
    _new("unigram_roles", "§4.3, Figs. 4a, 15",
         "unigram neurons split by the token's role: whole word, word start, word middle"),
    PaperResult("alphabet", "§4.3, Fig. 17",
                "18 of 26 letters have a universal alphabet neuron (GPT2-medium-a); the "
                "paper's notebook keeps each letter's best-VR universal neuron if VR > 0.37",
                "explain", _fixed(VR), _fixed(), pv.alphabet, 18),
    PaperResult("position", "§4.3, Figs. 1c, 19",
                "neurons firing as a function of absolute position, found by the mutual "
                "information of activation and position, mostly in layers 0-2 (the "
                "notebook scores universal neurons with kurtosis < 2)", "families",
                _fixed(COUNTS, VR), _fixed(), pv.position),
    PaperResult("previous_token", "§4.3, Figs. 1b, 18",
                "neurons explained by the previous token (the unigram tests shifted by "
                "one), mostly in layers 4-6", "families",
                _fixed(COUNTS), _fixed(VR), pv.family_count("previous_token", ("prev/",))),
    PaperResult("syntax", "§4.3, Figs. 4b, 20",
                "neurons explained by part-of-speech, dependency or morphology labels, "
                "found in every part of the network", "families",
                _fixed(COUNTS), _fixed(VR),
                pv.family_count("syntax", ("sequence/pos:", "sequence/dep:"))),
    _new("source_neurons", "§4.3, Figs. 1d, 21",
         "context neurons that fire on one data source (the Pile subsets; here the "
         "corpus's sources)"),
    _new("topic_neurons", "§4.3; code: topic_neurons.ipynb",
         "topic (semantic) neurons: neurons best explained by a topic's token set (the "
         "code's is_<topic>_topic features); the notebook's place-neuron figure shows each "
         "one's top-10 tokens by mean activation (GPT2-medium L17.2896 Canada, L17.944 "
         "Japan, L14.3820 Latin America)"),
    PaperResult("prediction_curves", "§5.1, Fig. 6a-b",
                "vocabulary kurtosis and skew of W_U w_out by layer: prediction neurons "
                "(high kurtosis, positive skew) grow after mid-depth, then the very last "
                "layers shift to many suppression neurons (negative skew)", "families",
                _plots(FIG_PREDICTION_CURVES), _fixed(COUNTS), pv.prediction_curves),
    _new("prediction_skew_late", "§5.1, Fig. 6c",
         "skews of the neurons with vocabulary kurtosis > 10 in the last four layers: "
         "suppression (negative skew) takes over at the very end"),
    _new("prediction_class_split", "§5.1, Fig. 5",
         "which vocabulary feature splits a neuron's W_U w_out (class-split histograms of "
         "a prediction, a suppression and a partition neuron)"),
    _new("prediction_conditional", "§5.1, Fig. 24",
         "suppression neurons fire far more often when the next token is in the set they "
         "suppress (e.g. years)"),
    _new("entropy_weights", "§5.2, Fig. 7a-b",
         "entropy neurons: large weight norm with w_out mostly orthogonal to W_U; the "
         "sweep's -0.17 point (GELU minimum) is the code's"),
    PaperResult("entropy_sweep", "§5.2, Fig. 7c-f",
                "fixing an entropy neuron's activation raises the next-token entropy "
                "through the final LayerNorm scale, far more than baseline neurons",
                "entropy", _fixed((pv.SWEEP_FILE,)), _plots("entropy_{neuron}.png"),
                pv.entropy_sweep),
    PaperResult("entropy_pair", "§5.2",
                "an anti-entropy neuron: cos(w_out) = -0.886 with the entropy neuron "
                "(L22.2882, L23.945 of GPT2-medium-a)",
                "entropy", _fixed((pv.PAIRS_FILE,)), _fixed(), pv.entropy_pair, -0.886),
    PaperResult("attention_heuristic", "§5.3, Fig. 8a",
                "W_out of some neurons aligns with heads' BOS-attention direction: a "
                "heavy tail of the heuristic score against a random baseline",
                "attention", _fixed((pv.HEURISTIC_SUMMARY_FILE,)),
                _fixed((pv.HEURISTIC_TOP_FILE,), (_plot(FIG_ATTENTION_HEURISTIC, RunInfo()),)),
                pv.attention_heuristic),
    PaperResult("attention_path_ablation", "§5.3, Fig. 8b-c",
                "path-ablating the neuron from the head's query: the more it was active, "
                "the more BOS attention falls and the head's output norm rises, so it "
                "turns the head off (% change at positions 64-255 is the code's)",
                "attention", _fixed((pv.PATH_ABLATION_FILE,)),
                _fixed((_plot(FIG_ATTENTION_PATH_ABLATION, RunInfo()),),
                       paper_result_files(pv.ATTENTION_PANEL)[::2]),
                pv.attention_path_ablation),
    PaperResult("bos_value_ratio", "§5.3",
                "the median head's BOS output W_O v_BOS has a norm 19.4x smaller than the "
                "mean over other tokens (GPT2-medium-a)",
                "attention", _fixed((pv.BOS_NORMS_FILE,)),
                _fixed((_plot(FIG_ATTENTION_BOS_VALUE_NORMS, RunInfo()),)),
                pv.bos_value_ratio, 19.4),
)
REQUIRED_IDS = tuple(r.id for r in RESULTS)

COMMANDS = {
    "correlate": "universal-neurons correlate --models {models} --out {run} --stats",
    "weights": "universal-neurons weights --model {models} --out {run}",
    "properties": "universal-neurons properties --out {run}",
    "explain": "universal-neurons explain --model {model} --out {run} --neurons all",
    "families": "universal-neurons families --out {run}",
    "entropy": "universal-neurons entropy --model {model} --out {run}",
    "attention": "universal-neurons attention --model {model} --out {run}",
    "paper-results": "universal-neurons paper-results --out {run}",
}


def command(stage: str, info: RunInfo) -> str:
    models = " ".join(info.models) or "MODELS"
    return COMMANDS[stage].format(models=models, model=info.reference or "MODEL", run=info.run)


def build_index(files: RunFiles, info: RunInfo) -> list[dict[str, Any]]:
    """One entry per :data:`RESULTS` item: ``id, where, paper, paper_value, command, status
    ("computed" / "not computed"), reason, files (existing, run-relative), value, text,
    selection, notes``."""
    return [_entry(r, files, info) for r in RESULTS]


def _entry(r: PaperResult, files: RunFiles, info: RunInfo) -> dict[str, Any]:
    entry: dict[str, Any] = {"id": r.id, "where": r.where, "paper": r.paper,
                             "paper_value": r.paper_value, "command": command(r.stage, info),
                             "status": "not computed", "reason": None, "files": [],
                             "value": None, "text": None, "selection": None, "notes": []}
    try:
        required = r.required(info)
        optional = r.optional(info)
    except NotComputed as e:
        entry["reason"] = str(e)
        return entry
    found, missing = [], []
    for alternatives in required:
        hit = [f for a in alternatives for f in files.glob(a)]
        if not hit:
            missing.append(alternatives[0])
        found += hit
    found += [f for alternatives in optional for a in alternatives for f in files.glob(a)]
    entry["files"] = list(dict.fromkeys(found))
    if missing:
        why = f"{', '.join(missing)} missing"
        told = info.produced.get(r.id)
        if told and told != "written":
            why += f" ({r.stage}: {told})"
        skipped = {r.stage, r.stage.replace("-", "_")} & set(info.skipped)
        entry["reason"] = f"stage {r.stage} skipped ({why})" if skipped else why
        return entry
    try:
        got = r.read(files, info)
    except NotComputed as e:
        entry["reason"] = str(e)
        return entry
    except (KeyError, ValueError, IndexError, TypeError, OSError) as e:
        entry["reason"] = f"unreadable ({type(e).__name__}: {e})"
        return entry
    entry.update(status="computed", value=got.value, text=got.text, selection=got.selection,
                 notes=list(got.notes))
    return entry


def index_markdown(entries: list[dict[str, Any]], info: RunInfo) -> str:
    """``RUN/paper/index.md``: a table of the entries, the paper's value next to this run's."""
    lines = [f"# Paper index: {info.run}", "",
             "Every result of Gurnee et al. 2024 (*Universal Neurons in GPT2 Language Models*), "
             f"the paper's value, and this run's (reference model: {info.reference or '-'}). "
             "Files are relative to the run directory.", "",
             "| id | paper | paper's value | this run | files | command |",
             "|---|---|---|---|---|---|"]
    for e in entries:
        run = e["text"] if e["status"] == "computed" else f"not computed: {e['reason']}"
        if e["selection"]:
            run += f" (selection: {e['selection']})"
        if e["notes"]:
            run += " [" + "; ".join(e["notes"]) + "]"
        files = "<br>".join(f"`{f}`" for f in e["files"]) or "-"
        cells = [f"`{e['id']}`", e["where"], e["paper"], run, files, f"`{e['command']}`"]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ")
                                        for c in cells) + " |")
    return "\n".join(lines) + "\n"
