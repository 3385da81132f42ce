"""Argument types shared by the subcommands."""

from __future__ import annotations

import argparse


def count(text: str) -> int:
    """A token count such as ``500000``, ``500k``, ``10M`` or ``1B`` (argparse type)."""
    from universal_neurons.data.dataset import parse_count

    try:
        return parse_count(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
