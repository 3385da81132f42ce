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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from universal_neurons.engine.batch import ActivationBatch
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
        raise UserError(f"the token table needs {_gib(per_neuron)} per neuron (vocab {n_vocab:,}) "
                        f"but the memory budget is {_gib(budget_bytes)}; raise --max-memory")
    n_tiles = math.ceil(n_neurons / fit)
    size = math.ceil(n_neurons / n_tiles)
    return [slice(i, min(i + size, n_neurons)) for i in range(0, n_neurons, size)]


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


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
                f"the token table for {n:,} neurons x vocab {n_vocab:,} needs {_gib(need)}, over "
                f"the memory budget of {_gib(memory_budget_bytes)}; explain fewer neurons "
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
        groups = _group_sums([(cur, 1), (prev, 1)], xs[:, :2 * n_cols])
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
            ((u, r, c),) = _group_sums([(lab_keys.flatten(), codes.shape[1])], xs)
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


def _group_sums(keys: list[tuple[torch.Tensor, int]], x: torch.Tensor
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


# ----------------------------------------------------------------------------- whole vocabulary
def vocab_means_bytes(n_vocab: int, n_neurons: int) -> int:
    """Bytes of the ``[vocab, N]`` float32 store of :class:`VocabMeans` (RAM or disk; twice
    that as float64 in RAM when it fits)."""
    return 4 * n_vocab * n_neurons


class VocabMeans:
    """Count and mean post-activation of every token id of the vocabulary, per neuron, in a
    bounded amount of memory: the per-token table for vocabularies the resident float64
    tables cannot hold (GPT-2 small: 50,257 x 36,864 cells).

    State: ``count [V]`` (int64) and ``Σ(a − K)`` per (token, neuron), ``K`` a per-neuron
    shift (the first batch's mean). Each batch's group sums are formed in float64 (sparse
    one-hot product, as :class:`TokenTableAccumulator`) and added into a float64 staging
    buffer of ``buffer_bytes`` (rows = tokens, a slot per token seen since the last flush).
    When the buffer is full it is flushed, in token order, into the float32 ``[V, N]`` store:
    a tensor in RAM when ``V * N * 4 <= store_ram_bytes``, else a memory-mapped file in
    ``spill_dir`` (deleted with the object).

    Precision: a flush adds a float64 partial sum into a float32 cell, one rounding of at
    most 2^-24 of the cell's running ``|Σ(a − K)|``. A token flushed ``F`` times therefore
    has its mean off by at most ``F · 2^-24 · max_t |mean so far − K|`` (random rounding
    gives ~``√F · 2^-24``); ``F`` is at most the number of batches holding the token. Ids in
    ``exact_ids`` (the most frequent tokens, whose exact float64 means the caller keeps in a
    :class:`TokenTableAccumulator`) are not stored here at all.

    When even a float64 store fits ``store_ram_bytes`` (small models), the store is float64
    in RAM and batches are added straight into it: exact to rounding, no staging buffer.

    ``update``/``merge``/``state_dict`` as the other accumulators; :meth:`top_k` reads
    the per-neuron top ids back.
    """

    def __init__(self, model: str, n_vocab: int, n_neurons: int, *, site: str = "post",
                 buffer_bytes: int = 64 << 20, store_ram_bytes: int = 256 << 20,
                 spill_dir: str | None = None, exact_ids: torch.Tensor | None = None):
        if n_vocab < 1 or n_neurons < 1:
            raise ValueError(f"n_vocab={n_vocab} and n_neurons={n_neurons} must be >= 1")
        self.model, self.site, self.sites = model, site, (site,)
        self.n_vocab, self.n_neurons = int(n_vocab), int(n_neurons)
        self.store_ram_bytes, self.spill_dir = int(store_ram_bytes), spill_dir
        # a float64 store in RAM when it fits (exact, no staging); else float32 + staging
        ram64 = 2 * vocab_means_bytes(self.n_vocab, self.n_neurons) <= self.store_ram_bytes
        self.store_dtype = torch.float64 if ram64 else torch.float32
        self.buffer_rows = 0 if ram64 else max(1, int(buffer_bytes) // (8 * self.n_neurons))
        self.skip = torch.zeros(self.n_vocab, dtype=torch.bool)
        if exact_ids is not None and len(exact_ids):
            self.skip[torch.as_tensor(exact_ids, dtype=torch.long)] = True
        self._tmp: Any = None
        self._mapped: Any = None  # the np.memmap behind an on-disk store
        self._touched = 0  # bytes of it read since the last release
        self.reset()

    # ---- state ------------------------------------------------------------------------
    def reset(self) -> None:
        V, N = self.n_vocab, self.n_neurons
        self.shift: torch.Tensor | None = None  # [N] float64
        self.count = torch.zeros(V, dtype=torch.long)
        self.store = self._new_store()
        self.buf = torch.zeros(self.buffer_rows, N, dtype=torch.float64)
        self.buf_ids = torch.full((self.buffer_rows,), -1, dtype=torch.long)
        self.slot = torch.full((V,), -1, dtype=torch.long)
        self.used = 0

    @property
    def on_disk(self) -> bool:
        return vocab_means_bytes(self.n_vocab, self.n_neurons) > self.store_ram_bytes

    def _new_store(self) -> torch.Tensor:
        shape = (self.n_vocab, self.n_neurons)
        if not self.on_disk:
            return torch.zeros(shape, dtype=self.store_dtype)
        import tempfile

        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="vocab-means-", dir=self.spill_dir)
        if self._mapped is not None:  # reset: the old file goes (its mapping lives on)
            Path(self._mapped.filename).unlink(missing_ok=True)
        path = f"{self._tmp.name}/sums-{id(self)}-{np.random.randint(1 << 30)}.f32"
        arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        self._mapped = arr
        return torch.from_numpy(arr)  # zero-filled, sparse on disk until written

    @property
    def nbytes(self) -> int:
        """RAM this object holds (the store only when it is not on disk)."""
        ram = (self.buf.numel() * 8 + (self.buf_ids.numel() + 2 * self.n_vocab) * 8
               + self.n_vocab + 16 * self.n_neurons)
        return ram + (0 if self.on_disk else self.store.numel() * self.store.element_size())

    # ---- update -----------------------------------------------------------------------
    def update(self, batch: ActivationBatch) -> None:
        acts = batch.acts[self.model][self.site]  # [n, N]
        if acts.shape[1] != self.n_neurons:
            raise ValueError(f"batch has {acts.shape[1]} neurons for {self.model!r}, "
                             f"the vocabulary table was built for {self.n_neurons}")
        if batch.n == 0:
            return
        ids = batch.token_ids.cpu()
        if int(ids.max()) >= self.n_vocab or int(ids.min()) < 0:
            raise ValueError(f"token ids span [{int(ids.min())}, {int(ids.max())}] but the "
                             f"vocabulary table was built for {self.n_vocab} ids")
        if self.shift is None:
            self.shift = acts.double().mean(0).cpu()
        keep = ~self.skip[ids]
        rows = max(1, (32 << 20) // (8 * self.n_neurons))  # float64 scratch <= 32 MiB
        for s in range(0, batch.n, rows):
            k = keep[s:s + rows]
            if not bool(k.any()):
                continue
            key = torch.where(k, ids[s:s + rows], torch.full_like(k, -1, dtype=torch.long))
            x = acts[s:s + rows].double() - self.shift.to(acts.device)
            ((u, sums, c),) = _group_sums([(key.to(acts.device), 1)], x)
            self.count.index_add_(0, u.cpu(), c.cpu())
            self._stage(u.cpu(), sums.cpu())

    def _stage(self, ids: torch.Tensor, sums: torch.Tensor) -> None:
        """Add ``sums [U, N]`` (float64) of the sorted, distinct ``ids`` into the buffer."""
        if self.buffer_rows == 0:  # float64 store in RAM: straight in
            self._add_to_store(ids, sums)
            return
        new = ids[self.slot[ids] < 0]
        if self.used + len(new) > self.buffer_rows:
            self.flush()
            new = ids
        if len(new) > self.buffer_rows:  # more distinct tokens than buffer rows
            self._add_to_store(ids, sums)
            return
        self.slot[new] = torch.arange(self.used, self.used + len(new))
        self.buf_ids[self.used:self.used + len(new)] = new
        self.used += len(new)
        self.buf.index_add_(0, self.slot[ids], sums)

    def flush(self) -> None:
        """Move the staged sums into the float32 store (token order) and empty the buffer."""
        if self.used == 0:
            return
        ids = self.buf_ids[:self.used]
        order = torch.argsort(ids)
        self._add_to_store(ids[order], self.buf[:self.used][order])
        self.slot[ids] = -1
        self.buf[:self.used].zero_()
        self.buf_ids[:self.used] = -1
        self.used = 0

    def _add_to_store(self, ids: torch.Tensor, sums: torch.Tensor) -> None:
        step = max(1, (64 << 20) // (8 * self.n_neurons))
        for s in range(0, len(ids), step):
            i = ids[s:s + step]
            self.store[i] = (self.store[i].double() + sums[s:s + step]).to(self.store_dtype)
        self._release()

    # ---- merge / checkpoint -------------------------------------------------------------
    def merge(self, other: VocabMeans) -> None:
        """Add ``other`` (same model, vocabulary, neurons; disjoint tokens)."""
        if (other.model, other.n_vocab, other.n_neurons) != (
                self.model, self.n_vocab, self.n_neurons) or not torch.equal(other.skip, self.skip):
            raise ValueError("cannot merge vocabulary tables of different models, "
                             "vocabularies, neuron counts or exact ids")
        if other.shift is None:
            return
        other.flush()
        if self.shift is None:
            self.shift = other.shift.clone()
        d = other.shift - self.shift  # x_self = x_other + d
        self.flush()
        self.count += other.count
        step = max(1, (64 << 20) // (8 * self.n_neurons))
        for s in range(0, self.n_vocab, step):
            c = other.count[s:s + step].double()[:, None]
            add = other.store[s:s + step].double() + c * d
            self.store[s:s + step] = (self.store[s:s + step].double() + add).to(self.store_dtype)
        self._release()

    def state_dict(self) -> dict[str, Any]:
        """Flushes first; ``store`` is the ``[V, N]`` float32 sums (memory-mapped when on
        disk: saving it writes ``V * N * 4`` bytes)."""
        self.flush()
        return {"model": self.model, "n_vocab": self.n_vocab, "n_neurons": self.n_neurons,
                "shift": self.shift, "count": self.count, "skip": self.skip,
                "store": self.store}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["model"], state["n_vocab"], state["n_neurons"]) != (
                self.model, self.n_vocab, self.n_neurons) or not torch.equal(state["skip"],
                                                                           self.skip):
            raise ValueError("checkpoint is for another model, vocabulary or neuron count")
        self.reset()
        self.shift = None if state["shift"] is None else state["shift"].clone()
        self.count = state["count"].clone()
        step = max(1, (64 << 20) // (4 * self.n_neurons))
        for s in range(0, self.n_vocab, step):
            self.store[s:s + step] = state["store"][s:s + step]
        self._release()

    # ---- read back ----------------------------------------------------------------------
    def means(self, neurons: slice) -> torch.Tensor:
        """``[V, n]`` float64 mean post-activation of every id for ``neurons`` (NaN where the
        id was not seen or is one of ``exact_ids``)."""
        self.flush()
        if self.shift is None:
            return torch.full((self.n_vocab, len(range(self.n_neurons)[neurons])), math.nan,
                              dtype=torch.float64)
        c = self.count.double()[:, None]
        m = self.store[:, neurons].double() / c + self.shift[neurons]
        return m.masked_fill_((self.count == 0)[:, None] | self.skip[:, None], math.nan)

    def top_k(self, k: int, min_count: int = 1, exact: tuple[torch.Tensor, torch.Tensor,
                                                                torch.Tensor] | None = None,
              block_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per neuron, the ``k`` ids of highest mean among ids seen ``>= min_count`` times:
        ``(ids Long[N, k], means Float64[N, k])`` (id -1 / NaN past the ids that qualify).

        ``exact = (ids [T], counts [T], means [T, N])`` supplies the ids kept out of the
        store (``exact_ids``) with their exact float64 means.

        Two passes over the store in blocks of ``block_rows`` token rows (contiguous reads):
        the per-neuron maximum of each block, then the rows of the ``k`` blocks with the
        largest maxima, where each neuron's ``k`` best ids lie. Scratch: ``(V / block_rows +
        k * block_rows) * N * 4`` bytes, smallest at ``block_rows ~ sqrt(V / k)``.
        """
        self.flush()
        N, V = self.n_neurons, self.n_vocab
        k = min(k, V)
        vb = block_rows or max(1, round(math.sqrt(V / k)))
        starts = list(range(0, V, vb))
        valid = (self.count >= min_count) & ~self.skip
        shift = self.shift if self.shift is not None else torch.zeros(N, dtype=torch.float64)

        shift32 = shift.float()
        inv_count = 1.0 / self.count.double().clamp_min(1)

        def block(s: int) -> torch.Tensor:  # [rows, N] float32 means, -inf where not valid
            # one float32 pass: the means are written in float32 (Σ / count rounds once,
            # + shift once: <= 2 ulp of the mean)
            m = torch.addcmul(shift32, self.store[s:s + vb].float(),
                              inv_count[s:s + vb, None].float())
            bad = ~valid[s:s + vb]
            if bool(bad.any()):
                m[bad] = -math.inf
            return m

        bmax = torch.full((len(starts), N), -math.inf)
        live = [bool(valid[s:s + vb].any()) for s in starts]  # blocks with an id to rank
        for b, s in enumerate(starts):
            if live[b]:
                bmax[b] = block(s).amax(0)
                self._release(vb)
        kb = min(k, len(starts))
        sel = bmax.topk(kb, dim=0).indices  # [kb, N]: the blocks each neuron needs
        del bmax
        cand = torch.full((N, kb * vb), -math.inf)  # slot j * vb + r: row r of block sel[j]
        offs = torch.arange(vb)
        for b, s in enumerate(starts):
            j, n = (sel == b).nonzero(as_tuple=True)
            if len(n) and live[b]:
                m = block(s)  # [rows, N]
                cand[n[:, None], j[:, None] * vb + offs[:m.shape[0]]] = m[:, n].T
            self._release(vb)
        e_ids = torch.zeros(0, dtype=torch.long)
        if exact is not None and len(exact[0]):
            e_ids, e_cnt, e_mean = (t.cpu() for t in exact)
            e = e_mean.to(torch.float64).T.float()  # [N, T]
            cand = torch.cat([cand, e.masked_fill((e_cnt < min_count)[None, :], -math.inf)], 1)
        top = cand.topk(k, dim=1)
        del cand
        j, r = top.indices // vb, top.indices % vb  # slot -> (selected block, row in it)
        from_store = j < kb
        block_start = torch.as_tensor(starts)[sel.T.gather(1, j.clamp_max(kb - 1))]
        ids = torch.where(from_store, block_start + r,
                          e_ids[(top.indices - kb * vb).clamp(0, max(len(e_ids) - 1, 0))]
                          if len(e_ids) else -1)
        ok = torch.isfinite(top.values)
        return torch.where(ok, ids, -1), torch.where(ok, top.values.double(), math.nan)

    def _release(self, rows: int | None = None) -> None:
        """Unmap the store's pages from this process (the file keeps them): a memory-mapped
        store would otherwise count in the resident set as it is touched. ``rows``: only
        once that many rows were touched since the last release (64 MiB at least)."""
        if self._mapped is None:
            return
        if rows is not None:
            self._touched += rows * 4 * self.n_neurons
            if self._touched < 64 << 20:
                return
        import mmap

        self._mapped._mmap.madvise(mmap.MADV_DONTNEED)
        self._touched = 0
