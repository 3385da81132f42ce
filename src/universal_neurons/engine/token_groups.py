"""What the token-table accumulator produces, and its size.

:class:`RowLabels` (per-row labels of several schemes, the input), :class:`GroupTable` and
:class:`TokenTable` (the finalised per-group sums, the output of
:class:`~universal_neurons.engine.token_table.TokenTableAccumulator`), and the memory plan:
:func:`token_table_bytes`, :func:`plan_neuron_tiles`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from universal_neurons.errors import UserError

TOKEN_KEYS = ("current", "previous")


@dataclass(frozen=True)
class RowLabels:
    """Categorical labels of every position of a token dataset, one column per scheme.

    ``codes[seq, pos, s]`` is the label index of that token under scheme ``s``
    (``labels[s][code]``); code 0 is the scheme's "rest" label (NONE / False / outside).
    """

    codes: np.ndarray  # [n_seq, n_ctx, n_schemes] uint8
    schemes: tuple[str, ...]
    labels: tuple[tuple[str, ...], ...]

    def __post_init__(self) -> None:
        if self.codes.ndim != 3 or self.codes.shape[2] != len(self.schemes):
            raise ValueError(f"codes must be [n_seq, n_ctx, {len(self.schemes)}], "
                             f"got {list(self.codes.shape)}")
        if len(self.labels) != len(self.schemes):
            raise ValueError(f"{len(self.labels)} label lists for {len(self.schemes)} schemes")

    @property
    def n_groups(self) -> int:
        return sum(len(lab) for lab in self.labels)

    def lookup(self, seq_index: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``Long[n, n_schemes]`` codes of the rows at ``(seq_index, positions)``."""
        s, p = seq_index.cpu().numpy(), positions.cpu().numpy()
        if s.size and (s.max() >= self.codes.shape[0] or p.max() >= self.codes.shape[1]):
            raise UserError(f"row labels cover {self.codes.shape[0]} sequences x "
                            f"{self.codes.shape[1]} positions but a batch asks for sequence "
                            f"{int(s.max())}, position {int(p.max())}; compute the sequence "
                            "features on the dataset being streamed")
        return torch.from_numpy(np.asarray(self.codes[s, p], dtype=np.int64))


@dataclass
class GroupTable:
    """Finalised sums of one key. ``sum``/``sumsq`` are of ``a − shift``."""

    count: torch.Tensor  # [G] int64
    sum: torch.Tensor  # [G, N] float64
    sumsq: torch.Tensor  # [G, N] float64
    max: torch.Tensor | None = None  # [G, N] float32, -inf where count == 0
    fire: torch.Tensor | None = None  # [G, N] float64, rows with a > 0


@dataclass
class TokenTable:
    """What :meth:`TokenTableAccumulator.finalize` returns."""

    model: str
    neurons: torch.Tensor  # [N] flat neuron indices (layer * d_mlp + neuron)
    shift: torch.Tensor  # [N] float64
    n_rows: int
    total_sum: torch.Tensor  # [N] Σ(a − shift) over all rows
    total_sumsq: torch.Tensor  # [N]
    current: GroupTable  # groups = token ids [V]
    previous: GroupTable  # groups = previous token ids [V]; position-0 rows excluded
    sequence: dict[str, GroupTable]  # scheme -> groups = its labels
    scheme_labels: dict[str, tuple[str, ...]]

    def group_mean(self, table: GroupTable) -> torch.Tensor:
        """``[G, N]`` mean activation per group (NaN for empty groups)."""
        c = table.count.to(torch.float64).unsqueeze(1)
        return table.sum / c + self.shift

    @property
    def mean(self) -> torch.Tensor:
        return self.total_sum / self.n_rows + self.shift

    @property
    def var(self) -> torch.Tensor:
        """``[N]`` population variance over all rows."""
        m = self.total_sum / self.n_rows
        return self.total_sumsq / self.n_rows - m * m


def token_table_bytes(n_vocab: int, n_neurons: int, track_max: bool = True,
                      n_label_groups: int = 0) -> int:
    """Bytes the tables of :class:`TokenTableAccumulator` hold (state, not per-batch scratch)."""
    per_cell = 8 + 8 + (4 if track_max else 0)
    return (len(TOKEN_KEYS) * n_vocab * per_cell + n_label_groups * 24) * n_neurons


def plan_neuron_tiles(n_vocab: int, n_neurons: int, budget_bytes: int, track_max: bool = True,
                      n_label_groups: int = 0) -> list[slice]:
    """Split ``n_neurons`` into the fewest equal tiles whose tables fit ``budget_bytes``.

    Each tile costs one more pass over the data; raises ``UserError`` if even one neuron
    does not fit.
    """
    per_neuron = token_table_bytes(n_vocab, 1, track_max, n_label_groups)
    fit = budget_bytes // per_neuron
    if fit < 1:
        raise UserError(f"the token table needs {gib(per_neuron)} per neuron (vocab {n_vocab:,}) "
                        f"but the memory budget is {gib(budget_bytes)}; raise --max-memory")
    n_tiles = math.ceil(n_neurons / fit)
    size = math.ceil(n_neurons / n_tiles)
    return [slice(i, min(i + size, n_neurons)) for i in range(0, n_neurons, size)]


def gib(n: float) -> str:
    """``n`` bytes as GiB with two decimals."""
    return f"{n / 2**30:.2f} GiB"
