"""``universal-neurons report``: the static HTML report and neuron browser of a run."""

from __future__ import annotations

import argparse
from typing import Any

NAME = "report"
HELP = "write RUN/report/index.html: summary, figures, claims and a neuron browser"
DESCRIPTION = """\
Build a self-contained static site from a run directory (opens from disk, no server):

  RUN/report/index.html                     summary (% universal vs the paper), figures,
                                            claims, families, entropy, attention
  RUN/report/browser-<model>.html           searchable, sortable table of every neuron
  RUN/report/neurons/<model>/L<l>.<n>.html  pages, for every model: any --neuron given,
                                            universal neurons and their best partners,
                                            every neuron the report names, the top --top-n
                                            by excess correlation (never cut), then more by
                                            excess correlation, each with its best
                                            partners, up to --max-pages in all
  RUN/report/compare/<model>/L<l>.<n>.html  a neuron beside its best partner in each
                                            sibling model
  RUN/report/glossary.html                  the definition of every statistic shown

Stages that did not run show as "not computed". See docs/report.md.

examples:
  universal-neurons report --out runs/default
  universal-neurons report runs/default --top-n 500 --neuron L3.17 --neuron tiny-gpt2-b:L1.5
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.report.build import ReportConfig
    from universal_neurons.stages.report import ReportStageConfig

    d = ReportConfig()
    add_config_options(p, ReportStageConfig, run_positional=True)
    p.add_argument("--top-n", type=int, default=d.top_n,
                   help=f"neuron pages for the top N neurons by excess correlation (default {d.top_n})")
    p.add_argument("--max-pages", type=int, default=d.max_pages,
                   help="neuron pages in the whole report (all models), filled by excess "
                        "correlation up to this many; given, universal, named and top-N "
                        f"neurons always get one (default {d.max_pages})")
    p.add_argument("--neuron", action="append", default=[], metavar="[MODEL:]L<l>.<n>",
                   help="also give this neuron a page (repeatable)")
    p.add_argument("--examples", type=int, default=d.max_examples,
                   help=f"top activating examples per neuron page (default {d.max_examples})")
    p.add_argument("--context", type=int, default=d.context_before,
                   help="tokens of context before an example's token, at most the recorded "
                        f"window (7) for stats files of version 2 (default {d.context_before})")


def _settings(args: argparse.Namespace) -> Any:
    from universal_neurons.errors import UserError
    from universal_neurons.report.build import ReportConfig

    given = {field: getattr(args, option) for option, field in _SETTINGS.items()
             if hasattr(args, option)}
    if "neurons" in given:
        given["neurons"] = tuple(given["neurons"])
    try:
        return ReportConfig(**given)
    except ValueError as e:
        raise UserError(str(e)) from None


_SETTINGS = {"top_n": "top_n", "max_pages": "max_pages", "neuron": "neurons",
             "examples": "max_examples", "context": "context_before"}
"""Report option -> ReportConfig field."""


def config_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The ReportStageConfig fields set by the given options (``run``'s per-stage extras)."""
    given = {k: v for k, v in vars(args).items() if k not in _SETTINGS}
    if set(_SETTINGS) & set(vars(args)):
        given["settings"] = _settings(args)
    return given


def run(args: argparse.Namespace) -> int:
    import sys

    from universal_neurons.options import config_from_args
    from universal_neurons.stages.report import ReportStageConfig, run_report

    if args._run_positional and args.out and args.out != args._run_positional:
        # the old spelling `report RUN --out DIR`: --out was the site's folder
        print("universal-neurons: `report RUN --out DIR` is deprecated, use "
              "`report --out RUN --report-dir DIR`", file=sys.stderr)
        args.report_dir, args.out = args.report_dir or args.out, None
    index = run_report(config_from_args(ReportStageConfig, args, settings=_settings(args)))
    print(f"report written to {index}")
    return 0
