"""The correlate stage: models + tokens -> per-neuron universality and per-pair summaries.

``run_correlate(CorrelateConfig(...))`` is what ``universal-neurons correlate`` runs:
validate inputs, plan memory, stream the tokens (one forward pass per model per batch,
feeding the co-moments and any extra accumulators), summarise, write
``neurons/<model>.parquet``, ``correlations/<a>__<b>.safetensors`` and the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from universal_neurons.constants import CHECKPOINT_DIR, CORRELATIONS_DIR, neuron_table, safe_name
from universal_neurons.engine.layout import CrossBlock, Mode, ModelShape, partner_range
from universal_neurons.engine.moments import CoMoments
from universal_neurons.engine.planner import Plan, format_bytes
from universal_neurons.engine.precision import CHOICES as PRECISION_CHOICES
from universal_neurons.engine.precision import PrecisionChoice
from universal_neurons.engine.rotation import BASELINES
from universal_neurons.engine.summary import NeuronSummary
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)

STAGE = "correlate"
HIST_RANGE = (-1.0, 1.0)


@dataclass(frozen=True)
class CorrelateConfig:
    """Options of the correlate stage (the CLI flags, one for one)."""

    models: tuple[str, ...]
    """Model specs (suites expand); the first is the reference unless ``all_pairs``."""
    out: str
    """Run directory."""
    dataset: str | None = None
    """Token dataset folder; None = the bundled test split tokenized for the models."""
    all_pairs: bool = False
    """Every model against every other (each model gets a neuron table)."""
    threshold: float = 0.5
    """``is_universal`` when ``excess_corr`` exceeds this."""
    baseline: Literal["rotation", "gaussian-rows", "none"] = "rotation"
    seed: int = 0
    """Seed of the baseline bases."""
    site: Literal["post", "pre"] = "post"
    keep_tokens: bool = False
    """Keep BOS/pad and newline tokens (dropped by default, as in the paper)."""
    top_k: int = 10
    bins: int = 100
    precision: PrecisionChoice = "auto"
    """GEMM inputs; ``auto``: the fastest native one within ``precision_tolerance``
    (engine/precision.py). The manifest records the precision used."""
    precision_strict: bool = False
    """Refuse a precision the device does not run natively (instead of using fp32)."""
    precision_tolerance: float | None = None
    """Error bound ``auto`` may accept (default: the fp32 bound, so ``auto`` is fp32)."""
    device: str = "cpu"
    batch_size: int = 8
    """Sequences per forward pass."""
    rows_per_gemm: int = 4096
    """Kept tokens buffered per GEMM (the planner may lower it to fit memory)."""
    max_memory: str | None = None
    """Budget, e.g. ``8G``; default 70% of available RAM (90% of free GPU memory on CUDA)."""
    max_tokens: int | None = None
    """Use only the first ``max_tokens`` tokens of the dataset (whole sequences)."""
    n_ctx: int | None = None
    """Context of the default dataset (default ``min(512, model n_ctx)``)."""
    checkpoint_every: int | None = None
    """Save a checkpoint every this many tokens (None: no checkpoints)."""
    restart: bool = False
    """Ignore and replace an existing checkpoint."""
    progress: bool = True

    def __post_init__(self) -> None:
        if self.baseline not in BASELINES:
            raise UserError(f"--baseline must be one of {', '.join(BASELINES)}, got {self.baseline!r}")
        if self.precision not in PRECISION_CHOICES:
            raise UserError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, got "
                            f"{self.precision!r}")
        if self.precision_tolerance is not None and not self.precision_tolerance > 0:
            raise UserError("--precision-tolerance must be a positive error bound, e.g. 0.03, "
                            f"got {self.precision_tolerance}")
        if self.site not in ("post", "pre"):
            raise UserError(f"--site must be post or pre, got {self.site!r}")
        for name in ("top_k", "bins", "batch_size", "rows_per_gemm"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got "
                                f"{getattr(self, name)}")
        for name in ("max_tokens", "checkpoint_every", "n_ctx"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {v}")

    def semantic(self) -> dict[str, Any]:
        """The options that change results (checked when resuming)."""
        skip = {"out", "max_memory", "checkpoint_every", "restart", "progress",
                "precision_strict", "precision_tolerance"}  # `precision`: the resolved one
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


@dataclass
class CorrelateResult:
    """What a run produced (rank 0 holds the tables and summaries)."""

    rundir: Path
    models: list[str]
    plan: Plan
    tables: dict[str, Any] = field(default_factory=dict)
    summaries: dict[tuple[str, str], dict[str, torch.Tensor]] = field(default_factory=dict)
    extras: Sequence[Any] = ()
    n_tokens: int = 0
    n_kept: int = 0
    timings: dict[str, float] = field(default_factory=dict)


def run_correlate(config: CorrelateConfig, extra_accumulators: Sequence[Any] = (),
                  models: Sequence[Any] | None = None) -> CorrelateResult:
    """Run the correlate stage. ``extra_accumulators`` are fed during the first pass over the
    data (same forward passes); ``models`` may be passed already loaded (``LoadedModel``)."""
    from universal_neurons.engine import distributed as dd

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    ctx = dd.init_from_env(config.device)
    try:
        device = dd.device_for(config.device, ctx)
        models = list(models) if models is not None else _load_models(config, device)
        timings["load_s"] = time.perf_counter() - t0
        return _run(config, list(extra_accumulators), models, device, ctx, timings, t0)
    finally:
        ctx.close()


def _load_models(config: CorrelateConfig, device: str) -> list[Any]:
    from universal_neurons.models.loading import load_model
    from universal_neurons.models.registry import expand_model_specs

    specs = expand_model_specs(list(config.models))
    if len(specs) < 2:
        raise UserError(f"correlate needs at least two models (got {specs}); pass several "
                        "models or a suite, e.g. --models tiny-gpt2")
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if not config.progress:
        hf_logging.disable_progress_bar()
    try:
        return [load_model(s, device=device) for s in specs]
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _check_models(models: Sequence[Any]) -> str:
    """Refuse fewer than two models, duplicate names or different tokenizers."""
    from universal_neurons.models.loading import check_same_tokenizer

    names = [m.name for m in models]
    if len(models) < 2:
        raise UserError(f"correlate needs at least two models (got {names}); pass several "
                        "models or a suite, e.g. --models tiny-gpt2")
    if len(set(names)) != len(names):
        raise UserError(f"model names must be distinct, got {names}")
    return check_same_tokenizer(models)


def _open_dataset(config: CorrelateConfig, models: Sequence[Any]):
    from universal_neurons.data.dataset import dataset_for_models

    return dataset_for_models(models, config.dataset, config.n_ctx, config.max_tokens,
                              show_progress=config.progress)


def model_bytes(models: Sequence[Any]) -> int:
    """Bytes of the models' parameters and buffers."""
    total = 0
    for m in models:
        mod = m.hf_model
        total += sum(t.numel() * t.element_size() for t in mod.parameters())
        total += sum(t.numel() * t.element_size() for t in mod.buffers())
    return total


def _run(config: CorrelateConfig, extras: list[Any], models: list[Any], device: str, ctx,
         timings: dict[str, float], t0: float) -> CorrelateResult:
    from universal_neurons.engine import distributed as dd
    from universal_neurons.engine.checkpoint import (
        check_config,
        check_progress,
        open_checkpoint,
        save_checkpoint,
    )
    from universal_neurons.engine.finalize import Baselines, ModelStats, summarize_moments
    from universal_neurons.engine.planner import (
        default_budget,
        forward_bytes,
        parse_bytes,
        plan_correlation,
    )
    from universal_neurons.engine.precision import detect_caps, resolve_precision
    from universal_neurons.engine.runner import StreamStats, batch_ranges, stream
    from universal_neurons.fingerprints import dataset_fingerprint
    from universal_neurons.outputs import correlate_output_bytes
    from universal_neurons.rundir import check_output_dir

    resolved = resolve_precision(config.precision, detect_caps(device),
                                 strict=config.precision_strict,
                                 rows_per_gemm=config.rows_per_gemm,
                                 tolerance=config.precision_tolerance)
    config = dataclasses.replace(config, precision=resolved.precision)  # what runs
    fingerprint = _check_models(models)
    shapes = [ModelShape(m.name, m.adapter.n_layers, m.adapter.d_mlp) for m in models]
    if ctx.is_main:  # before any compute: writable, not a file, room for the outputs
        check_output_dir(config.out, correlate_output_bytes(
            [s.n_neurons for s in shapes], config.all_pairs, config.top_k, config.bins))
    dataset, n_seq = _open_dataset(config, models)
    mode: Mode = "all-pairs" if config.all_pairs else "reference"
    dev = torch.device(device)
    budget = (parse_bytes(config.max_memory) if config.max_memory is not None
              else default_budget(device))
    budget = dd.agree_min(budget, ctx, device)  # one plan for every rank
    # accumulators update one after another: their states add up, their scratch does not
    scratch = [int(getattr(acc, "scratch_nbytes", lambda: 0)()) for acc in extras]
    extra_state = sum(int(acc.nbytes()) for acc in extras if hasattr(acc, "nbytes")) \
        - sum(scratch)
    plan = plan_correlation(
        shapes, mode, budget, k=config.top_k, bins=config.bins,
        baseline=config.baseline != "none", rows_per_gemm=config.rows_per_gemm,
        model_bytes=model_bytes(models),
        forward_bytes=forward_bytes([m.adapter for m in models],
                                    min(config.batch_size, n_seq) * dataset.n_ctx, 1),
        scratch_bytes=max(scratch, default=0),
        batch_size=min(config.batch_size, n_seq), extra_bytes=extra_state,
        bf16_copy=config.precision == "bf16", device_type=dev.type)
    semantic = {**config.semantic(), "models": [m.name for m in models],
                "dataset": str(dataset.path), "dataset_fingerprint": fingerprint,
                "dataset_content": dataset_fingerprint(dataset.path),
                "n_seq": n_seq, "world_size": ctx.world_size}

    out = Path(config.out)
    ckpt_path = out / CHECKPOINT_DIR / (f"{STAGE}.rank{ctx.rank}.pt" if ctx.active
                                        else f"{STAGE}.pt")
    state = open_checkpoint(ckpt_path, restart=config.restart)  # verified, or None
    if state is not None:
        check_config(ckpt_path, state["config"], semantic)
        plan = _plan_from_state(plan, state)
        log.info("resuming from %s (passes done: %s)", ckpt_path, state["completed"])
    if ctx.is_main:
        log.info("%s", plan.describe(shapes))

    token_shard = ctx.active and plan.n_passes == 1
    if ctx.active and not token_shard and plan.n_passes < ctx.world_size:
        raise UserError(f"the plan has {plan.n_passes} reference tiles for {ctx.world_size} "
                        f"ranks: run with at most {plan.n_passes} ranks, or with a --max-memory "
                        "that fits one pass (then ranks split the tokens)")
    my_passes = (list(range(plan.n_passes)) if not ctx.active or token_shard
                 else list(range(ctx.rank, plan.n_passes, ctx.world_size)))
    ranges = batch_ranges(n_seq, plan.batch_size or config.batch_size, *((ctx.rank, ctx.world_size) if token_shard
                                                       else (0, 1)))
    summaries = _new_summaries(shapes, mode, config, dev)
    stats: ModelStats | None = None
    completed: list[int] = []
    extras_state: list[Any] | None = None
    stream_totals = StreamStats()
    if state is not None:
        check_progress(ckpt_path, state, plan.n_passes, len(ranges))
        completed = list(state["completed"])
        if state["stats"] is not None:
            stats = ModelStats.from_state(_layout(shapes), state["stats"], dev)
        for key, s in state["summaries"].items():
            a, b = (int(x) for x in key.split("->"))
            summaries[(a, b)].load_state_dict(s)
        extras_state = state.get("extras")
        stream_totals = StreamStats(**state["stream"])
    if extras and state is not None and (extras_state is None or len(extras_state) != len(extras)):
        raise UserError(f"checkpoint {ckpt_path} holds {len(extras_state or [])} extra "
                        f"accumulators but this run has {len(extras)}; pass --restart")
    if extras and extras_state is not None:
        for acc, st in zip(extras, extras_state):
            acc.load_state_dict(st)

    baselines_on = config.baseline != "none"
    # bases are made once per run (a QR per layer) and kept for every pass
    base = Baselines(config.baseline, config.seed, _layout(shapes), dev) if baselines_on else None
    tokens_since = 0
    for p in my_passes:
        if p in completed:
            continue
        feed_extras = p == 0
        moments = CoMoments(shapes, plan.passes[p], site=config.site, layer_cov=stats is None,
                            rows_per_gemm=plan.rows_per_gemm, gemm_rows=plan.gemm_rows,
                            precision=resolved.precision, device=dev)
        start_batch = 0
        cur = state.get("current") if state is not None else None
        if cur is not None and cur["pass"] == p:
            moments.load_state_dict(cur["moments"])
            start_batch = int(cur["next_batch"])
        accs: list[Any] = [moments, *extras] if feed_extras else [moments]
        pass_stats = StreamStats(**cur["stream"]) if cur is not None and cur["pass"] == p \
            else StreamStats()
        base_stats = dataclasses.replace(pass_stats)
        seen_tokens = {"tokens": 0}

        def checkpoint(i: int, s: StreamStats, p=p, moments=moments, base=base_stats,
                       seen=seen_tokens, stats=stats, totals=stream_totals) -> None:
            # called after batch i; `s` counts this stream() call, `base` what came before
            nonlocal tokens_since
            tokens_since += s.tokens - seen["tokens"]
            seen["tokens"] = s.tokens
            if config.checkpoint_every is None or (tokens_since < config.checkpoint_every
                                                   and i != len(ranges) - 1):
                return
            tokens_since = 0
            save_checkpoint(ckpt_path, _state(
                semantic, plan, completed, stats, summaries, totals, extras,
                current={"pass": p, "next_batch": i + 1, "moments": moments.state_dict(),
                         "stream": _add_stats(base, s).to_dict()}))

        ts = time.perf_counter()
        s = stream(dataset, models, accs, ranges, tokenizer=models[0].tokenizer,
                   keep_all=config.keep_tokens, device=dev, start_batch=start_batch,
                   after_batch=checkpoint, progress=config.progress and ctx.is_main,
                   desc=f"correlate pass {p + 1}/{plan.n_passes}")
        moments.release_buffer()
        pass_stats = _add_stats(pass_stats, s)
        timings[f"pass{p}_stream_s"] = time.perf_counter() - ts
        timings[f"pass{p}_forward_s"] = s.forward_s
        timings[f"pass{p}_accumulate_s"] = s.accumulate_s
        if p == my_passes[0]:
            stream_totals = pass_stats
        tf = time.perf_counter()
        if token_shard:
            dd.merge_moments(moments, ctx)
        if stats is None:  # first pass: keep O(N) stats, free the [L, d, d] co-moments
            stats = ModelStats.from_moments(moments, base, free_cov=True)
        moments.cov = None
        if not token_shard or ctx.is_main:
            summarize_moments(moments, stats, summaries, base)
        del moments
        timings[f"pass{p}_summarize_s"] = time.perf_counter() - tf
        completed.append(p)
        if config.checkpoint_every is not None:
            save_checkpoint(ckpt_path, _state(semantic, plan, completed, stats, summaries,
                                              stream_totals, extras, current=None))

    n_kept, n_tokens = stream_totals.kept_tokens, stream_totals.tokens
    if ctx.active:
        if token_shard:
            dd.gather_accumulators(extras, ctx)
            counts = torch.tensor([n_kept, n_tokens], dtype=torch.float64, device=dev)
            torch.distributed.all_reduce(counts)
            n_kept, n_tokens = (int(c) for c in counts.tolist())
        else:
            for s_ in summaries.values():
                dd.reduce_summary(s_, ctx)
            assert stats is not None  # every rank ran at least one pass
            n_kept = stats.n
            n_tokens = n_seq * dataset.n_ctx
    if stats is not None and stats.n != n_kept:
        raise RuntimeError(f"moments saw {stats.n} tokens but the stream kept {n_kept}")
    if n_kept < 2:
        raise UserError(f"only {n_kept} tokens were kept: correlations need at least 2; use "
                        "a larger dataset or --keep-tokens")

    result = CorrelateResult(out, [m.name for m in models], plan, extras=extras,
                             n_tokens=n_tokens, n_kept=n_kept, timings=timings)
    if ctx.is_main:
        _write_outputs(config, result, shapes, mode, summaries, dataset, n_seq, timings, t0,
                       precision=resolved.to_dict())
    ctx.barrier()
    if config.checkpoint_every is not None:
        ckpt_path.unlink(missing_ok=True)
    return result


def _layout(shapes):
    from universal_neurons.engine.layout import Layout

    return Layout(shapes)


def _add_stats(a, b):
    from universal_neurons.engine.runner import StreamStats

    return StreamStats(**{k: getattr(a, k) + getattr(b, k) for k in a.__dict__})


def _plan_from_state(plan: Plan, state: dict[str, Any]) -> Plan:
    """The checkpoint's passes and GEMM sizes (so a resumed run continues the same work)."""
    passes = [[CrossBlock(*b) for b in p] for p in state["plan"]["passes"]]
    if passes != plan.passes or state["plan"]["rows_per_gemm"] != plan.rows_per_gemm:
        log.info("using the checkpoint's plan (%d passes, %d rows per GEMM)", len(passes),
                 state["plan"]["rows_per_gemm"])
    return dataclasses.replace(plan, passes=passes,
                               rows_per_gemm=int(state["plan"]["rows_per_gemm"]),
                               gemm_rows=int(state["plan"]["gemm_rows"]),
                               batch_size=int(state["plan"].get("batch_size", plan.batch_size)))


def _state(semantic, plan, completed, stats, summaries, stream_totals, extras, current):
    return {
        "config": semantic,
        "plan": plan.to_dict(),
        "completed": list(completed),
        "stats": None if stats is None else stats.state_dict(),
        "summaries": {f"{a}->{b}": s.state_dict() for (a, b), s in summaries.items()},
        "stream": stream_totals.to_dict(),
        "extras": None if extras is None else [acc.state_dict() for acc in extras],
        "current": current,
    }


def _new_summaries(shapes, mode, config, dev) -> dict[tuple[int, int], NeuronSummary]:
    out = {}
    for a in range(len(shapes)):
        for b in partner_range(a, len(shapes), mode):
            na, nb = shapes[a].n_neurons, shapes[b].n_neurons
            out[(a, b)] = NeuronSummary(na, nb, config.top_k, config.bins, dev)
            out[(b, a)] = NeuronSummary(nb, na, config.top_k, config.bins, dev)
    return out


def _write_outputs(config, result: CorrelateResult, shapes, mode, summaries, dataset, n_seq,
                   timings, t0, precision: dict[str, Any] | None = None) -> None:
    from safetensors.torch import save_file

    from universal_neurons.analysis.universality import universality_table, write_neuron_table
    from universal_neurons.rundir import RunDir, atomic_path

    run = RunDir(config.out)
    final = {key: s.finalize() for key, s in summaries.items()}
    edges = torch.linspace(*HIST_RANGE, config.bins + 1, dtype=torch.float64)
    files = []
    for (a, b), f in final.items():
        name_a, name_b = shapes[a].name, shapes[b].name
        rel = f"{CORRELATIONS_DIR}/{safe_name(name_a)}__{safe_name(name_b)}.safetensors"
        tensors = {k: v.contiguous() for k, v in f.items()}
        tensors["hist_edges"] = edges
        meta = {"model": name_a, "partner": name_b, "n_layers": str(shapes[a].n_layers),
                "d_mlp": str(shapes[a].d_mlp), "partner_n_layers": str(shapes[b].n_layers),
                "partner_d_mlp": str(shapes[b].d_mlp), "baseline": config.baseline,
                "seed": str(config.seed), "site": config.site, "n_tokens": str(result.n_kept),
                "index": "layer * d_mlp + neuron"}
        with atomic_path(run / rel) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        files.append(rel)
        result.summaries[(name_a, name_b)] = f
    universal = {}
    for a, shape in enumerate(shapes):
        partners = [b for b in range(len(shapes)) if (a, b) in final]
        if mode == "reference" and a != 0:
            continue
        table = universality_table(
            shape.n_layers, shape.d_mlp, {shapes[b].name: final[(a, b)] for b in partners},
            {shapes[b].name: shapes[b].d_mlp for b in partners}, threshold=config.threshold,
            baseline=config.baseline != "none")
        write_neuron_table(run / neuron_table(shape.name), table)
        files.append(neuron_table(shape.name))
        result.tables[shape.name] = table
        universal[shape.name] = {"n_universal": int(table["is_universal"].sum()),
                                 "fraction": float(table["is_universal"].mean())}
        log.info("%s: %d of %d neurons universal (%.2f%%)", shape.name,
                 universal[shape.name]["n_universal"], len(table),
                 100 * universal[shape.name]["fraction"])
    timings["total_s"] = time.perf_counter() - t0
    run.record_stage(
        STAGE, dataclasses.asdict(config),
        models=[s.name for s in shapes], mode=mode,
        seeds={"rotation": config.seed, "baseline": config.baseline},
        tokens={"dataset_tokens": result.n_tokens, "kept_tokens": result.n_kept,
                "sequences": n_seq, "n_ctx": dataset.n_ctx},
        dataset={"path": str(dataset.path), "source": dataset.meta.get("source"),
                 "tokenizer_fingerprint": dataset.fingerprint},
        plan={**result.plan.to_dict(), "total": format_bytes(result.plan.total_bytes)},
        timings=timings, universal=universal, outputs=files, precision=precision)
