"""The correlate stage: models + tokens -> per-neuron universality and per-pair summaries.

``run_correlate(CorrelateConfig(...))`` is what ``universal-neurons correlate`` runs: load
the models, open the dataset, check the run directory, run ``engine.correlate_pass`` (plan
memory, stream the tokens into the co-moments and any extra accumulators, summarise), then
write ``neurons/<model>.parquet``, ``correlations/<a>__<b>.safetensors`` and the manifest.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from universal_neurons.analysis.calibration import (
    block_columns,
    loo_excess,
    share_summary,
    threshold_curve_table,
)
from universal_neurons.constants import (
    CHECKPOINT_DIR,
    THRESHOLD_CURVE,
    correlations_file,
    neuron_table,
)
from universal_neurons.engine.correlate_pass import (
    Checkpointing,
    PassOptions,
    PassResult,
    correlate_pass,
    plan_pass,
)
from universal_neurons.engine.layout import Mode, ModelShape
from universal_neurons.engine.moments import Precision
from universal_neurons.engine.planner import Plan
from universal_neurons.engine.precision import CHOICES as PRECISION_CHOICES
from universal_neurons.engine.precision import PrecisionChoice
from universal_neurons.engine.rotation import BASELINES
from universal_neurons.engine.sizes import format_bytes
from universal_neurons.errors import UserError
from universal_neurons.options import count, dataset_opt, opt, run_opt, threshold_arg, tokens_opt

log = logging.getLogger(__name__)

STAGE = "correlate"
HIST_RANGE = (-1.0, 1.0)


@dataclass(frozen=True)
class CorrelateConfig:
    """Options of the correlate stage (the CLI flags, one for one)."""

    models: tuple[str, ...] = opt(MISSING, "--models", "--model", metavar="M")
    """Models or suites (first = reference unless --all-pairs), e.g. tiny-gpt2 or
    stanford-gpt2-small-a stanford-gpt2-small-b."""
    out: str = run_opt()
    """Run directory."""
    dataset: str | None = dataset_opt()
    """Token dataset folder (default: the bundled test split, tokenized)."""
    all_pairs: bool = False
    """Every model against every other (each model gets a neuron table)."""
    threshold: float = opt(0.5, type=threshold_arg)
    """Universal if excess_corr exceeds this."""
    baseline: Literal["rotation", "gaussian-rows", "none"] = "rotation"
    """Random basis of the baseline: Haar rotation, the paper code's normalised Gaussian
    rows, or none."""
    seed: int = 0
    """Seed of the baseline bases."""
    rotations: int = 1
    """Baseline draws: K bases per layer give each neuron a K-draw null, ``baseline_std``,
    ``p_value`` ((1 + #draws >= observed) / (K + 1)) and the Benjamini-Hochberg ``q_value``
    (1 = the paper's single baseline; each draw costs two GEMMs per chunk, docs/engine.md)."""
    blocks: int = 1
    """Split the tokens into B >= 2 contiguous blocks for a delete-one-block jackknife:
    ``excess_ci_low/high`` (95%), ``excess_corr_block<j>``, ``split_half_agreement``
    (universal in every block); co-moment memory grows about (B + 1)-fold (1 = off)."""
    site: Literal["post", "pre"] = "post"
    """Neuron activation to correlate (post = mlp.hook_post)."""
    keep_tokens: bool = False
    """Keep BOS/pad and newline tokens (dropped by default; the paper drops only pad/BOS and
    the single `\\n` token: docs/engine.md)."""
    token_filter: Literal["ours", "paper"] = "ours"
    """Tokens dropped unless --keep-tokens: ours drops BOS/EOS/pad and every whitespace token
    containing a newline; paper drops only the pad/BOS token and the single newline token
    (data/tokens.py, docs/paper.md)."""
    top_k: int = 10
    """Top/bottom partners kept per neuron."""
    bins: int = 100
    """Histogram bins on [-1, 1]."""
    precision: PrecisionChoice = "auto"
    """GEMM inputs (float32 accumulation). auto: the fastest precision native on the device
    whose error bound is within --precision-tolerance (fp32 unless a tolerance is given).
    bf16 is fast only on CUDA >= 8.0 and AVX512-BF16/AMX CPUs, tf32 only on CUDA >= 8.0;
    elsewhere they fall back to fp32 with a warning (docs/engine.md; recorded in the manifest)."""
    sums: Literal["fp64", "fp32"] = "fp64"
    """Co-moment sums: fp64 (exact at any token count) or fp32 (half the memory, fewer
    passes: GPT-2 medium x 5 in 3 on an 80 GB GPU instead of 7; worst-case correlation
    error 3.4e-3 at 100M tokens and 4,096 rows, typically ~4e-5: docs/engine.md)."""
    precision_strict: bool = False
    """Refuse a precision the device does not run natively (instead of using fp32)."""
    precision_tolerance: float | None = opt(None, metavar="BOUND")
    """Worst-case correlation error --precision auto may accept, e.g. 0.03 to allow bf16
    where it is native (default: the fp32 bound, ~5e-4)."""
    device: str = "cpu"
    """Where to compute (cpu or cuda)."""
    batch_size: int = 8
    """Sequences per forward pass."""
    rows_per_gemm: int = 4096
    """Kept tokens buffered per GEMM (the planner may lower it to fit memory)."""
    max_memory: str | None = opt(None, metavar="SIZE")
    """Budget, e.g. ``8G``; default 70% of available RAM (90% of free GPU memory on CUDA)."""
    max_tokens: int | None = tokens_opt(None)
    """Use only the first N tokens of the dataset (whole sequences), e.g. 1M."""
    n_ctx: int | None = None
    """Context of the default dataset (default ``min(512, model n_ctx)``)."""
    checkpoint_every: int | None = opt(None, type=count, metavar="N")
    """Checkpoint every N tokens; rerunning the command resumes after checking the
    checkpoint's SHA-256, options and dataset (default: no checkpoints)."""
    restart: bool = False
    """Discard an existing checkpoint (also one that fails its checks)."""
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
        for name, allowed in (("sums", ("fp64", "fp32")), ("site", ("post", "pre"))):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be {' or '.join(allowed)}, got "
                                f"{getattr(self, name)!r}")
        if self.blocks < 1:
            raise UserError(f"--blocks must be 1 (off) or at least 2, got {self.blocks}")
        if self.blocks > 1 and self.checkpoint_every is not None:
            raise UserError(f"--blocks {self.blocks} does not checkpoint: drop "
                            "--checkpoint-every or use --blocks 1")
        if self.rotations > 1 and self.baseline == "none":
            raise UserError(f"--rotations {self.rotations} needs a baseline; drop "
                            "--baseline none or use --rotations 1")
        for name in ("top_k", "bins", "batch_size", "rows_per_gemm", "rotations", "max_tokens",
                     "checkpoint_every", "n_ctx"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {v}")

    def semantic(self) -> dict[str, Any]:
        """The options that change results (checked when resuming)."""
        skip = {"out", "max_memory", "checkpoint_every", "restart", "progress",
                "precision_strict", "precision_tolerance"}  # `precision`: the resolved one
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}

    def pass_options(self, precision: Precision) -> PassOptions:
        """The options the engine's correlate pass needs, with the resolved ``precision``."""
        return PassOptions(site=self.site, baseline=self.baseline, seed=self.seed,
                           rotations=self.rotations, blocks=self.blocks,
                           keep_tokens=self.keep_tokens,
                           token_filter=self.token_filter, top_k=self.top_k, bins=self.bins,
                           precision=precision, sums=self.sums, batch_size=self.batch_size,
                           progress=self.progress)


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
    universal: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per model: ``n_universal``, ``fraction`` and, as computed, ``fraction_ci_low/high``
    and ``n_significant`` (also in the manifest)."""


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
        models = list(models) if models is not None else load_models(config, device)
        timings["load_s"] = time.perf_counter() - t0
        return _run(config, list(extra_accumulators), models, device, ctx, timings, t0)
    finally:
        ctx.close()


def load_models(config: CorrelateConfig, device: str) -> list[Any]:
    """The configured models (suites expanded), loaded on ``device``."""
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


def open_dataset(config: CorrelateConfig, models: Sequence[Any]):
    """The configured token dataset for ``models`` and its number of sequences."""
    from universal_neurons.data.dataset import dataset_for_models

    return dataset_for_models(models, config.dataset, config.n_ctx, config.max_tokens,
                              show_progress=config.progress)


def _run(config: CorrelateConfig, extras: list[Any], models: list[Any], device: str, ctx,
         timings: dict[str, float], t0: float) -> CorrelateResult:
    from universal_neurons.engine.precision import detect_caps, resolve_precision
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
    dataset, n_seq = open_dataset(config, models)
    if config.blocks > n_seq:
        raise UserError(f"--blocks {config.blocks} needs as many sequences, the dataset gives "
                        f"{n_seq}: use fewer blocks or more --max-tokens")
    mode: Mode = "all-pairs" if config.all_pairs else "reference"
    opts = config.pass_options(resolved.precision)
    plan = plan_pass(models, shapes, mode, dataset.n_ctx, n_seq, opts, extras=extras,
                     max_memory=config.max_memory, rows_per_gemm=config.rows_per_gemm,
                     ctx=ctx, device=device)
    semantic = {**config.semantic(), "models": [m.name for m in models],
                "dataset": str(dataset.path), "dataset_fingerprint": fingerprint,
                "dataset_content": dataset_fingerprint(dataset.path),
                "n_seq": n_seq, "world_size": ctx.world_size}
    out = Path(config.out)
    ckpt = Checkpointing(out / CHECKPOINT_DIR / (f"{STAGE}.rank{ctx.rank}.pt" if ctx.active
                                                 else f"{STAGE}.pt"),
                         every=config.checkpoint_every, restart=config.restart,
                         semantic=semantic)
    done = correlate_pass(models, dataset, n_seq, plan=plan, mode=mode, opts=opts,
                          checkpoint=ckpt, extras=extras, ctx=ctx, device=device,
                          timings=timings)
    result = CorrelateResult(out, [m.name for m in models], done.plan, extras=extras,
                             n_tokens=done.n_tokens, n_kept=done.n_kept, timings=timings)
    if ctx.is_main:
        _write_outputs(config, result, shapes, mode, done, dataset, n_seq, t0,
                       precision=resolved.record(config.sums, done.plan.rows_per_gemm,
                                                 done.n_kept))
    ctx.barrier()
    if config.checkpoint_every is not None:
        ckpt.path.unlink(missing_ok=True)
    return result


def _write_outputs(config: CorrelateConfig, result: CorrelateResult, shapes: list[ModelShape],
                   mode: Mode, done: PassResult, dataset, n_seq: int, t0: float,
                   precision: dict[str, Any] | None = None) -> None:
    from universal_neurons.rundir import RunDir, write_table

    run = RunDir(config.out)
    final = {key: s.finalize() for key, s in done.summaries.items()}
    files = _write_correlations(run, config, result, shapes, final)
    unions = {u: {key: s.finalize() for key, s in summ.items()}
              for u, summ in done.unions.items()}
    curves: dict[str, Any] = {}
    universal = _write_tables(run, config, result, shapes, mode, final, unions, curves)
    files += [neuron_table(name) for name in universal]
    result.universal = universal
    write_table(run / THRESHOLD_CURVE, threshold_curve_table(curves), csv=False)
    files.append(THRESHOLD_CURVE)
    timings = result.timings
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


def _write_correlations(run, config: CorrelateConfig, result: CorrelateResult,
                        shapes: list[ModelShape], final) -> list[str]:
    """``correlations/<a>__<b>.safetensors`` of every direction of every pair."""
    from safetensors.torch import save_file

    from universal_neurons.rundir import atomic_path

    edges = torch.linspace(*HIST_RANGE, config.bins + 1, dtype=torch.float64)
    files = []
    for (a, b), f in final.items():
        name_a, name_b = shapes[a].name, shapes[b].name
        rel = correlations_file(name_a, name_b)
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
    return files


def _write_tables(run, config: CorrelateConfig, result: CorrelateResult,
                  shapes: list[ModelShape], mode: Mode, final, unions=None,
                  curves: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """``neurons/<model>.parquet`` of the reference (every model with all pairs); the
    universal counts of each, by model name. ``unions``: finalised summaries of every
    proper union of token blocks (``--blocks``), for the jackknife columns; ``curves``
    receives each model's ``(excess_corr, leave-one-block-out excess or None)``."""
    from universal_neurons.analysis.universality import write_neuron_table

    universal = {}
    for a, shape in enumerate(shapes):
        if mode == "reference" and a != 0:
            continue
        table = _table(config, shapes, a, final)
        loo = None
        if unions:
            excess = {u: _table(config, shapes, a, f)["excess_corr"].to_numpy()
                      for u, f in unions.items()}
            excess[tuple(range(config.blocks))] = table["excess_corr"].to_numpy()
            loo = loo_excess(excess, config.blocks)
            for col, v in block_columns(excess[tuple(range(config.blocks))], excess,
                                        config.blocks, config.threshold).items():
                table[col] = v
        write_neuron_table(run / neuron_table(shape.name), table)
        result.tables[shape.name] = table
        universal[shape.name] = share_summary(table, loo, config.threshold)
        if curves is not None:
            curves[shape.name] = (table["excess_corr"].to_numpy(), loo)
        log.info("%s: %d of %d neurons universal (%.2f%%)", shape.name,
                 universal[shape.name]["n_universal"], len(table),
                 100 * universal[shape.name]["fraction"])
    return universal


def _table(config: CorrelateConfig, shapes: list[ModelShape], a: int, final):
    """The universality table of model ``a`` from finalised summaries ``final[(a, b)]``."""
    from universal_neurons.analysis.universality import universality_table

    partners = [b for b in range(len(shapes)) if (a, b) in final]
    shape = shapes[a]
    return universality_table(
        shape.n_layers, shape.d_mlp, {shapes[b].name: final[(a, b)] for b in partners},
        {shapes[b].name: shapes[b].d_mlp for b in partners}, threshold=config.threshold,
        baseline=config.baseline != "none")
