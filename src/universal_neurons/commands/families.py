"""``universal-neurons families``: neuron families from explanations and weights."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "families"
HELP = ("assign neuron families (unigram, alphabet, previous token, syntax, topic, position, "
        "prediction, ...)")
DESCRIPTION = """\
Label every neuron of a run with zero or more families and a score each, from the
variance reductions written by `explain` and the vocabulary moments of cos(W_U, w_out)
(from the neuron table, else computed from the model's weights):
  unigram         best current-token unigram VR > 0.5
  alphabet        the best neuron of each single-letter token feature (" a", "A", ...),
                  if VR > 0.37 (the paper's {c}_unigram)
  previous_token  best previous-token feature VR > 0.5
  token           best other current-token property VR > 0.5
  syntax          best spaCy POS / dependency VR > 0.3
  entity          best spaCy entity VR > 0.3
  context         best context (quotes, parentheses, after newline) VR > 0.3
  topic           the best of all features is a topic feature (explain --topics), VR > 0.1
  position        universal neurons with activation kurtosis < 2 (the paper's candidates),
                  scored by I(position; pre > 0) in nats over every context position;
                  optional cuts --position-min-mi (nats) and --position-information
                  (I / H(fires)) are off (0); --position-any-neuron drops "universal"
  prediction      vocab kurtosis > 10, positive skew  (suppression: negative skew)
  partition       vocab variance >= 5 x the model's median
Writes the columns families, family_scores, family_features into RUN/neurons/<model>.parquet,
RUN/families/<model>_counts.csv, RUN/families/<model>_prediction_tokens.parquet (the tokens
prediction/suppression/partition neurons promote or suppress), RUN/plots/families_<model>.png
and RUN/plots/prediction_curves.png (per-layer percentiles of vocab kurtosis and skew).
When fewer than 10 neurons of a model are universal, the counts also give the families of
the top 5% by excess correlation (position family: those with kurtosis < 2), in the
columns n_selected, frac_selected and selection (the label, e.g. "top 5% by excess
correlation: 103 neurons (only 4 pass 0.5)").

examples:
  universal-neurons families runs/tiny
  universal-neurons families runs/small --models stanford-gpt2-small-a --unigram 0.6
"""


THRESHOLDS = ("unigram", "alphabet", "previous_token", "token", "syntax", "entity", "context",
              "topic", "position_min_mi", "position_information", "position_max_kurt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.families import FamiliesConfig

    add_config_options(p, FamiliesConfig, skip=("thresholds",), run_positional=True)
    for name in THRESHOLDS:
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=None, metavar="X",
                       help="threshold of that family (defaults above)")
    p.add_argument("--position-any-neuron", action="store_true",
                   help="position family: do not require is_universal (the paper does)")
    p.add_argument("--vocab-kurtosis", type=float, default=None, metavar="X",
                   help="prediction/suppression cut on vocab kurtosis (default 10)")
    p.add_argument("--partition-var-ratio", type=float, default=None, metavar="X",
                   help="partition cut: vocab variance over the model's median (default 5)")


def _thresholds(args: argparse.Namespace) -> Any:
    from universal_neurons.analysis.families import FamilyThresholds
    from universal_neurons.analysis.prediction import PredictionThresholds

    given = {n: getattr(args, n) for n in THRESHOLDS if getattr(args, n, None) is not None}
    pred = {k: v for k, v in (("kurtosis", getattr(args, "vocab_kurtosis", None)),
                              ("partition_var_ratio", getattr(args, "partition_var_ratio", None)))
            if v is not None}
    return FamilyThresholds(**given, prediction=PredictionThresholds(**pred),
                            position_universal_only=not getattr(args, "position_any_neuron",
                                                                False))


def config_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The FamiliesConfig fields set by the given options (``run``'s per-stage extras)."""
    special = {*THRESHOLDS, "vocab_kurtosis", "partition_var_ratio", "position_any_neuron"}
    given = {k: v for k, v in vars(args).items() if k not in special}
    if special & set(vars(args)):
        given["thresholds"] = _thresholds(args)
    return given


def run(args: argparse.Namespace) -> int:
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.families import FamiliesConfig, run_families

    counts = run_families(config_from_args(FamiliesConfig, args, thresholds=_thresholds(args)))
    for model, c in counts.items():
        found = ", ".join(f"{f} {n}" for f, n in zip(c["family"], c["n_neurons"]) if n)
        print(f"{model}: {found or 'no families'}")
    return 0
