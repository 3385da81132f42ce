"""``universal-neurons correlate``: cross-model neuron correlations and universality."""

from __future__ import annotations

import argparse

NAME = "correlate"
HELP = "correlate every neuron with every neuron of other seeds; excess correlation, universality"
DESCRIPTION = """\
Stream a token dataset once through several models trained from different seeds and
compute, for every neuron, its Pearson correlation with every neuron of the other models
(all layers) and with a randomly rotated basis of them (the baseline). Writes
  RUN/neurons/<model>.parquet   layer, neuron, max/mean/min_corr, max/mean/min_baseline,
                                excess_corr, is_universal, <partner>_best/_corr/_baseline
  RUN/correlations/<a>__<b>.safetensors   per-neuron max/min, top/bottom-k, histogram,
                                moments of its correlations with b (both directions)
  RUN/manifest.json             config, seeds, token counts, memory plan, timings
The first model is the reference, compared with every other; --all-pairs gives every
model its own table. Under torchrun the ranks split the work (see docs/engine.md).

examples:
  universal-neurons correlate --models tiny-gpt2 --out runs/tiny
  universal-neurons correlate --models stanford-gpt2-small --dataset data/pile-100M \\
      --out runs/small --device cuda --checkpoint-every 10M
"""




def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.correlate import CorrelateConfig

    add_config_options(p, CorrelateConfig)
    p.add_argument("--stats", action="store_true",
                   help="also compute every model's activation statistics (moments, sparsity, "
                   "histograms, top examples, per-token table; see `stats --help`) in the same "
                   "pass")


def config_settings(args: argparse.Namespace) -> dict:
    """The CorrelateConfig fields set by the given options (``run``'s per-stage extras;
    ``run`` always computes the statistics, so ``--stats`` changes nothing there)."""
    return {k: v for k, v in vars(args).items() if k != "stats"}


def run(args: argparse.Namespace) -> int:
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.correlate import CorrelateConfig, run_correlate
    from universal_neurons.stages.stats import run_correlate_with_stats

    config = config_from_args(CorrelateConfig, args)
    # --stats: activation statistics from the same forward passes
    result = run_correlate_with_stats(config) if args.stats else run_correlate(config)
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    if result.tables:
        for name, table in result.tables.items():
            n = int(table["is_universal"].sum())
            print(f"{name}: {n} of {len(table)} neurons universal ({100 * n / len(table):.2f}%)")
        print(f"wrote {result.rundir}")
