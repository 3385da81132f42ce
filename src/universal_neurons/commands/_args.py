"""Argument types shared by the subcommands (defined in :mod:`universal_neurons.options`)."""

from __future__ import annotations

from universal_neurons.options import count
from universal_neurons.options import threshold_arg as threshold

__all__ = ["count", "threshold"]
