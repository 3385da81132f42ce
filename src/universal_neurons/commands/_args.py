"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse

from universal_neurons.options import count

__all__ = ["count", "threshold"]


def threshold(text: str) -> float:
    """An excess-correlation threshold: a finite number in (0, 1] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad threshold {text!r}: expected a number in "
                                         "(0, 1], e.g. 0.5") from None
    if not 0 < value <= 1:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"threshold must be in (0, 1] (a correlation "
                                         f"difference), got {text!r}; e.g. 0.5")
    return value
