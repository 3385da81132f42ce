"""Activations of a few neurons with their token context, and per-group moments of all.

:class:`NeuronSamples` keeps, for every kept token of one model, the activation of a
chosen set of neurons, the token, the next token in its window (-1 at the last position)
and, when the tokens carry group labels (e.g. corpus sources), the count, sum and sum of
squares of every neuron's activation per group (float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from universal_neurons.engine.batch import ActivationBatch

ROWS = 1024
"""Rows folded into the group moments at once."""


class NeuronSamples:
    """Accumulator (``engine.accumulator.Accumulator``) of one model's ``site`` activations.

    ``tokens``: the dataset's ``[n_seq, n_ctx]`` token array (for next tokens); ``neurons``:
    flat indices ``layer * d_mlp + neuron`` kept per token; ``groups``: ``Int[n_seq,
    n_ctx]`` labels in ``[0, n_groups)`` (negative = no group) or None; ``n_neurons``: all
    neurons of the model (``layers * d_mlp``).
    """

    def __init__(self, model: str, tokens: Any, neurons: Sequence[int], n_neurons: int,
                 groups: np.ndarray | None = None, n_groups: int = 0, site: str = "post"):
        self.model, self.tokens, self.site = model, tokens, site
        self.sites: tuple[str, ...] = (site,)
        self.neurons = torch.as_tensor(list(neurons), dtype=torch.long)
        self.groups, self.n_groups = groups, n_groups if groups is not None else 0
        self.acts: list[torch.Tensor] = []
        self.token_ids: list[torch.Tensor] = []
        self.next_ids: list[torch.Tensor] = []
        self.count = torch.zeros(self.n_groups, dtype=torch.float64)
        self.total = torch.zeros(self.n_groups, n_neurons, dtype=torch.float64)
        self.squares = torch.zeros(self.n_groups, n_neurons, dtype=torch.float64)

    def update(self, batch: ActivationBatch) -> None:
        acts = batch.acts[self.model][self.site]  # [n, L * d_mlp]
        seq, pos = batch.seq_index.numpy(), batch.positions.numpy()
        n_ctx = int(self.tokens.shape[1])
        nxt = np.full(len(seq), -1, dtype=np.int64)
        inside = pos + 1 < n_ctx
        nxt[inside] = np.asarray(self.tokens[seq[inside], pos[inside] + 1], dtype=np.int64)
        if len(self.neurons):
            self.acts.append(acts[:, self.neurons.to(acts.device)].float().cpu().clone())
        self.token_ids.append(batch.token_ids.clone())
        self.next_ids.append(torch.from_numpy(nxt))
        if self.groups is not None:
            self._add_moments(acts, np.asarray(self.groups[seq, pos], dtype=np.int64))

    def _add_moments(self, acts: torch.Tensor, groups: np.ndarray) -> None:
        """Fold ``acts: [n, N]`` into the per-group sums, on the activations' device, in
        float64 and in chunks of ``ROWS`` rows (a bounded temporary)."""
        dev = acts.device
        if self.total.device != dev:
            self.count, self.total, self.squares = (t.to(dev) for t in
                                                    (self.count, self.total, self.squares))
        g = torch.from_numpy(groups).to(dev)
        for lo in range(0, len(groups), ROWS):
            gi = g[lo: lo + ROWS]
            ok = gi >= 0
            a = acts[lo: lo + ROWS][ok].double()
            gi = gi[ok]
            self.count += torch.bincount(gi, minlength=self.n_groups).double()
            self.total.index_add_(0, gi, a)
            self.squares.index_add_(0, gi, a * a)

    def merge(self, other: NeuronSamples) -> None:
        self.acts += other.acts
        self.token_ids += other.token_ids
        self.next_ids += other.next_ids
        self.count += other.count.to(self.count.device)
        self.total += other.total.to(self.total.device)
        self.squares += other.squares.to(self.squares.device)

    def finalize(self) -> dict[str, np.ndarray]:
        """``acts [rows, k]``, ``token_ids, next_ids [rows]``, ``count [g]``,
        ``total, squares [g, n_neurons]``."""
        k = len(self.neurons)
        return {
            "acts": (torch.cat(self.acts).numpy() if self.acts
                     else np.zeros((sum(len(t) for t in self.token_ids), k), np.float32)),
            "token_ids": torch.cat(self.token_ids).numpy() if self.token_ids else np.zeros(0, int),
            "next_ids": torch.cat(self.next_ids).numpy() if self.next_ids else np.zeros(0, int),
            "count": self.count.cpu().numpy(), "total": self.total.cpu().numpy(),
            "squares": self.squares.cpu().numpy()}

    def state_dict(self) -> dict[str, Any]:
        return {"acts": self.acts, "token_ids": self.token_ids, "next_ids": self.next_ids,
                "count": self.count, "total": self.total, "squares": self.squares}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)
