"""What the engine hands to every accumulator for one batch of tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ActivationBatch:
    """Activations of every model on the kept tokens of one batch.

    ``acts[model][site]`` is ``Float[n_kept, layers * d_mlp]`` (float32, neuron index
    ``layer * d_mlp + neuron``), for ``site`` in ``{"post", "pre"}`` (only the sites the
    accumulators asked for). Tokens dropped by the keep mask (BOS/pad, newlines by default)
    are absent from every tensor; the token tensors below say where each kept row came from.
    """

    acts: dict[str, dict[str, torch.Tensor]]
    token_ids: torch.Tensor
    """``Long[n_kept]`` the token at each kept position."""
    prev_token_ids: torch.Tensor
    """``Long[n_kept]`` the previous token in the same sequence (``-1`` at position 0)."""
    positions: torch.Tensor
    """``Long[n_kept]`` position within the context window."""
    seq_index: torch.Tensor
    """``Long[n_kept]`` index of the sequence in the token dataset."""

    @property
    def n(self) -> int:
        return int(self.token_ids.shape[0])

    def rows(self, lo: int, hi: int) -> ActivationBatch:
        """The kept rows ``lo:hi`` of every tensor (views, no copies)."""
        return ActivationBatch({m: {s: t[lo:hi] for s, t in sites.items()}
                                for m, sites in self.acts.items()},
                               self.token_ids[lo:hi], self.prev_token_ids[lo:hi],
                               self.positions[lo:hi], self.seq_index[lo:hi])
