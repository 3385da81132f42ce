"""Per-group activation sums in one pass: current token, previous token, row labels.

For every *group* of a *key* and every selected neuron the accumulator keeps

* ``count`` (rows in the group), ``Σ(a − K)`` and ``Σ(a − K)²`` in float64, where ``K`` is a
  per-neuron shift (the first batch's mean; it keeps the sums well conditioned and is
  converted exactly on merge);
* ``max a`` (float32, exact) for the token keys and the number of rows with ``a > 0``
  ("fires") for the label keys.

Keys: ``current`` (the token id at the row), ``previous`` (the previous token id of the
same sequence; rows at position 0 have none and are left out, so nothing leaks across
sequence boundaries) and, when :class:`RowLabels` are given, one key per labelling scheme
(spaCy POS, dependency, entity type, position bin, context flags, ...). A binary feature
that is a union of groups then has its group sums as one matrix product
(``analysis.explain``): exact, no second pass.

Kernel: per batch, the rows of the token keys form one sparse one-hot matrix
``H [groups, n]`` (CSR) and ``H @ [a − K, (a − K)²]`` gives every group's sums at once, on
the device the activations live on; only the compact ``[groups_in_batch, 2N]`` result is
added into the float64 tables. The label keys do the same with ``[a − K, (a − K)², a > 0]``.
Label code 0 of every scheme is implicit ("the rest"): it is not summed but derived in
:meth:`TokenTableAccumulator.finalize` as total − Σ other labels, which makes sparse flags
(in-quotes, in-entity) nearly free.

Memory (planned up front, see :func:`token_table_bytes`): two ``[vocab, N]`` float64 tables
(Σ, Σ²) and one float32 (max) per token key, i.e. ``2 · V · N · 20`` bytes with max tracked.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.token_groups import (
    TOKEN_KEYS,
    GroupTable,
    RowLabels,
    TokenTable,
    gib,
    plan_neuron_tiles,
    token_table_bytes,
)
from universal_neurons.errors import UserError

__all__ = ["TOKEN_KEYS", "GroupTable", "RowLabels", "TokenTable", "TokenTableAccumulator",
           "group_sums", "iter_array_batches", "plan_neuron_tiles", "token_table_bytes"]


class TokenTableAccumulator:
    """Accumulates :class:`TokenTable` for one model's selected neurons (see module doc).

    ``neurons``: flat indices into ``acts[model][site]`` (``layer * d_mlp + neuron``), None
    for all ``n_neurons_total``. ``compute_dtype`` is the dtype of the per-batch group sums
    (float32: fast, ~1e-7 relative per batch; float64: exact to rounding); tables are
    float64 either way. ``memory_budget_bytes`` refuses tables larger than that.
    """

    def __init__(self, model: str, n_vocab: int, n_neurons_total: int,
                 neurons: Sequence[int] | torch.Tensor | None = None,
                 row_labels: RowLabels | None = None, *, site: str = "post",
                 track_max: bool = True, compute_dtype: torch.dtype = torch.float32,
                 memory_budget_bytes: int | None = None, table_device: str = "cpu"):
        if n_vocab < 1 or n_neurons_total < 1:
            raise ValueError(f"n_vocab={n_vocab} and n_neurons_total={n_neurons_total} must be >= 1")
        idx = (torch.arange(n_neurons_total) if neurons is None
               else torch.as_tensor(neurons, dtype=torch.long).flatten())
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= n_neurons_total:
            raise ValueError(f"neuron indices must be a non-empty subset of [0, {n_neurons_total}), "
                             f"got {idx.numel()} indices spanning "
                             f"[{int(idx.min()) if idx.numel() else '-'}, "
                             f"{int(idx.max()) if idx.numel() else '-'}]")
        if compute_dtype not in (torch.float32, torch.float64):
            raise ValueError(f"compute_dtype must be float32 or float64, got {compute_dtype}")
        self.model, self.site, self.sites = model, site, (site,)
        self.n_vocab, self.n_neurons_total = int(n_vocab), int(n_neurons_total)
        self.neurons = idx
        self._select = neurons is not None
        self.row_labels = row_labels
        self.track_max, self.compute_dtype = track_max, compute_dtype
        self.device = torch.device(table_device)
        n = idx.numel()
        need = token_table_bytes(n_vocab, n, track_max, row_labels.n_groups if row_labels else 0)
        if memory_budget_bytes is not None and need > memory_budget_bytes:
            raise UserError(
                f"the token table for {n:,} neurons x vocab {n_vocab:,} needs {gib(need)}, over "
                f"the memory budget of {gib(memory_budget_bytes)}; explain fewer neurons "
                "(--neurons universal or a list), raise --max-memory, or let explain tile the "
                "neurons over several passes")
        self._schemes = row_labels.schemes if row_labels else ()
        self._scheme_sizes = [len(lab) for lab in row_labels.labels] if row_labels else []
        self.reset()

    # ---- state ------------------------------------------------------------------------
    def reset(self) -> None:
        n, V, dev, f64 = self.neurons.numel(), self.n_vocab, self.device, torch.float64
        self.shift: torch.Tensor | None = None
        self.n_rows = 0
        self.fire_total = torch.zeros(n, dtype=f64, device=dev)  # rows with a > 0 (labels only)
        self.count = {k: torch.zeros(V, dtype=torch.long, device=dev) for k in TOKEN_KEYS}
        self.sums = {k: torch.zeros(V, n, dtype=f64, device=dev) for k in TOKEN_KEYS}
        self.sumsq = {k: torch.zeros(V, n, dtype=f64, device=dev) for k in TOKEN_KEYS}
        self.maxes = ({k: torch.full((V, n), -math.inf, device=dev) for k in TOKEN_KEYS}
                      if self.track_max else {})
        G = sum(self._scheme_sizes)
        self.lab_count = torch.zeros(G, dtype=torch.long, device=dev)
        self.lab = torch.zeros(3, G, n, dtype=f64, device=dev)  # Σx, Σx², Σfire per label group

    # ---- update -----------------------------------------------------------------------
    def update(self, batch: ActivationBatch) -> None:
        acts = batch.acts[self.model][self.site]  # [n, layers * d_mlp]
        if acts.shape[1] != self.n_neurons_total:
            raise ValueError(f"batch has {acts.shape[1]} neurons for {self.model!r}, "
                             f"accumulator was built for {self.n_neurons_total}")
        if batch.n == 0:
            return
        dev = acts.device
        a = acts.index_select(1, self.neurons.to(dev)) if self._select else acts
        a = a.to(self.compute_dtype)  # [n, N]
        if self.shift is None:
            self.shift = a.double().mean(0).to(self.device)
        n, n_cols = a.shape
        labels = self.row_labels
        xs = torch.empty(n, (3 if labels is not None else 2) * n_cols, dtype=self.compute_dtype,
                         device=dev)  # [n, 2N or 3N]: a - K, (a - K)², (a > 0)
        x = xs[:, :n_cols]
        torch.sub(a, self.shift.to(dev, self.compute_dtype), out=x)
        torch.mul(x, x, out=xs[:, n_cols:2 * n_cols])

        cur = batch.token_ids.to(dev)
        prev = batch.prev_token_ids.to(dev)
        prev = torch.where(batch.positions.to(dev) > 0, prev, torch.full_like(prev, -1))
        if int(cur.max()) >= self.n_vocab or int(cur.min()) < 0:
            raise ValueError(f"token ids span [{int(cur.min())}, {int(cur.max())}] but the "
                             f"token table was built for a vocabulary of {self.n_vocab}")
        groups = group_sums([(cur, 1), (prev, 1)], xs[:, :2 * n_cols])
        for key, (u, r, c), ids in zip(TOKEN_KEYS, groups, (cur, prev)):
            ud = u.to(self.device)
            self.count[key].index_add_(0, ud, c.to(self.device))
            self.sums[key].index_add_(0, ud, r[:, :n_cols].to(self.device, torch.float64))
            self.sumsq[key].index_add_(0, ud, r[:, n_cols:2 * n_cols].to(self.device,
                                                                           torch.float64))
            if self.track_max and len(u):
                self._update_max(key, ids, a)
        if labels is not None:
            xs[:, 2 * n_cols:] = a > 0
            self.fire_total += xs[:, 2 * n_cols:].sum(0).to(self.device, torch.float64)
            codes = labels.lookup(batch.seq_index, batch.positions).to(dev)  # [n, S]
            offsets = torch.tensor(np.cumsum([0] + self._scheme_sizes[:-1]), device=dev)
            lab_keys = torch.where(codes > 0, codes + offsets, torch.full_like(codes, -1))
            ((u, r, c),) = group_sums([(lab_keys.flatten(), codes.shape[1])], xs)
            ud = u.to(self.device)
            self.lab_count.index_add_(0, ud, c.to(self.device))
            r = r.to(self.device, torch.float64).view(len(u), 3, n_cols).transpose(0, 1)
            self.lab.index_add_(1, ud, r)
        self.n_rows += n

    def _update_max(self, key: str, ids: torch.Tensor, a: torch.Tensor) -> None:
        valid = ids >= 0
        if not bool(valid.all()):
            ids, a = ids[valid], a[valid]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "index_reduce is in beta"
            if a.device == self.device:
                self.maxes[key].index_reduce_(0, ids, a.float(), "amax")
                return
            u, inv = torch.unique(ids, return_inverse=True)  # compact on the acts' device
            bm = torch.full((len(u), a.shape[1]), -math.inf, device=a.device)
            bm.index_reduce_(0, inv, a.float(), "amax")
        ud = u.to(self.device)
        self.maxes[key][ud] = torch.maximum(self.maxes[key][ud], bm.to(self.device))

    # ---- merge / checkpoint -----------------------------------------------------------
    def merge(self, other: TokenTableAccumulator) -> None:
        """Add ``other`` (same model, neurons, vocab and schemes; disjoint tokens), exactly."""
        if (other.model, other.n_vocab, other._schemes, other.track_max) != (
                self.model, self.n_vocab, self._schemes, self.track_max) or not torch.equal(
                other.neurons, self.neurons):
            raise ValueError("cannot merge token tables built for different models, neurons, "
                             "vocabularies or label schemes")
        if other.shift is None:
            return
        if self.shift is None:
            self.load_state_dict(other.state_dict())
            return
        d = (other.shift - self.shift).to(self.device)  # [N]: x_self = x_other + d

        def shifted(count: torch.Tensor, s: torch.Tensor, q: torch.Tensor):
            c = count.to(torch.float64).unsqueeze(-1).to(self.device)
            s, q = s.to(self.device), q.to(self.device)
            return s + c * d, q + 2 * d * s + c * d * d

        for k in TOKEN_KEYS:
            s, q = shifted(other.count[k], other.sums[k], other.sumsq[k])
            self.count[k] += other.count[k].to(self.device)
            self.sums[k] += s
            self.sumsq[k] += q
            if self.track_max:
                torch.maximum(self.maxes[k], other.maxes[k].to(self.device), out=self.maxes[k])
        self.fire_total += other.fire_total.to(self.device)
        s, q = shifted(other.lab_count, other.lab[0], other.lab[1])
        self.lab[0] += s
        self.lab[1] += q
        self.lab[2] += other.lab[2].to(self.device)
        self.lab_count += other.lab_count.to(self.device)
        self.n_rows += other.n_rows

    def state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {
            "model": self.model, "n_vocab": self.n_vocab, "n_neurons_total": self.n_neurons_total,
            "neurons": self.neurons, "schemes": list(self._schemes), "n_rows": self.n_rows,
            "shift": self.shift, "fire_total": self.fire_total, "lab_count": self.lab_count, "lab": self.lab,
        }
        for k in TOKEN_KEYS:
            sd[f"{k}.count"], sd[f"{k}.sum"], sd[f"{k}.sumsq"] = (
                self.count[k], self.sums[k], self.sumsq[k])
            if self.track_max:
                sd[f"{k}.max"] = self.maxes[k]
        return sd

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["model"], state["n_vocab"], tuple(state["schemes"])) != (
                self.model, self.n_vocab, self._schemes) or not torch.equal(
                state["neurons"], self.neurons):
            raise ValueError("checkpoint is for another model, vocabulary, neuron set or schemes")
        dev = self.device
        self.n_rows = int(state["n_rows"])
        self.shift = None if state["shift"] is None else state["shift"].to(dev).clone()
        self.fire_total = state["fire_total"].to(dev).clone()
        self.lab = state["lab"].to(dev).clone()
        self.lab_count = state["lab_count"].to(dev).clone()
        for k in TOKEN_KEYS:
            self.count[k] = state[f"{k}.count"].to(dev).clone()
            self.sums[k] = state[f"{k}.sum"].to(dev).clone()
            self.sumsq[k] = state[f"{k}.sumsq"].to(dev).clone()
            if self.track_max:
                self.maxes[k] = state[f"{k}.max"].to(dev).clone()

    # ---- finalize ---------------------------------------------------------------------
    def finalize(self) -> TokenTable:
        """The tables. The big ``[vocab, N]`` tensors are shared with the accumulator, not
        copied (they can be GBs): update or merge into it afterwards and they change too."""
        if self.shift is None or self.n_rows == 0:
            raise UserError(f"no tokens reached the token table of {self.model!r}; the dataset "
                            "is empty or every token was masked")
        tables = {k: GroupTable(self.count[k], self.sums[k], self.sumsq[k],
                                self.maxes[k] if self.track_max else None)
                  for k in TOKEN_KEYS}
        total = torch.stack([self.sums["current"].sum(0), self.sumsq["current"].sum(0),
                             self.fire_total])  # [3, N] over all rows
        seq: dict[str, GroupTable] = {}
        start = 0
        for name, size in zip(self._schemes, self._scheme_sizes):
            sl = slice(start, start + size)
            start += size
            count, lab = self.lab_count[sl].clone(), self.lab[:, sl].clone()
            count[0] = self.n_rows - count[1:].sum()  # code 0 = everything else
            lab[:, 0] = total - lab[:, 1:].sum(1)
            seq[name] = GroupTable(count, lab[0], lab[1], None, lab[2])
        labels = dict(zip(self._schemes, self.row_labels.labels)) if self.row_labels else {}
        return TokenTable(self.model, self.neurons.clone(), self.shift.clone(), self.n_rows,
                          total[0], total[1], tables["current"],
                          tables["previous"], seq, labels)


def group_sums(keys: list[tuple[torch.Tensor, int]], x: torch.Tensor
                ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Group sums of the rows of ``x [n, W]`` for each key.

    A key is ``(Long[n * k], k)``: entry ``j`` is the group of row ``j // k`` (``-1`` =
    skip), so a row can be in ``k`` groups of one key (one per label scheme). Returns per
    key ``(groups Long[U] sorted, sums [U, W], counts Long[U])``. One sparse CSR product
    ``H [ΣU, n] @ x`` does all keys at once.
    """
    n = x.shape[0]
    dev = x.device
    rows, cols, uniq = [], [], []
    offset = 0
    for k, per_row in keys:
        valid = k >= 0
        u, inv = torch.unique(k[valid], return_inverse=True)
        src = torch.arange(n, device=dev)
        if per_row > 1:
            src = src.repeat_interleave(per_row)
        rows.append(inv + offset)
        cols.append(src[valid])
        uniq.append(u)
        offset += len(u)
    row = torch.cat(rows)
    col = torch.cat(cols)
    counts = torch.bincount(row, minlength=offset)
    order = torch.argsort(row, stable=True)
    crow = torch.zeros(offset + 1, dtype=torch.long, device=dev)
    crow[1:] = torch.cumsum(counts, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        h = torch.sparse_csr_tensor(crow, col[order], torch.ones(len(col), dtype=x.dtype, device=dev),
                                    size=(offset, n), check_invariants=False)
        sums = h @ x  # [ΣU, W]
    out, start = [], 0
    for u in uniq:
        out.append((u, sums[start:start + len(u)], counts[start:start + len(u)]))
        start += len(u)
    return out


def iter_array_batches(model: str, tokens: np.ndarray, acts: np.ndarray | torch.Tensor,
                       keep: np.ndarray | None = None, batch_seqs: int = 8, seq_offset: int = 0,
                       site: str = "post"):
    """Yield :class:`ActivationBatch` es from in-memory activations (cached or synthetic).

    ``tokens: Int[n_seq, n_ctx]``, ``acts: Float[n_seq, n_ctx, n_neurons]``,
    ``keep: Bool[n_seq, n_ctx]`` (None = keep all). The previous token is taken within
    the same sequence (``-1`` at position 0), before masking, as the engine does.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    acts = torch.as_tensor(acts)
    n_seq, n_ctx = tokens.shape
    if tuple(acts.shape[:2]) != (n_seq, n_ctx):
        raise ValueError(f"acts {list(acts.shape)} do not match tokens {list(tokens.shape)}")
    keep = np.ones_like(tokens, dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    prev = np.full_like(tokens, -1)
    prev[:, 1:] = tokens[:, :-1]
    pos = np.broadcast_to(np.arange(n_ctx), tokens.shape)
    seq = np.broadcast_to(np.arange(n_seq)[:, None] + seq_offset, tokens.shape)
    for s in range(0, n_seq, batch_seqs):
        sl = slice(s, min(s + batch_seqs, n_seq))
        k = torch.from_numpy(keep[sl].reshape(-1))
        a = acts[sl].reshape(-1, acts.shape[-1])[k].float()

        def pick(arr: np.ndarray, sl=sl, k=k) -> torch.Tensor:
            return torch.from_numpy(np.array(arr[sl]).reshape(-1))[k]  # a writable copy

        yield ActivationBatch(acts={model: {site: a}}, token_ids=pick(tokens),
                              prev_token_ids=pick(prev), positions=pick(pos),
                              seq_index=pick(seq))
