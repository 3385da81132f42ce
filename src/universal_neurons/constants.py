"""Every path of a run directory, in one place.

A run directory (``RUN/``) holds::

    manifest.json                       MANIFEST: config, versions, seeds, token counts, timings
    pipeline.json                       PIPELINE_FILE: the ``run`` command's cache record
    neurons/<model>.parquet (+ .csv)    neuron_table(model): one row per neuron
    correlations/<a>__<b>.safetensors   correlations_file(a, b): per-pair summaries
    checkpoints/                        CHECKPOINT_DIR: resumable engine state
    stats/<model>/                      STATS_DIR: activation_stats.safetensors, weights.safetensors,
                                        weight_tokens.parquet
    features/<fingerprint[:16]>/        FEATURES_DIR: vocab_features.parquet (+ .json), topics.parquet,
                                        sequence labels
    explanations/<model>.parquet        EXPLANATIONS_DIR (+ <model>_vr.parquet)
    families/<model>_counts.csv         FAMILIES_DIR (+ <model>_prediction_tokens.parquet)
    properties/                         PROPERTIES_DIR: claims, comparison, percentiles
    universality/threshold_curve.parquet THRESHOLD_CURVE: universal share vs threshold
    entropy/                            ENTROPY_DIR: candidates, candidate pairs, sweeps
    attention/                          ATTENTION_DIR: heuristic, path ablation, value norms
    paper/<result>.parquet (or .json)   PAPER_DIR: the paper's results (PAPER_RESULTS)
    trajectory/                         TRAJECTORY_DIR: neurons.parquet, summary.parquet and one
                                        correlate run per training checkpoint (<checkpoint>/)
    plots/*.png                         PLOTS_DIR: the figures of FIGURE_SECTIONS
    paper/index.json (+ index.md)       PAPER_DIR: the paper index (PAPER_INDEX_JSON, _MD)
    report/index.html                   REPORT_DIR, REPORT_INDEX
"""

import re

MANIFEST = "manifest.json"
CONFIG = "config.json"
PIPELINE_FILE = "pipeline.json"
"""The ``run`` command's record (``pipeline.py`` still declares its own copy)."""

# ---- folders --------------------------------------------------------------------------------
NEURONS_DIR = "neurons"
CORRELATIONS_DIR = "correlations"
PLOTS_DIR = "plots"
REPORT_DIR = "report"
STATS_DIR = "stats"
CHECKPOINT_DIR = "checkpoints"
FEATURES_DIR = "features"
EXPLANATIONS_DIR = "explanations"
FAMILIES_DIR = "families"
PROPERTIES_DIR = "properties"
PREDICTION_DIR = "prediction"
ENTROPY_DIR = "entropy"
ATTENTION_DIR = "attention"
UNIVERSALITY_DIR = "universality"
PAPER_DIR = "paper"
"""``paper/<result>.parquet`` (or ``.json``): one table per result of the paper."""
DATASET_DIR = "dataset"
"""A token dataset kept inside the run (the report looks here for token text)."""
TOKENIZER_DIR = "tokenizer"
"""A tokenizer kept inside the run (the report looks here for token text)."""
TRAJECTORY_DIR = "trajectory"
"""Universality over training: tables at its top, one correlate run per checkpoint below."""
WEIGHTS_DIR = "weights"
"""Flat ``weights/<model>.safetensors``, also read by the report."""

# ---- files inside the folders ---------------------------------------------------------------
ACTIVATION_STATS_FILE = "activation_stats.safetensors"
"""``stats/<model>/``: the stats stage's activation moments."""
WEIGHTS_FILE = "weights.safetensors"
"""``stats/<model>/``: the weights stage's per-neuron arrays."""
WEIGHT_TOKENS_FILE = "weight_tokens.parquet"
"""``stats/<model>/``: token strings for the weights stage's vocab tables."""
VOCAB_FEATURES = "vocab_features.parquet"
"""``features/<fingerprint[:16]>/``: binary token features of one tokenizer."""
TOPICS = "topics.parquet"
"""``features/<fingerprint[:16]>/``: the explain stage's topic token sets (topic, rank,
token_id, token, weight), the ``topic:<name>`` features of ``vocab_features.parquet``."""
SEQUENCE_LABELS = "sequence_labels-{key}.npz"
"""``features/<fingerprint[:16]>/``: cached sequence labels of one dataset prefix."""
EXPLANATIONS_TOP = "{model}.parquet"
EXPLANATIONS_VR = "{model}_vr.parquet"
FAMILY_COUNTS = "{model}_counts.csv"
PREDICTION_TOKENS = "{model}_prediction_tokens.parquet"
PROPERTIES_CLAIMS = "claims.parquet"
PROPERTIES_CLAIMS_JSON = "claims.json"
PROPERTIES_COMPARISON = "comparison.parquet"
PROPERTIES_PERCENTILES = "percentiles.parquet"
ENTROPY_CANDIDATES = "candidates.parquet"
ENTROPY_CANDIDATE_PAIRS = "candidate_pairs.parquet"
ENTROPY_SWEEP = "sweep"
"""``entropy/sweep.parquet`` and ``sweep_tokens.parquet`` (a stem: the writer adds both)."""
INTERVENTION_SUMMARY = "{stem}.parquet"
INTERVENTION_TOKENS = "{stem}_tokens.parquet"
"""The files of one intervention sweep (``analysis.interventions.InterventionResults``):
one row per intervention, and per-token rows when asked for."""
ATTENTION_HEURISTIC_TOP = "heuristic_top.parquet"
ATTENTION_HEURISTIC_HIST = "heuristic_hist.parquet"
ATTENTION_HEURISTIC_SUMMARY = "heuristic_summary.json"
ATTENTION_PATH_ABLATION = "path_ablation.parquet"
ATTENTION_PATH_ABLATION_POINTS = "path_ablation_points.parquet"
ATTENTION_BOS_VALUE_NORMS = "bos_value_norms.parquet"
REPORT_INDEX = "index.html"
THRESHOLD_CURVE = f"{UNIVERSALITY_DIR}/threshold_curve.parquet"
"""Per model, the universal share at thresholds 0.1..0.9 (with a jackknife interval when
correlate ran with ``--blocks``)."""
PAPER_TABLE = "{result}.parquet"
"""``paper/``: the table of one result of the paper (``paper_results`` stage)."""

PAPER_RESULTS: dict[str, str] = {
    "corr_distributions": "properties",
    "depth_specialisation": "properties",
    "raw_by_layer": "properties",
    "unigram_roles": "families",
    "source_neurons": "families",
    "topic_neurons": "families",
    "prediction_skew_late": "prediction",
    "prediction_class_split": "prediction",
    "prediction_conditional": "prediction",
    "entropy_weights": "entropy",
    "attention_panel": "attention",
}
"""Results written by the ``paper-results`` stage -> the report section of their figure:
``paper/<result>.parquet`` and ``plots/paper_<result>.png``."""

TRAJECTORY_NEURONS = "neurons.parquet"
"""``trajectory/``: one row per (neuron of member a, checkpoint)."""
TRAJECTORY_SUMMARY = "summary.parquet"
"""``trajectory/``: one row per checkpoint (share universal, emergence, persistence, ...)."""
TRAJECTORY_CHECKPOINT_RECORD = "trajectory.json"
"""``trajectory/<checkpoint>/``: what the checkpoint's correlate run was asked (written after
it finished; a checkpoint whose record matches is not recomputed)."""

# ---- figures (in plots/) and the report section that shows each -------------------------------
FIG_PROPERTIES_PERCENTILES = "properties_percentiles.png"
FIG_UNIVERSAL_BY_LAYER = "universal_by_layer.png"
FIG_CORR_VS_BASELINE = "corr_vs_baseline_{model}.png"
FIG_THRESHOLD_CURVE = "threshold_curve.png"
FIG_FAMILIES = "families_{model}.png"
FIG_PREDICTION_CURVES = "prediction_curves.png"
FIG_ENTROPY = "entropy_{neuron}.png"
FIG_ATTENTION_HEURISTIC = "attention_heuristic.png"
FIG_ATTENTION_PATH_ABLATION = "attention_path_ablation.png"
FIG_ATTENTION_BOS_VALUE_NORMS = "attention_bos_value_norms.png"
FIG_PAPER = "paper_{result}.png"
"""The figure of one result of ``PAPER_RESULTS``."""
FIG_TRAJECTORY_UNIVERSALITY = "trajectory_universality.png"
FIG_TRAJECTORY_PREDICTION = "trajectory_prediction.png"
FIG_TRAJECTORY_SCATTER = "trajectory_scatter.png"

FIGURE_SECTIONS: dict[str, str] = {
    FIG_PROPERTIES_PERCENTILES: "properties",
    FIG_UNIVERSAL_BY_LAYER: "properties",
    FIG_CORR_VS_BASELINE: "properties",
    FIG_THRESHOLD_CURVE: "properties",
    FIG_FAMILIES: "families",
    FIG_PREDICTION_CURVES: "prediction",
    FIG_ENTROPY: "entropy",
    FIG_ATTENTION_HEURISTIC: "attention",
    FIG_ATTENTION_PATH_ABLATION: "attention",
    FIG_ATTENTION_BOS_VALUE_NORMS: "attention",
    **{FIG_PAPER.format(result=r): section for r, section in PAPER_RESULTS.items()},
    FIG_TRAJECTORY_UNIVERSALITY: "trajectory",
    FIG_TRAJECTORY_PREDICTION: "trajectory",
    FIG_TRAJECTORY_SCATTER: "trajectory",
}
"""Figure file (``{field}`` = any text) -> the report section that shows it; figures not
listed go under "Other figures"."""

_FIGURE_PATTERNS = [(re.compile(".+".join(map(re.escape, re.split(r"\{[a-z_]+\}", f)))), section)
                    for f, section in sorted(FIGURE_SECTIONS.items(), key=lambda kv: "{" in kv[0])]


def figure_section(file_name: str) -> str | None:
    """The report section of a figure file (its name, without folders), or None if unlisted.
    Exact names are tried before templates; a template field matches one or more characters."""
    return next((section for pattern, section in _FIGURE_PATTERNS if pattern.fullmatch(file_name)),
                None)


def correlations_file(model: str, partner: str) -> str:
    """Relative path of a pair's correlation summaries (``correlations/<a>__<b>.safetensors``)."""
    return f"{CORRELATIONS_DIR}/{safe_name(model)}__{safe_name(partner)}.safetensors"


# Hook names follow TransformerLens.
HOOK_POST = "blocks.{layer}.mlp.hook_post"
HOOK_PRE = "blocks.{layer}.mlp.hook_pre"


def trajectory_file(name: str) -> str:
    """Relative path of a trajectory table (``trajectory/<name>``)."""
    return f"{TRAJECTORY_DIR}/{name}"


def trajectory_checkpoint_dir(label: str) -> str:
    """Relative path of one checkpoint's correlate run (``trajectory/<label>``)."""
    return f"{TRAJECTORY_DIR}/{safe_name(label)}"


def neuron_table(model: str, ext: str = "parquet") -> str:
    """Relative path of a model's per-neuron table (``neurons/<model>.parquet``)."""
    return f"{NEURONS_DIR}/{safe_name(model)}.{ext}"


def safe_name(model: str) -> str:
    """A model name usable as a file name (``EleutherAI/pythia-160m@step1`` -> ``EleutherAI--pythia-160m@step1``)."""
    return model.replace("/", "--").replace("\\", "--")


def neuron_name(layer: int, neuron: int) -> str:
    """The paper's neuron naming, e.g. ``L23.945``."""
    return f"L{layer}.{neuron}"


def parse_neuron_name(name: str) -> tuple[int, int]:
    """Inverse of :func:`neuron_name`; accepts ``L3.17`` or ``3.17``."""
    s = name.strip()
    if s[:1] in ("L", "l"):
        s = s[1:]
    try:
        layer, neuron = s.split(".")
        return int(layer), int(neuron)
    except ValueError:
        raise ValueError(f"bad neuron name {name!r}; expected L<layer>.<neuron>, e.g. L3.17") from None


# ---- the paper index (stages.paper) ----------------------------------------------------------
PAPER_INDEX_JSON = "index.json"
"""``paper/``: one entry per result of the paper (``analysis.paper_index``)."""
PAPER_INDEX_MD = "index.md"
"""``paper/``: the same as a Markdown table."""
PAPER_SCALAR = "{result}.json"
"""``paper/``: a scalar result of the paper: ``{"value": number or text, "text": "..."}``."""
REPORT_PAPER_PAGE = "paper.html"
"""``report/``: the paper index as a page of the report."""


def paper_result_files(result: str) -> tuple[str, str, str]:
    """``(table, scalar JSON, figure)`` paths of one result of the paper, relative to the run."""
    return (f"{PAPER_DIR}/{PAPER_TABLE.format(result=result)}",
            f"{PAPER_DIR}/{PAPER_SCALAR.format(result=result)}",
            f"{PLOTS_DIR}/{FIG_PAPER.format(result=result)}")
