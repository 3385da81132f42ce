"""``universal-neurons paper``: index every result of the paper on a run."""

from __future__ import annotations

import argparse

NAME = "paper"
HELP = "write RUN/paper/index.json and index.md: each result of the paper, its files and value"
DESCRIPTION = """\
Read what the other stages wrote into a run directory and list every result of the paper
(Gurnee et al. 2024), one entry each: its id, where it is in the paper, the paper's value
or a description, the command that produces it, its files (relative to RUN) and its value
on this run; a result that cannot be computed on the run says why ("needs >= 10
universal neurons", "stage entropy skipped", "entropy/sweep.parquet missing"). Writes
  RUN/paper/index.json   {"results": [{"id", "paper", "command", "status", "files",
                          "value", "text", "selection", "reason", ...}, ...]}
  RUN/paper/index.md     the same as a Markdown table
Computes nothing itself; `run` runs it after the other stages, before `report`, whose
front page links it. The ids and the paper's values are listed in docs/paper.md.

examples:
  universal-neurons paper --out runs/default
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.paper import PaperConfig

    add_config_options(p, PaperConfig, run_positional=True)


def run(args: argparse.Namespace) -> int:
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.paper import PaperConfig, run_paper

    config = config_from_args(PaperConfig, args)
    res = run_paper(config)
    for e in res.entries:
        shown = e["text"] if e["status"] == "computed" else f"not computed: {e['reason']}"
        print(f"{e['id']:>24}: {shown}")
    print(f"{res.computed} of {len(res.entries)} results computed; wrote "
          f"{', '.join(res.files)} under {config.out}")
    return 0
