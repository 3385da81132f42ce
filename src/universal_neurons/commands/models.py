"""``universal-neurons models``: the model names and suites this toolkit knows."""

from __future__ import annotations

import argparse
import json

NAME = "models"
HELP = "list model aliases, suites (models trained from several seeds) and the bundled suite"
DESCRIPTION = """\
List the names a model argument accepts besides Hugging Face ids (org/name),
ORG/NAME@REVISION (training checkpoints, e.g. EleutherAI/pythia-160m-seed1@step1000)
and local folders written by save_pretrained():

  aliases   TransformerLens names of the paper's models (stanford-gpt2-small-a, pythia-160m, ...)
  suites    several seeds of one model; a suite name expands to its members
  bundled   the small GPT-2 suite shipped with the package (works offline)

"available" says whether an alias is in the local Hugging Face cache (usable offline)
or whether a bundled model is built.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.add_argument("--no-cache-check", action="store_true",
                   help="do not look into the local Hugging Face cache")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.models.registry import (
        BUILD_HINT,
        BUNDLED_SUITE,
        list_models,
        list_suites,
    )

    rows = list_models(check_cache=not args.no_cache_check)
    suites = list_suites()
    if args.json:
        print(json.dumps({"models": rows, "suites": suites}, indent=2))
        return 0

    def mark(v: bool | None) -> str:
        return "-" if v is None else ("yes" if v else "no")

    bundled = [r for r in rows if r["kind"] == "bundled"]
    built = all(r["available"] for r in bundled)
    print(f"bundled suite {BUNDLED_SUITE!r}: " + ("built" if built else f"not built; {BUILD_HINT}"))
    for r in bundled:
        print(f"  {r['name']:<28} {'built' if r['available'] else 'missing':<8} {r['target']}")
    print("\nsuites:")
    for s in suites:
        print(f"  {s['suite']:<28} {', '.join(s['members'])}")
    print("\naliases:")
    width = max(len(r["name"]) for r in rows)
    print(f"  {'name':<{width}}  {'available':<9}  hub id")
    for r in rows:
        if r["kind"] == "alias":
            print(f"  {r['name']:<{width}}  {mark(r['available']):<9}  {r['target']}")
    return 0
