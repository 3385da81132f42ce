"""Subcommands of the ``universal-neurons`` console script.

Each module listed in ``COMMANDS`` defines ``NAME`` (the subcommand), ``HELP`` (one line),
optionally ``DESCRIPTION`` (shown by ``--help``), ``add_arguments(parser)`` and
``run(args) -> int``. All of them are imported to build the parser, so a command module
imports nothing heavy (torch, transformers, pandas) at module level: it imports the
library inside ``run``. A module added to this package is a command; ``_ORDER`` only sets
the order of ``--help``.
"""

import pkgutil

_ORDER: list[str] = [
    "universal_neurons.commands.run",
    "universal_neurons.commands.models",
    "universal_neurons.commands.tokenize",
    "universal_neurons.commands.correlate",
    "universal_neurons.commands.plan",
    "universal_neurons.commands.weights",
    "universal_neurons.commands.stats",
    "universal_neurons.commands.properties",
    "universal_neurons.commands.explain",
    "universal_neurons.commands.families",
    "universal_neurons.commands.zoo",
    "universal_neurons.commands.report",
    "universal_neurons.commands.entropy",
    "universal_neurons.commands.attention",
    "universal_neurons.commands.paper",
    "universal_neurons.commands.paper_results",
    "universal_neurons.commands.trajectory",
]
"""The order of the commands in ``--help``."""

COMMANDS: list[str] = _ORDER + sorted(
    f"{__name__}.{m.name}" for m in pkgutil.iter_modules(__path__)
    if not m.name.startswith("_") and f"{__name__}.{m.name}" not in _ORDER)
"""Every command module: those in ``_ORDER``, then any other module of this package (a new
command needs no entry here)."""
