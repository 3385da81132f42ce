"""Shapes of the models a run compares and how their neurons are laid out side by side.

Every model's neurons are flattened ``layer * d_mlp + neuron`` (as in
:class:`~universal_neurons.engine.batch.ActivationBatch`), and the models are concatenated
in run order into one ``[rows, sum N_m]`` matrix, so that every set of partners a cross
block needs is one contiguous column slice (one GEMM per block and batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Mode = Literal["reference", "all-pairs"]


@dataclass(frozen=True)
class ModelShape:
    """Name and MLP shape of one model."""

    name: str
    n_layers: int
    d_mlp: int

    def __post_init__(self) -> None:
        if self.n_layers < 1 or self.d_mlp < 1:
            raise ValueError(f"model {self.name!r}: n_layers={self.n_layers} and "
                             f"d_mlp={self.d_mlp} must be positive")

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_mlp


@dataclass(frozen=True)
class CrossBlock:
    """Cross co-moments of layers ``[layer_start, layer_stop)`` of model ``row`` against the
    models ``col_start .. col_stop - 1`` (model indices; contiguous in the layout).

    A *column tile* narrows the columns to whole partner layers: they start at layer
    ``col_layer_start`` of model ``col_start`` and stop before layer ``col_layer_stop`` of
    model ``col_stop - 1`` (None: after its last layer). The finest tile is one layer
    against one partner layer; both baselines stay computable from it (each rotation
    needs whole layers on its side only)."""

    row: int
    layer_start: int
    layer_stop: int
    col_start: int
    col_stop: int
    col_layer_start: int = 0
    col_layer_stop: int | None = None

    @property
    def partners(self) -> range:
        return range(self.col_start, self.col_stop)

    def to_list(self) -> list[int | None]:
        return [self.row, self.layer_start, self.layer_stop, self.col_start, self.col_stop,
                self.col_layer_start, self.col_layer_stop]


class Layout:
    """Column offsets of each model in the concatenated neuron axis."""

    def __init__(self, shapes: Sequence[ModelShape]):
        if len({s.name for s in shapes}) != len(shapes):
            raise ValueError(f"model names must be distinct, got {[s.name for s in shapes]}")
        self.shapes = tuple(shapes)
        self.offsets: list[int] = []
        total = 0
        for s in shapes:
            self.offsets.append(total)
            total += s.n_neurons
        self.total = total

    def __len__(self) -> int:
        return len(self.shapes)

    def cols(self, model: int) -> slice:
        """Columns of ``model``'s neurons."""
        return slice(self.offsets[model], self.offsets[model] + self.shapes[model].n_neurons)

    def layer_cols(self, model: int, start: int, stop: int | None = None) -> slice:
        """Columns of layers ``[start, stop)`` of ``model`` (one layer if ``stop`` is None)."""
        stop = start + 1 if stop is None else stop
        d = self.shapes[model].d_mlp
        return slice(self.offsets[model] + start * d, self.offsets[model] + stop * d)

    def block_rows(self, block: CrossBlock) -> slice:
        return self.layer_cols(block.row, block.layer_start, block.layer_stop)

    def block_cols(self, block: CrossBlock) -> slice:
        parts = self.block_partner_layers(block)
        first, last = parts[0], parts[-1]
        return slice(self.layer_cols(first[0], first[1]).start,
                     self.layer_cols(last[0], last[2] - 1).stop)

    def block_partner_layers(self, block: CrossBlock) -> list[tuple[int, int, int]]:
        """``(partner, layer_start, layer_stop)`` of every partner the block's columns cover."""
        out = []
        for b in block.partners:
            lo = block.col_layer_start if b == block.col_start else 0
            hi = self.shapes[b].n_layers
            if b == block.col_stop - 1 and block.col_layer_stop is not None:
                hi = block.col_layer_stop
            out.append((b, lo, hi))
        return out


def pairs_for(n_models: int, mode: Mode) -> list[tuple[int, int]]:
    """Unordered pairs ``(row, col)``, ``row < col``, whose cross moments a run needs."""
    if mode == "reference":
        return [(0, m) for m in range(1, n_models)]
    return [(a, b) for a in range(n_models) for b in range(a + 1, n_models)]


def partner_range(model: int, n_models: int, mode: Mode) -> range:
    """Models whose columns sit against ``model``'s rows (empty if it is never a row model)."""
    if mode == "reference":
        return range(1, n_models) if model == 0 else range(0)
    return range(model + 1, n_models)
