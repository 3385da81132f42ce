"""The families' per-token table over the most frequent token ids of a dataset.

:func:`frequent_token_ids` picks them from the token array before the pass,
:func:`plan_token_table` how many fit a byte budget, and :class:`FrequentTokens` keeps a
:class:`~universal_neurons.engine.token_table.TokenTableAccumulator` over ids remapped to
``0..T-1`` (every other id pooled in group ``T``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.token_table import TokenTableAccumulator, token_table_bytes


def plan_token_table(n_neurons: int, budget_bytes: int, n_wanted: int, d_vocab: int) -> int:
    """The most token ids (<= ``n_wanted``) whose table over ``n_neurons`` fits the budget.

    Per group (``T`` ids + 1 pooled): the families' tables plus two int64 counts and the id;
    fixed: a few ``[N]`` float64/int64 vectors (shift, totals, neuron ids; 6 allowed) and
    an int64 id -> group lookup over the vocabulary.
    """
    per_group = token_table_bytes(1, n_neurons) + 24
    fixed = 48 * n_neurons + 8 * d_vocab
    return max(0, min(int(n_wanted), (int(budget_bytes) - fixed) // per_group - 1))


def empty_token_arrays(t: int, shape: tuple[int, int]) -> dict[str, np.ndarray]:
    return dict(token_count=np.zeros(t, np.int64), token_mean=np.full((t, *shape), np.nan),
                token_max=np.full((t, *shape), -np.inf, np.float32),
                prev_token_count=np.zeros(t, np.int64),
                prev_token_mean=np.full((t, *shape), np.nan))


class FrequentTokens:
    """The families' token table over ``token_ids`` only (other ids pooled in group ``T``)."""

    def __init__(self, model: str, token_ids: torch.Tensor, n_neurons: int, device: torch.device):
        self.token_ids = token_ids.cpu()
        t = token_ids.numel()
        self.slot = torch.full((int(token_ids.max()) + 1,), t, dtype=torch.int64, device=device)
        self.slot[token_ids.to(device)] = torch.arange(t, device=device)
        self.table = TokenTableAccumulator(model, t + 1, n_neurons, site="post",
                                           compute_dtype=torch.float64, table_device=str(device))

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor this table holds (its state dict, the lookup and the ids)."""
        def size(v: Any) -> int:
            if torch.is_tensor(v):
                return v.numel() * v.element_size()
            if isinstance(v, dict):
                return sum(size(x) for x in v.values())
            return sum(size(x) for x in v) if isinstance(v, (list, tuple)) else 0

        return size(self.slot) + size(self.token_ids) + size(self.table.state_dict())

    def remap(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.slot.device)
        known = (ids >= 0) & (ids < self.slot.numel())
        out = torch.where(ids < 0, -1, self.token_ids.numel())
        return torch.where(known, self.slot[ids.clamp(0, self.slot.numel() - 1)], out)

    def update(self, batch: ActivationBatch) -> None:
        self.table.update(replace(batch, token_ids=self.remap(batch.token_ids),
                                  prev_token_ids=self.remap(batch.prev_token_ids)))

    def finalize(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        t = self.token_ids.numel()
        if self.table.n_rows == 0:
            return empty_token_arrays(t, shape)
        tab = self.table.finalize()

        def per_token(x: torch.Tensor) -> np.ndarray:  # [T + 1, N] -> [T, L, d_mlp]
            return x[:t].cpu().numpy().reshape(t, *shape)

        assert tab.current.max is not None  # the table tracks maxima
        return dict(token_count=tab.current.count[:t].cpu().numpy(),
                    token_mean=per_token(tab.group_mean(tab.current)),
                    token_max=per_token(tab.current.max),
                    prev_token_count=tab.previous.count[:t].cpu().numpy(),
                    prev_token_mean=per_token(tab.group_mean(tab.previous)))


def frequent_token_ids(tokens: np.ndarray, n: int,
                       keep: np.ndarray | Callable[[np.ndarray], np.ndarray] | None = None,
                       chunk_rows: int = 4096) -> np.ndarray:
    """The ``n`` most frequent ids of ``tokens [n_seq, n_ctx]`` at kept positions.

    ``keep`` is a ``Bool[n_seq, n_ctx]`` mask or a function of a row chunk giving its mask
    (e.g. ``lambda t: keep_mask(t, tokenizer)``). Streams the (possibly memory-mapped)
    array in row chunks; ties go to the smaller id.
    """
    counts = np.zeros(0, dtype=np.int64)
    for s in range(0, tokens.shape[0], chunk_rows):
        t = np.asarray(tokens[s:s + chunk_rows])
        if keep is not None:
            t = t[keep(t) if callable(keep) else np.asarray(keep[s:s + chunk_rows])]
        c = np.bincount(t.ravel().astype(np.int64), minlength=counts.size)
        c[:counts.size] += counts
        counts = c
    order = np.lexsort((np.arange(counts.size), -counts))
    order = order[counts[order] > 0]
    return order[:n].astype(np.int64)
