"""What every figure module shares: a matplotlib ``Figure`` (a one-line error naming the
``plot`` extra when matplotlib is missing), an atomic PNG write, and a colour cycle."""

from __future__ import annotations

import os
from typing import Any

from universal_neurons.errors import UserError


def new_figure(**kw: Any) -> Any:
    """A ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("plots need matplotlib: pip install 'universal-neurons[plot]' "
                        "(or pass --no-plots)") from None
    return Figure(**kw)


def save_png(fig: Any, path: str | os.PathLike) -> None:
    """Lay out ``fig`` and write it as a 120-dpi PNG, atomically."""
    from universal_neurons.rundir import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def colors(n: int) -> list:
    """``n`` colours of matplotlib's ``tab10`` cycle."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]
