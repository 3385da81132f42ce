"""The one streaming pass: tokens -> every model's forward pass once -> every accumulator.

Per batch of sequences: the keep mask drops BOS/pad and newline tokens (unless
``keep_all``), each model runs once and stops after its last MLP, and every accumulator
receives the same :class:`~universal_neurons.engine.batch.ActivationBatch` with the
union of the sites they asked for. The activation rows live in buffers reused from batch
to batch: an accumulator copies what it keeps and holds no views of a batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from universal_neurons.engine.accumulator import Accumulator
from universal_neurons.engine.batch import ActivationBatch

log = logging.getLogger(__name__)


class StreamModel(Protocol):
    """What the runner needs of a model (``models.loading.LoadedModel`` satisfies it)."""

    name: str
    adapter: Any  # capture_rows(input_ids, keep, sites, attention_mask) -> {site: [n_kept, L * d]}


@dataclass
class StreamStats:
    """Counts and timings of one streaming pass (this process's share)."""

    batches: int = 0
    sequences: int = 0
    tokens: int = 0
    """Tokens fed to the models (BOS included)."""
    kept_tokens: int = 0
    forward_s: float = 0.0
    accumulate_s: float = 0.0

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def batch_ranges(n_seq: int, batch_size: int, rank: int = 0, world_size: int = 1
                 ) -> list[tuple[int, int]]:
    """``[start, stop)`` sequence ranges of this rank's batches: ranks get contiguous,
    near-equal shares of the sequences, each cut into batches of ``batch_size``."""
    lo = n_seq * rank // world_size
    hi = n_seq * (rank + 1) // world_size
    return [(s, min(s + batch_size, hi)) for s in range(lo, hi, batch_size)]


def make_batch(models: Sequence[StreamModel], input_ids: torch.Tensor, keep: torch.Tensor,
               first_seq: int, sites: Sequence[str], device: torch.device,
               buffers: dict[str, dict[str, torch.Tensor]] | None = None) -> ActivationBatch:
    """Run every model once on ``input_ids: Long[b, pos]`` and gather the kept rows (into
    ``buffers[model][site]`` when given: then the batch is valid until the next one)."""
    acts: dict[str, dict[str, torch.Tensor]] = {}
    ids_dev = input_ids.to(device)
    mask = torch.ones_like(ids_dev)  # no padding: every window is full (silences HF's warning)
    for model in models:
        with torch.inference_mode():
            acts[model.name] = model.adapter.capture_rows(
                ids_dev, keep, sites=tuple(sites), attention_mask=mask,
                buffers=None if buffers is None else buffers.setdefault(model.name, {}))
    b, pos = input_ids.shape
    prev = torch.cat([torch.full((b, 1), -1, dtype=torch.long), input_ids[:, :-1]], 1)
    flat = keep.reshape(-1)
    return ActivationBatch(
        acts=acts,
        token_ids=input_ids.reshape(-1)[flat],
        prev_token_ids=prev.reshape(-1)[flat],
        positions=torch.arange(pos).repeat(b)[flat],
        seq_index=(torch.arange(b) + first_seq).repeat_interleave(pos)[flat],
    )


def stream(dataset: Any, models: Sequence[StreamModel], accumulators: Sequence[Accumulator],
           ranges: Sequence[tuple[int, int]], *, tokenizer: Any = None, keep_all: bool = False,
           keep_rule: str = "ours",
           device: str | torch.device = "cpu", start_batch: int = 0,
           after_batch: Callable[[int, StreamStats], None] | None = None,
           progress: bool = True, desc: str = "correlate") -> StreamStats:
    """Stream ``dataset.tokens[ranges[start_batch:]]`` through ``models`` into ``accumulators``.

    The keep mask is ``data.tokens.keep_mask(tokens, tokenizer, keep_all, keep_rule)``
    (every token is kept when ``tokenizer`` is None);
    ``after_batch(i, stats)`` is called after batch ``i`` is folded in (checkpoints).
    """
    from tqdm.auto import tqdm

    from universal_neurons.data.tokens import keep_mask

    sites = tuple(dict.fromkeys(s for acc in accumulators for s in acc.sites))
    if not sites:
        raise ValueError("no accumulator asked for an activation site")
    dev = torch.device(device)
    stats = StreamStats()
    todo = ranges[start_batch:]
    n_ctx = int(dataset.tokens.shape[1])
    buffers: dict[str, dict[str, torch.Tensor]] = {}  # activation rows, reused every batch
    bar = tqdm(total=sum(hi - lo for lo, hi in todo) * n_ctx, unit="tok", unit_scale=True,
               desc=desc, disable=not progress)
    with bar:
        for i, (lo, hi) in enumerate(todo, start=start_batch):
            tokens = np.asarray(dataset.tokens[lo:hi], dtype=np.int64)  # [b, n_ctx]
            keep = (np.ones(tokens.shape, dtype=bool) if tokenizer is None
                    else keep_mask(tokens, tokenizer, keep_all, keep_rule))  # type: ignore[arg-type]
            t0 = time.perf_counter()
            batch = make_batch(models, torch.from_numpy(tokens), torch.from_numpy(keep), lo,
                               sites, dev, buffers)
            t1 = time.perf_counter()
            for acc in accumulators:
                acc.update(batch)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t2 = time.perf_counter()
            stats.batches += 1
            stats.sequences += hi - lo
            stats.tokens += tokens.size
            stats.kept_tokens += batch.n
            stats.forward_s += t1 - t0
            stats.accumulate_s += t2 - t1
            del batch
            if after_batch is not None:
                after_batch(i, stats)
            bar.update(tokens.size)
    return stats
