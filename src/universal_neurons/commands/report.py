"""``universal-neurons report``: the static HTML report and neuron browser of a run."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "write RUN/report/index.html: summary, figures, claims and a neuron browser"
DESCRIPTION = """\
Build a self-contained static site from a run directory (opens from disk, no server):

  RUN/report/index.html                     summary (% universal vs the paper), figures,
                                            claims, families, entropy, attention
  RUN/report/browser-<model>.html           searchable, sortable table of every neuron
  RUN/report/neurons/<model>/L<l>.<n>.html  pages for any --neuron given, universal
                                            neurons, neurons named on the front page and
                                            the top --top-n by excess correlation (never
                                            cut), then more by excess correlation up to
                                            --max-pages

Stages that did not run show as "not computed". See docs/report.md.

examples:
  universal-neurons report runs/default
  universal-neurons report runs/default --top-n 500 --neuron L3.17 --neuron tiny-gpt2-b:L1.5
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.report.build import ReportConfig

    d = ReportConfig()
    p.add_argument("run_dir", metavar="RUN", help="run directory (the --out of earlier stages)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write the site (default RUN/report)")
    p.add_argument("--top-n", type=int, default=d.top_n,
                   help=f"neuron pages for the top N neurons by excess correlation (default {d.top_n})")
    p.add_argument("--max-pages", type=int, default=d.max_pages,
                   help="pages per model filled by excess correlation up to this many; "
                        "given, universal, front-page and top-N neurons always get one "
                        f"(default {d.max_pages})")
    p.add_argument("--neuron", action="append", default=[], metavar="[MODEL:]L<l>.<n>",
                   help="also give this neuron a page (repeatable)")
    p.add_argument("--examples", type=int, default=d.max_examples,
                   help=f"top activating examples per neuron page (default {d.max_examples})")
    p.add_argument("--context", type=int, default=d.context_before,
                   help="tokens of context before an example's token, at most the recorded "
                        f"window (7) for stats files of version 2 (default {d.context_before})")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.errors import UserError
    from universal_neurons.report.build import ReportConfig, build_report

    try:
        config = ReportConfig(top_n=args.top_n, max_pages=args.max_pages,
                              neurons=tuple(args.neuron), max_examples=args.examples,
                              context_before=args.context)
    except ValueError as e:
        raise UserError(str(e)) from None
    progress = None
    if not args.quiet:
        from tqdm.auto import tqdm

        def progress(jobs):
            return tqdm(jobs, desc="neuron pages", unit="page")
    index = build_report(args.run_dir, args.out, config, progress=progress)
    print(f"report written to {index}")
    return 0
