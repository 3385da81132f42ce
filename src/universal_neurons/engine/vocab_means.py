"""Count and mean activation of every token id of the vocabulary, in bounded memory.

:class:`VocabMeans` is the per-token table for vocabularies the resident float64 tables of
:mod:`~universal_neurons.engine.token_table` cannot hold (GPT-2 small: 50,257 x 36,864
cells): float64 staging of each batch's group sums, flushed into a float32 ``[V, N]`` store
in RAM or in a memory-mapped file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.token_table import group_sums


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
            ((u, sums, c),) = group_sums([(key.to(acts.device), 1)], x)
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
