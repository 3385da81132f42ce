"""``universal-neurons properties``: how universal neurons differ from the rest (paper §4.2)."""

from __future__ import annotations

import argparse

NAME = "properties"
HELP = "compare universal and other neurons; check the paper's five claims; Fig. 3 plots"
DESCRIPTION = """\
Read RUN/neurons/<model>.parquet (after correlate, weights and stats), turn every
statistic into a percentile within its layer, and compare universal neurons with the
others per model: medians, rank-biserial correlation, Cohen's d, Mann-Whitney U (scipy).
Checks the paper's claims that universal neurons have lower activation frequency
(sparsity), higher pre-activation skew and kurtosis, a more negative input bias and a
larger L2 penalty. Writes
  RUN/properties/claims.csv, claims.json     each claim per model: held / not held / too few
                                             (with fewer than 10 universal neurons, also for
                                             the top 5% by excess_corr: see `selection`)
  RUN/properties/comparison.csv              every statistic, universal vs other
  RUN/properties/percentiles.parquet         within-layer percentiles per neuron
  RUN/plots/properties_percentiles.png, universal_by_layer.png,
  RUN/plots/corr_vs_baseline_<model>.png

examples:
  universal-neurons properties runs/small
  universal-neurons properties runs/tiny --top-percent 1
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.properties import PropertiesConfig

    add_config_options(p, PropertiesConfig, run_positional=True)


def run(args: argparse.Namespace) -> int:
    from universal_neurons.analysis.properties import claims_text
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.properties import PropertiesConfig, run_properties

    config = config_from_args(PropertiesConfig, args)
    res = run_properties(config)
    print(claims_text(res.claims))
    print(f"wrote {len(res.files)} files under {config.out}")
    return 0
