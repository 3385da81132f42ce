"""The correlate pass: loaded models + a token dataset -> per-pair neuron summaries.

``plan_pass`` plans memory and tiling for the models; ``correlate_pass`` streams the tokens
once per reference tile (one forward pass per model per batch, feeding the co-moments and,
in the first pass, any extra accumulators), summarises every pass into per-neuron
summaries, saves and resumes checkpoints, and merges ranks under torch.distributed. It
loads nothing and writes nothing but its checkpoint: ``stages.correlate`` does the rest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from universal_neurons.engine import distributed as dd
from universal_neurons.engine import runner
from universal_neurons.engine.blocks import BlockMoments, BlockStats, subsets, summarize_blocks
from universal_neurons.engine.checkpoint import (
    check_config,
    check_progress,
    open_checkpoint,
    save_checkpoint,
)
from universal_neurons.engine.correlate_state import (
    Progress,
    add_stats,
    new_summaries,
    plan_from_state,
)
from universal_neurons.engine.finalize import Baselines, ModelStats, summarize_moments
from universal_neurons.engine.layout import Layout, Mode, ModelShape
from universal_neurons.engine.moments import CoMoments, Precision, Sums
from universal_neurons.engine.planner import Plan
from universal_neurons.engine.runner import StreamStats
from universal_neurons.engine.summary import NeuronSummary
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassOptions:
    """What the pass computes and how it streams (the correlate options it needs)."""

    site: str = "post"
    baseline: str = "rotation"
    seed: int = 0
    """Seed of the baseline bases."""
    rotations: int = 1
    """Baseline draws (independent bases per layer); 1 = the single-draw baseline."""
    blocks: int = 1
    """Token blocks of the jackknife (``engine/blocks.py``); 1 = off."""
    keep_tokens: bool = False
    token_filter: str = "ours"
    """Which tokens are dropped when not ``keep_tokens`` (``data.tokens.keep_mask`` rule)."""
    top_k: int = 10
    bins: int = 100
    precision: Precision = "fp32"
    """A resolved precision (``fp32``, ``tf32`` or ``bf16``)."""
    sums: Sums = "fp64"
    """Dtype of the co-moment sums (``moments.CoMoments``)."""
    batch_size: int = 8
    progress: bool = True


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often the pass saves its state, and what it must match to resume."""

    path: Path
    every: int | None = None
    """Tokens between checkpoints (None: no checkpoints, and none is read)."""
    restart: bool = False
    semantic: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassResult:
    """Per-pair summaries (model indices ``(a, b)``; complete on rank 0) and token counts."""

    plan: Plan
    summaries: dict[tuple[int, int], NeuronSummary]
    n_tokens: int
    n_kept: int
    unions: dict[tuple[int, ...], dict[tuple[int, int], NeuronSummary]] = field(
        default_factory=dict)
    """With blocks: summaries (top-1, one bin) of every proper union of token blocks."""


def model_bytes(models: Sequence[Any]) -> int:
    """Bytes of the models' parameters and buffers."""
    total = 0
    for m in models:
        mod = m.hf_model
        total += sum(t.numel() * t.element_size() for t in mod.parameters())
        total += sum(t.numel() * t.element_size() for t in mod.buffers())
    return total


def plan_pass(models: Sequence[Any], shapes: Sequence[ModelShape], mode: Mode, n_ctx: int,
              n_seq: int, opts: PassOptions, *, extras: Sequence[Any] = (),
              max_memory: str | None, rows_per_gemm: int, ctx: Any, device: str) -> Plan:
    """The memory plan of a correlate pass (the same on every rank)."""
    from universal_neurons.engine.planner import forward_bytes, plan_correlation
    from universal_neurons.engine.sizes import default_budget, parse_bytes

    budget = parse_bytes(max_memory) if max_memory is not None else default_budget(device)
    budget = dd.agree_min(budget, ctx, device)  # one plan for every rank
    # accumulators update one after another: their states add up, their scratch does not
    scratch = [int(getattr(acc, "scratch_nbytes", lambda: 0)()) for acc in extras]
    extra_state = sum(int(acc.nbytes()) for acc in extras if hasattr(acc, "nbytes")) \
        - sum(scratch)
    batch = min(opts.batch_size, n_seq)
    adapters = [m.adapter for m in models]
    # the first pass captures every site its extra accumulators ask for (pre and post for
    # the activation statistics); later passes only the correlated site
    first_sites = {opts.site}.union(*(getattr(acc, "sites", ()) for acc in extras))
    return plan_correlation(
        shapes, mode, budget, k=opts.top_k, bins=opts.bins,
        baseline=opts.baseline != "none", rows_per_gemm=rows_per_gemm, draws=opts.rotations,
        model_bytes=model_bytes(models),
        forward_bytes=forward_bytes(adapters, batch * n_ctx, 1),
        forward_first_bytes=forward_bytes(adapters, batch * n_ctx, len(first_sites)),
        scratch_bytes=max(scratch, default=0), batch_size=batch, extra_bytes=extra_state,
        bf16_copy=opts.precision == "bf16", device_type=torch.device(device).type,
        blocks=opts.blocks, sums=opts.sums)


def correlate_pass(models: Sequence[Any], dataset: Any, n_seq: int, *, plan: Plan,
                   mode: Mode, opts: PassOptions, checkpoint: Checkpointing,
                   extras: Sequence[Any] = (), ctx: Any, device: str,
                   timings: dict[str, float]) -> PassResult:
    """Stream ``dataset.tokens[:n_seq]`` through ``models`` and summarise every pair.

    Resumes from ``checkpoint.path`` when it holds a run of the same ``semantic`` config;
    adds per-pass timings to ``timings``."""
    shapes = [ModelShape(m.name, m.adapter.n_layers, m.adapter.d_mlp) for m in models]
    state = _open_state(checkpoint, plan)
    if state is not None:
        plan = plan_from_state(plan, state)
        log.info("resuming from %s (passes done: %s)", checkpoint.path, state["completed"])
    if ctx.is_main:
        log.info("%s", plan.describe(shapes))
    run = _Run(models, dataset, n_seq, plan, mode, opts, checkpoint, list(extras), ctx,
               torch.device(device), timings, shapes)
    if state is not None:
        check_progress(checkpoint.path, state, plan.n_passes, len(run.ranges))
        run.progress.restore(state, checkpoint.path, Layout(shapes), run.dev, run.extras)
    run.current = state.get("current") if state is not None else None
    for p in run.my_passes:
        if p not in run.progress.completed:
            run.one_pass(p)
    n_tokens, n_kept = run.counts()
    return PassResult(plan, run.progress.summaries, n_tokens, n_kept, run.unions)


def _open_state(checkpoint: Checkpointing, plan: Plan) -> dict[str, Any] | None:
    """The verified checkpoint of this configuration, or None (none, or ``restart``)."""
    state = open_checkpoint(checkpoint.path, restart=checkpoint.restart)
    if state is not None:
        check_config(checkpoint.path, state["config"], checkpoint.semantic)
    return state


class _Run:
    """One rank's share of the passes of a plan, and what they have built."""

    def __init__(self, models, dataset, n_seq, plan: Plan, mode: Mode, opts: PassOptions,
                 checkpoint: Checkpointing, extras: list[Any], ctx, dev: torch.device,
                 timings: dict[str, float], shapes: list[ModelShape]) -> None:
        self.models, self.dataset, self.n_seq, self.plan = models, dataset, n_seq, plan
        self.opts, self.ckpt, self.extras, self.ctx = opts, checkpoint, extras, ctx
        self.dev, self.timings = dev, timings
        self.token_shard = ctx.active and plan.n_passes == 1
        if ctx.active and not self.token_shard and plan.n_passes < ctx.world_size:
            raise UserError(f"the plan has {plan.n_passes} reference tiles for "
                            f"{ctx.world_size} ranks: run with at most {plan.n_passes} ranks, "
                            "or with a --max-memory that fits one pass (then ranks split the "
                            "tokens)")
        self.my_passes = (list(range(plan.n_passes)) if not ctx.active or self.token_shard
                          else list(range(ctx.rank, plan.n_passes, ctx.world_size)))
        shard = (ctx.rank, ctx.world_size) if self.token_shard else (0, 1)
        self.ranges = runner.batch_ranges(n_seq, plan.batch_size or opts.batch_size, *shard)
        self.progress = Progress(new_summaries(shapes, mode, opts.top_k, opts.bins, dev,
                                               draws=opts.rotations))
        self.current: dict[str, Any] | None = None
        # bases are made once per run (a QR per layer) and kept for every pass
        self.base = (Baselines(opts.baseline, opts.seed, Layout(shapes), dev,
                               draws=opts.rotations)
                     if opts.baseline != "none" else None)
        self.shapes = shapes
        self.unions: dict[tuple[int, ...], dict[tuple[int, int], NeuronSummary]] = {}
        self.block_stats: BlockStats | None = None
        self.union_stats: dict[tuple[int, ...], ModelStats] = {}
        if opts.blocks > 1:
            if ctx.active:
                raise UserError("--blocks runs in one process: run without torchrun, or "
                                "with --blocks 1")
            self.unions = {u: new_summaries(shapes, mode, 1, 1, dev, draws=opts.rotations)
                           for u in subsets(opts.blocks)[1:]}

    def one_pass(self, p: int) -> None:
        """Stream reference tile ``p`` (resuming it if the checkpoint stopped inside it),
        summarise it and checkpoint between passes."""
        pr, opts = self.progress, self.opts
        kw: dict[str, Any] = dict(site=opts.site, layer_cov=pr.stats is None,
                                  rows_per_gemm=self.plan.rows_per_gemm,
                                  gemm_rows=self.plan.gemm_rows, precision=opts.precision,
                                  device=self.dev, sums=opts.sums)
        moments: Any = (BlockMoments(self.shapes, self.plan.passes[p], opts.blocks,
                                     self.n_seq, **kw) if opts.blocks > 1
                        else CoMoments(self.shapes, self.plan.passes[p], **kw))
        cur = self.current if self.current is not None and self.current["pass"] == p else None
        start_batch = 0
        if cur is not None:
            moments.load_state_dict(cur["moments"])
            start_batch = int(cur["next_batch"])
        accs: list[Any] = [moments, *self.extras] if p == 0 else [moments]
        pass_stats = StreamStats(**cur["stream"]) if cur is not None else StreamStats()
        ts = time.perf_counter()
        s = runner.stream(self.dataset, self.models, accs, self.ranges,
                          tokenizer=self.models[0].tokenizer, keep_all=opts.keep_tokens,
                          keep_rule=opts.token_filter,
                          device=self.dev, start_batch=start_batch,
                          after_batch=self._checkpoint_hook(p, moments, pass_stats),
                          progress=opts.progress and self.ctx.is_main,
                          desc=f"correlate pass {p + 1}/{self.plan.n_passes}")
        moments.release_buffer()
        self.timings[f"pass{p}_stream_s"] = time.perf_counter() - ts
        self.timings[f"pass{p}_forward_s"] = s.forward_s
        self.timings[f"pass{p}_accumulate_s"] = s.accumulate_s
        if p == self.my_passes[0]:
            pr.totals = add_stats(pass_stats, s)
        self._summarize(p, moments)
        del moments
        pr.completed.append(p)
        if self.ckpt.every is not None:
            save_checkpoint(self.ckpt.path, pr.state(self.ckpt.semantic, self.plan,
                                                     self.extras, current=None))

    def _summarize(self, p: int, moments: Any) -> None:
        tf = time.perf_counter()
        if isinstance(moments, BlockMoments):
            self._summarize_blocks(moments)
            self.timings[f"pass{p}_summarize_s"] = time.perf_counter() - tf
            return
        if self.token_shard:
            dd.merge_moments(moments, self.ctx)
        pr = self.progress
        if pr.stats is None:  # first pass: keep O(N) stats, free the [L, d, d] co-moments
            pr.stats = ModelStats.from_moments(moments, self.base, free_cov=True)
        moments.cov = None
        if not self.token_shard or self.ctx.is_main:
            summarize_moments(moments, pr.stats, pr.summaries, self.base)
        self.timings[f"pass{p}_summarize_s"] = time.perf_counter() - tf

    def _summarize_blocks(self, moments: BlockMoments) -> None:
        """Every union of token blocks: the full sample into the main summaries."""
        if self.block_stats is None:  # first pass: per-block O(N) stats, covs freed
            self.block_stats = BlockStats.from_parts(moments.parts, self.base)
            self.union_stats = {u: self.block_stats.union(u)
                                for u in subsets(self.opts.blocks)}
            self.progress.stats = self.union_stats[tuple(range(self.opts.blocks))]
        full = {tuple(range(self.opts.blocks)): self.progress.summaries}
        summarize_blocks(moments.parts, self.block_stats, self.union_stats,
                         {**full, **self.unions}, self.base)

    def _checkpoint_hook(self, p: int, moments: CoMoments, before: StreamStats):
        """``after_batch`` of pass ``p``: save a checkpoint every ``checkpoint.every`` tokens
        and after the last batch. ``before`` counts the pass's batches of earlier runs."""
        base = dataclasses.replace(before)
        seen = {"tokens": 0}
        last = len(self.ranges) - 1

        def hook(i: int, s: StreamStats) -> None:
            # called after batch i; `s` counts this stream() call, `base` what came before
            pr = self.progress
            pr.tokens_since += s.tokens - seen["tokens"]
            seen["tokens"] = s.tokens
            if self.ckpt.every is None or (pr.tokens_since < self.ckpt.every and i != last):
                return
            pr.tokens_since = 0
            save_checkpoint(self.ckpt.path, pr.state(
                self.ckpt.semantic, self.plan, self.extras,
                current={"pass": p, "next_batch": i + 1, "moments": moments.state_dict(),
                         "stream": add_stats(base, s).to_dict()}))

        return hook

    def counts(self) -> tuple[int, int]:
        """(dataset tokens, kept tokens) over every rank, checked against the moments."""
        pr, ctx = self.progress, self.ctx
        n_kept, n_tokens = pr.totals.kept_tokens, pr.totals.tokens
        if ctx.active:
            if self.token_shard:
                dd.gather_accumulators(self.extras, ctx)
                counts = torch.tensor([n_kept, n_tokens], dtype=torch.float64, device=self.dev)
                torch.distributed.all_reduce(counts)
                n_kept, n_tokens = (int(c) for c in counts.tolist())
            else:
                for s_ in pr.summaries.values():
                    dd.reduce_summary(s_, ctx)
                assert pr.stats is not None  # every rank ran at least one pass
                n_kept = pr.stats.n
                n_tokens = self.n_seq * self.dataset.n_ctx
        if pr.stats is not None and pr.stats.n != n_kept:
            raise RuntimeError(f"moments saw {pr.stats.n} tokens but the stream kept {n_kept}")
        if n_kept < 2:
            raise UserError(f"only {n_kept} tokens were kept: correlations need at least 2; "
                            "use a larger dataset or --keep-tokens")
        return n_tokens, n_kept
