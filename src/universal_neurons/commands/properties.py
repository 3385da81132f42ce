"""``universal-neurons properties``: how universal neurons differ from the rest (paper §4.2)."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import threshold as _threshold

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
    p.add_argument("run", metavar="RUN", help="run directory")
    p.add_argument("--top-percent", type=float, default=None, metavar="P",
                   help="call the top P%% of neurons by excess_corr universal (per model) "
                        "instead of is_universal; useful when few neurons pass the threshold")
    p.add_argument("--threshold", type=_threshold, default=0.5,
                   help="excess_corr threshold if a table lacks is_universal (default 0.5)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    p.add_argument("--min-universal", type=int, default=10,
                   help="fewest universal neurons for a claim to be tested (default 10)")
    p.add_argument("--fallback-percent", type=float, default=5.0, metavar="P",
                   help="when fewer than --min-universal neurons are universal, also test the "
                        "claims on the top P%% by excess_corr, labelled in a selection column "
                        "(default 5; 0: do not)")
    p.add_argument("--raw", action="store_true",
                   help="test raw values instead of within-layer percentiles")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.analysis.properties import claims_text
    from universal_neurons.stages.properties import PropertiesConfig, run_properties

    config = PropertiesConfig(run=args.run, top_percent=args.top_percent,
                              threshold=args.threshold, alpha=args.alpha,
                              min_universal=args.min_universal,
                              fallback_percent=args.fallback_percent or None,
                              on="raw" if args.raw else "percentile", plots=not args.no_plots)
    res = run_properties(config)
    print(claims_text(res.claims))
    print(f"wrote {len(res.files)} files under {args.run}")
    return 0
