"""Candidate examples of every neuron, kept during the stats pass (exact and mergeable).

Per neuron, over the kept tokens of the pass:

- **top**: the ``top_k`` largest post-activations (value, sequence, position);
- **bottom**: the ``bottom_k`` smallest (most negative) post-activations;
- **sample**: a uniform random sample of ``sample_k`` tokens on which the post-activation is
  positive. Each token gets a fixed pseudo-random key :func:`token_key` of its
  ``(sequence, position)``; a neuron keeps its positive tokens of smallest key. The key does
  not depend on the activation, so the kept set is a uniform sample of the neuron's positive
  tokens, and since the key is a function of the token alone, merging two disjoint parts
  (in any order, on any number of ranks) gives the same sample as one pass. The report's
  quantile bands are estimated from it (``engine.example_windows``).

Ties may pick either token. ``seq = -1`` marks an empty slot (fewer tokens seen). Tokens
are packed as ``flat = seq * 2**20 + pos`` (positions below 2**20).
"""

from __future__ import annotations

import math
from typing import Any

import torch

POS_BITS = 20
"""``flat = seq << POS_BITS | pos``."""
_P = 2147483647  # 2**31 - 1, a prime: every intermediate product stays below 2**62
_NO_KEY = torch.iinfo(torch.int64).max


def token_key(flat: torch.Tensor) -> torch.Tensor:
    """``Long[...]`` a fixed pseudo-random key in ``[0, 2**31 - 1)`` of each packed token
    (multiplications modulo the prime 2**31 - 1 and xor-shifts; no overflow in int64)."""
    x = (flat % _P) * 48271 % _P
    x = (x + 1013904223) % _P
    x = x ^ (x >> 15)
    x = x * 69621 % _P
    x = x ^ (x >> 13)
    return x * 48271 % _P


def pack(seq: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``(seq, pos)`` -> ``flat`` (``-1`` stays ``-1``)."""
    return torch.where(seq < 0, -1, seq * (1 << POS_BITS) + pos)


def unpack(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``flat`` -> ``(seq, pos)``; empty slots give ``(-1, -1)``."""
    empty = flat < 0
    return (torch.where(empty, -1, flat >> POS_BITS),
            torch.where(empty, -1, flat & ((1 << POS_BITS) - 1)))


class ExampleCandidates:
    """Top, bottom and positive-sample candidates of ``n`` neurons (state ``[k, n]``)."""

    STATE = ("top_values", "top_flat", "bottom_values", "bottom_flat", "sample_values",
             "sample_flat")

    def __init__(self, n: int, top_k: int, bottom_k: int, sample_k: int, device: torch.device):
        self.n, self.top_k, self.bottom_k, self.sample_k = n, top_k, bottom_k, sample_k
        f32: dict[str, Any] = dict(dtype=torch.float32, device=device)
        i64: dict[str, Any] = dict(dtype=torch.int64, device=device)
        self.top_values = torch.full((top_k, n), -math.inf, **f32)
        self.top_flat = torch.full((top_k, n), -1, **i64)
        self.bottom_values = torch.full((bottom_k, n), math.inf, **f32)
        self.bottom_flat = torch.full((bottom_k, n), -1, **i64)
        self.sample_values = torch.full((sample_k, n), math.nan, **f32)
        self.sample_flat = torch.full((sample_k, n), -1, **i64)

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, k).numel() * getattr(self, k).element_size() for k in self.STATE)

    def scratch_nbytes(self, rows: int) -> int:
        """Temporaries of one update of ``rows`` tokens: the int64 keys and a gather."""
        return 2 * 8 * rows * self.n

    # ------------------------------------------------------------------ update
    def update(self, post: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor) -> None:
        """Add ``post: Float[rows, n]`` at tokens ``seq, pos: Long[rows]``."""
        if post.shape[0] == 0:
            return
        flat = pack(seq, pos)[:, None].expand(-1, self.n)
        self._merge_ranked("top", post, flat)
        self._merge_ranked("bottom", post, flat)
        key = torch.where(post > 0, token_key(flat[:, :1]), _NO_KEY)  # [rows, n]
        self._merge_sample(post, flat, key)

    def _merge_ranked(self, name: str, values: torch.Tensor, flat: torch.Tensor) -> None:
        k, largest = (self.top_k, True) if name == "top" else (self.bottom_k, False)
        v = torch.cat([getattr(self, f"{name}_values"), values])
        f = torch.cat([getattr(self, f"{name}_flat"), flat])
        idx = v.topk(k, dim=0, largest=largest).indices
        setattr(self, f"{name}_values", v.gather(0, idx))
        setattr(self, f"{name}_flat", f.gather(0, idx))

    def _merge_sample(self, values: torch.Tensor, flat: torch.Tensor, key: torch.Tensor) -> None:
        own = torch.where(self.sample_flat >= 0, token_key(self.sample_flat), _NO_KEY)
        k = torch.cat([own, key])
        idx = k.topk(self.sample_k, dim=0, largest=False).indices
        keep = k.gather(0, idx) != _NO_KEY
        v = torch.cat([self.sample_values, values]).gather(0, idx)
        f = torch.cat([self.sample_flat, flat]).gather(0, idx)
        self.sample_values = torch.where(keep, v, math.nan)
        self.sample_flat = torch.where(keep, f, -1)

    # ------------------------------------------------------------------ merge / state
    def merge(self, o: dict[str, torch.Tensor]) -> None:
        """Add another part's :meth:`state_dict` (disjoint tokens)."""
        for name in ("top", "bottom"):
            self._merge_ranked(name, o[f"{name}_values"], o[f"{name}_flat"])
        key = torch.where(o["sample_flat"] >= 0, token_key(o["sample_flat"]), _NO_KEY)
        self._merge_sample(o["sample_values"], o["sample_flat"], key)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k).cpu() for k in self.STATE}

    def load_state_dict(self, state: dict[str, torch.Tensor], device: torch.device) -> bool:
        """Load what ``state`` holds; False when it lacks the bottom/sample candidates (a
        checkpoint of an older version: they then cover only later tokens)."""
        if "top_flat" not in state and "top_seq" in state:  # older layout
            self.top_values = state["top_values"].to(device).clone()
            self.top_flat = pack(state["top_seq"], state["top_pos"]).to(device)
            return False
        for k in self.STATE:
            if k not in state:
                return False
            setattr(self, k, state[k].to(device).clone())
        return True

    def arrays(self) -> dict[str, torch.Tensor]:
        """``{top,bottom,sample}_{values,seq,pos}`` as ``[n, k]`` tensors (CPU); top sorted by
        decreasing value, bottom by increasing value, sample by increasing key."""
        out = {}
        for name in ("top", "bottom", "sample"):
            seq, pos = unpack(getattr(self, f"{name}_flat"))
            out[f"{name}_values"] = getattr(self, f"{name}_values").T.contiguous().cpu()
            out[f"{name}_seq"] = seq.T.contiguous().cpu()
            out[f"{name}_pos"] = pos.T.contiguous().cpu()
        return out
