"""``universal-neurons paper-results``: the paper's results the other stages do not draw."""

from __future__ import annotations

import argparse

NAME = "paper-results"
HELP = "the paper's remaining results as tables (RUN/paper/) and figures (RUN/plots/paper_*)"
DESCRIPTION = """\
Reads a finished run and writes, per result, RUN/paper/<result>.parquet and
RUN/plots/paper_<result>.png (docs/paper.md describes each and its figure in the paper):
  corr_distributions      densities of mean max-correlation, baseline and excess per model
  depth_specialisation    layer of each neuron's best partner vs its own layer
  raw_by_layer            raw activation / weight statistics by layer, universal vs not
  prediction_skew_late    prediction / suppression neurons per layer (vocab skew, kurtosis)
  entropy_weights         w_out norm, vocab variance, null-space fraction of entropy neurons
  attention_panel         change of BOS attention vs change of output norm (Spearman)
  prediction_class_split  the token class that best splits a neuron's cos(W_U, w_out)
and, from one pass of at most --tokens tokens through the reference model:
  source_neurons          activation by corpus source (bundled corpus: KJV, Jargon File,
                          Devil's Dictionary, Python docs, WordNet glosses)
  unigram_roles           unigram neurons by token role: whole word, word start, middle
  prediction_conditional  prediction neurons when the next token is in their set or not
  topic_neurons           the best topic neurons (explain --topics) and each one's top-10
                          tokens by mean activation (the paper's place-neuron heatmap)
A result whose input is missing is skipped with its reason; the stage does not fail.

examples:
  universal-neurons paper-results --out runs/default
  universal-neurons paper-results --out runs/small --tokens 1M --device cuda
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.paper_results import PaperResultsConfig

    add_config_options(p, PaperResultsConfig)


def run(args: argparse.Namespace) -> int:
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.paper_results import (
        WRITTEN,
        PaperResultsConfig,
        run_paper_results,
    )

    config = config_from_args(PaperResultsConfig, args)
    status = run_paper_results(config)
    for result, state in status.items():
        print(f"{result}: {state if state != WRITTEN else 'written'}")
    return 0
