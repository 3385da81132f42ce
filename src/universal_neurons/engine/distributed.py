"""Multi-process runs with ``torch.distributed`` (started by torchrun, or srun + torchrun).

Two ways to split the work, chosen by the plan:

- **token sharding** (the plan has one pass): each rank streams a contiguous share of the
  sequences; at the end the float64 moments are merged exactly (generalised Chan merge:
  every rank shifts its co-moments to the global mean, then one all-reduce sum);
- **tile sharding** (a pair does not fit on one device, so the plan has several passes):
  ranks take passes round-robin, each streaming all tokens for its reference-neuron tiles;
  the per-neuron summaries are then reduced (sum, max, min, top-k over gathered candidates).

gloo on CPU, NCCL on CUDA. Environment: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT`` (torchrun sets them).
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from universal_neurons.engine.moments import CoMoments
from universal_neurons.engine.summary import NeuronSummary

log = logging.getLogger(__name__)


@dataclass
class DistContext:
    """This process's place in the job (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def init_from_env(device: str) -> DistContext:
    """Join the process group described by the environment (no-op without ``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    owns = False
    if not dist.is_initialized():
        cuda = torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        owns = True
    log.info("distributed: rank %d of %d (%s)", rank, world, dist.get_backend())
    return DistContext(rank, world, local, owns)


def device_for(device: str, ctx: DistContext) -> str:
    """``cuda`` -> ``cuda:LOCAL_RANK`` under a multi-process CUDA job."""
    if ctx.active and device == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device


def agree_min(value: int, ctx: DistContext, device: str = "cpu") -> int:
    """The smallest ``value`` over ranks (so that every rank makes the same plan)."""
    if not ctx.active:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def merge_moments(moments: CoMoments, ctx: DistContext) -> None:
    """All-reduce ``moments`` over ranks: exact, every rank ends with the global moments.

    With per-rank counts ``n_r``, means ``mu_r`` and co-moments ``M_r``:
    ``mu = sum n_r mu_r / n`` and ``M = sum_r [M_r + n_r (mu_r - mu)(mu_r - mu)^T]``.
    """
    if not ctx.active:
        return
    moments.flush()
    dev = moments.mean.device
    n_all = torch.zeros(ctx.world_size, dtype=torch.float64, device=dev)
    n_all[ctx.rank] = moments.n
    dist.all_reduce(n_all)
    n = float(n_all.sum())
    if n == 0:
        return
    weighted = moments.mean * moments.n
    dist.all_reduce(weighted)
    mean = weighted / n
    delta = moments.mean - mean  # [N_total]
    lay = moments.layout
    w = float(moments.n)
    if moments.cov is not None:
        for m, s in enumerate(lay.shapes):
            for layer in range(s.n_layers):
                d = delta[lay.layer_cols(m, layer)].to(moments.cov[m].dtype)
                moments.cov[m][layer].addr_(d, d, alpha=w)
            dist.all_reduce(moments.cov[m])
    for block, acc in zip(moments.blocks, moments.cross):
        acc.addr_(delta[lay.block_rows(block)].to(acc.dtype),
                  delta[lay.block_cols(block)].to(acc.dtype), alpha=w)
        dist.all_reduce(acc)
    moments.mean = mean
    moments.n = int(round(n))


def reduce_summary(summary: NeuronSummary, ctx: DistContext) -> None:
    """Combine summaries of disjoint chunks held by the ranks; every rank gets the result."""
    if not ctx.active:
        return
    for t in (summary.hist, summary.count, summary.power):
        dist.all_reduce(t)
    dist.all_reduce(summary.base_max, op=dist.ReduceOp.MAX)
    dist.all_reduce(summary.base_min, op=dist.ReduceOp.MIN)
    if summary.draw_max.numel():
        dist.all_reduce(summary.draw_max, op=dist.ReduceOp.MAX)
    for largest in (True, False):
        val, idx = ((summary.max_val, summary.max_idx) if largest
                    else (summary.min_val, summary.min_idx))
        tv, ti = ((summary.top_val, summary.top_idx) if largest
                  else (summary.bot_val, summary.bot_idx))
        vals = [torch.empty_like(tv) for _ in range(ctx.world_size)]
        idxs = [torch.empty_like(ti) for _ in range(ctx.world_size)]
        dist.all_gather(vals, tv)
        dist.all_gather(idxs, ti)
        cv, ci = torch.cat(vals, 1), torch.cat(idxs, 1)
        mv, mi = cv.topk(summary.k, dim=1, largest=largest, sorted=True)
        tv.copy_(mv)
        ti.copy_(ci.gather(1, mi))
        val.copy_(mv[:, 0])
        idx.copy_(ti[:, 0])


def gather_accumulators(accs: Sequence[Any], ctx: DistContext, src_ranks: Sequence[int] | None
                        = None) -> None:
    """Merge other ranks' accumulators into rank 0's (``accs`` on other ranks are unchanged).

    ``src_ranks``: ranks whose accumulators saw tokens (default: all).
    """
    if not ctx.active or not accs:
        return
    states = [acc.state_dict() for acc in accs]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, states)
    if not ctx.is_main:
        return
    for r, r_states in enumerate(gathered):
        if r == 0 or (src_ranks is not None and r not in src_ranks):
            continue
        for acc, st in zip(accs, r_states):
            other = copy.deepcopy(acc)
            other.load_state_dict(st)
            acc.merge(other)
