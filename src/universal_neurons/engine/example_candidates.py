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
        """Temporaries of one update of ``rows`` tokens (the dense path: float64 scores of
        ``k + rows`` rows, a boolean mask, gathered values)."""
        return 3 * 8 * rows * self.n

    # ------------------------------------------------------------------ update
    def update(self, post: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor) -> None:
        """Add ``post: Float[rows, n]`` at tokens ``seq, pos: Long[rows]``."""
        if post.shape[0] == 0:
            return
        flat = pack(seq, pos)  # [rows]
        self._merge("top", post, flat)
        self._merge("bottom", post, flat)
        self._merge("sample", post, flat)

    def _score(self, name: str, values: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """What each kind keeps the ``k`` largest of (float64; -inf = not eligible): the
        value (top), minus the value (bottom), minus the key of a positive token (sample)."""
        v = values.double()
        if name == "top":
            return v
        if name == "bottom":
            return -v
        key = token_key(flat).double()
        return torch.where((v > 0) & (flat >= 0), -key, -math.inf)

    def _merge(self, name: str, values: torch.Tensor, flat: torch.Tensor) -> None:
        """Merge candidates ``values: [rows, n]`` at tokens ``flat: Long[rows]`` (or
        ``[rows, n]``) into ``name``'s ``k`` best per neuron. Only entries that beat the
        current k-th best are sorted (few after the first batches); when many do, one
        dense ``topk``."""
        cur_v, cur_f = getattr(self, f"{name}_values"), getattr(self, f"{name}_flat")
        k, n = cur_v.shape
        cur_s = self._score(name, cur_v, cur_f)  # [k, n]
        thr = cur_s.min(0).values  # [n]
        per_row = flat.dim() == 1
        if name == "sample":  # the key is per token: no [rows, n] score is built
            key = token_key(flat).double()
            new_key = -(key[:, None] if per_row else key)
            mask = (values > 0) & (new_key > thr)
        else:
            mask = (values > thr) if name == "top" else (values < -thr)
        r, c = mask.nonzero(as_tuple=True)
        if r.numel() == 0:
            return
        new_f = flat[r] if per_row else flat[r, c]
        new_v = values[r, c]
        if r.numel() > values.numel() // 4:  # dense: one topk over all rows
            full_f = flat[:, None].expand(-1, n) if per_row else flat
            s = torch.cat([cur_s, self._score(name, values, full_f)])
            idx = s.topk(k, dim=0).indices
            keep = s.gather(0, idx) > -math.inf
            v = torch.cat([cur_v, values.to(cur_v.dtype)]).gather(0, idx)
            f = torch.cat([cur_f, full_f]).gather(0, idx)
        else:
            col = torch.cat([torch.arange(n, device=cur_v.device).repeat(k), c])
            score = torch.cat([cur_s.flatten(), self._score(name, new_v, new_f)])
            order = torch.argsort(score, descending=True, stable=True)
            order = order[torch.argsort(col[order], stable=True)]  # by neuron, best first
            counts = torch.bincount(col, minlength=n)  # >= k each
            take = order[(torch.cumsum(counts, 0) - counts)[None, :]
                         + torch.arange(k, device=col.device)[:, None]]  # [k, n]
            keep = score[take] > -math.inf
            v = torch.cat([cur_v.flatten(), new_v.to(cur_v.dtype)])[take]
            f = torch.cat([cur_f.flatten(), new_f])[take]
        empty = {"top": -math.inf, "bottom": math.inf, "sample": math.nan}[name]
        setattr(self, f"{name}_values", torch.where(keep, v, empty))
        setattr(self, f"{name}_flat", torch.where(keep, f, -1))

    # ------------------------------------------------------------------ merge / state
    def merge(self, o: dict[str, torch.Tensor]) -> None:
        """Add another part's :meth:`state_dict` (disjoint tokens)."""
        for name in ("top", "bottom", "sample"):
            v = o[f"{name}_values"].to(getattr(self, f"{name}_values").device)
            self._merge(name, v, o[f"{name}_flat"].to(v.device))

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
