"""``universal-neurons stats``: activation statistics of every neuron in one pass."""

from __future__ import annotations

import argparse

NAME = "stats"
HELP = "per-neuron activation statistics: moments, sparsity, histograms, examples, tokens"
DESCRIPTION = """\
Stream a token dataset once through each model (BOS/pad and newline tokens dropped unless
--keep-tokens) and keep, for every neuron, exactly and mergeably:
  mean, var, skew, kurt   of the pre-activation (streaming float64 moments; kurt not excess)
  sparsity                fraction of tokens where the neuron is active (--sparsity-rule;
                          default post>0, the paper's code used e.g. pre>-0.1)
  histogram               of the pre-activation, a range fitted per neuron + overflow bins
  example candidates      largest and smallest post-activations and a uniform sample of
                          positive ones (sequence, position, value)
  per-token table         mean/max post-activation on the most frequent tokens (bounded
                          by --token-table-mb)
Then it runs each model once more over only the sequences of the examples a report shows
(top, quantile bands of the positive activations, most negative; one per text window) and
records the activation at every token of their windows (7 tokens before to 3 after).
Writes RUN/stats/<model>/activation_stats.safetensors and joins the columns mean, var,
skew, kurt, sparsity into RUN/neurons/<model>.parquet.

examples:
  universal-neurons stats --model tiny-gpt2-a --out runs/tiny
  universal-neurons stats --model stanford-gpt2-small --dataset data/pile-100M \\
      --out runs/small --device cuda --max-tokens 10M
"""




def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.stats import StatsConfig

    add_config_options(p, StatsConfig)


def run(args: argparse.Namespace) -> int:
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.stats import StatsConfig, run_stats

    result = run_stats(config_from_args(StatsConfig, args))
    print(f"{', '.join(result.models)}: statistics over {result.n_kept:,} kept tokens; "
          f"wrote {result.rundir}")
    return 0
