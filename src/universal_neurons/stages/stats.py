"""The stats stage: activation statistics of every neuron, in one pass over the tokens.

``run_stats(StatsConfig(...))`` is what ``universal-neurons stats`` runs: load the models,
open the dataset, stream it once feeding one ``ActivationStats`` per model (moments of the
pre-activation, sparsity, histograms, top examples, per-token table), write
``stats/<model>/activation_stats.safetensors``, join the columns into
``neurons/<model>.parquet`` and record the stage in the manifest.
``run_correlate_with_stats(CorrelateConfig(...))`` computes the same statistics inside the
correlate stage's first pass (``universal-neurons correlate --stats``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from universal_neurons.errors import UserError
from universal_neurons.options import dataset_opt, models_opt, opt, run_opt, tokens_opt

if TYPE_CHECKING:
    from universal_neurons.stages.correlate import CorrelateConfig, CorrelateResult

STAGE = "stats"


@dataclass(frozen=True)
class StatsConfig:
    """Options of the stats stage (the CLI flags, one for one)."""

    models: tuple[str, ...] = models_opt()
    """Models or suites (aliases, HF ids, folders); one pass for all."""
    out: str = run_opt()
    """Run directory."""
    dataset: str | None = dataset_opt()
    """Token dataset folder; None = the bundled test split tokenized for the models."""
    max_tokens: int | None = tokens_opt(None)
    """Use only the first N tokens of the dataset (whole sequences), e.g. 1M."""
    n_ctx: int | None = None
    """Context of the default dataset (default ``min(512, model n_ctx)``)."""
    keep_tokens: bool = False
    """Keep BOS/pad and newline tokens (dropped by default; the paper drops only pad/BOS and
    the single `\\n` token: docs/engine.md)."""
    token_filter: Literal["ours", "paper"] = "ours"
    """Tokens dropped unless --keep-tokens: ours drops BOS/EOS/pad and every whitespace token
    containing a newline; paper drops only the pad/BOS token and the single newline token
    (data/tokens.py, docs/paper.md)."""
    sparsity_rule: str = opt("post>0", metavar="RULE")
    """When a neuron counts as active: ``post>0`` or e.g. ``pre>-0.1``."""
    bins: int = 64
    """Histogram bins per neuron."""
    top_k: int = 16
    """Top activating examples kept per neuron."""
    frequent_tokens: int = opt(1000, metavar="N")
    """Track per-token activations of up to this many most frequent tokens."""
    token_table_mb: float = opt(256.0, metavar="MB")
    """Memory budget of the per-token table per model, in MiB."""
    device: str = "cpu"
    """Where to compute (cpu or cuda)."""
    batch_size: int = 8
    """Sequences per forward pass."""
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.models:
            raise UserError("stats needs at least one model, e.g. --model tiny-gpt2-a")


@dataclass
class StatsResult:
    """What a stats run produced."""

    rundir: Path
    models: list[str]
    files: list[str] = field(default_factory=list)
    n_seq: int = 0
    n_tokens: int = 0
    n_kept: int = 0


def run_stats(config: StatsConfig) -> StatsResult:
    """Run the stats stage: one pass over the tokens for every model."""
    from universal_neurons.analysis.neuron_table import write_activation_stats
    from universal_neurons.data.dataset import dataset_for_models
    from universal_neurons.engine.activation_stats import (
        ActivationStatsConfig,
        activation_stats_for,
    )
    from universal_neurons.engine.runner import batch_ranges, stream
    from universal_neurons.models.loading import load_models
    from universal_neurons.rundir import RunDir

    t0 = time.perf_counter()
    acc_config = ActivationStatsConfig(n_bins=config.bins, top_k=config.top_k,
                                       sparsity_rule=config.sparsity_rule)
    models = load_models(list(config.models), device=config.device)
    ds, n_seq = dataset_for_models(models, config.dataset, config.n_ctx, config.max_tokens,
                                   show_progress=config.progress)
    accs = activation_stats_for(models, ds, n_seq, acc_config,
                                token_budget_bytes=int(config.token_table_mb * 2**20),
                                n_frequent_tokens=config.frequent_tokens,
                                keep_all=config.keep_tokens, keep_rule=config.token_filter,
                                device=config.device)
    s = stream(ds, models, accs, batch_ranges(n_seq, config.batch_size),
               tokenizer=models[0].tokenizer, keep_all=config.keep_tokens,
               keep_rule=config.token_filter,
               device=config.device, progress=config.progress, desc=STAGE)
    run_dir = RunDir(config.out)
    t1 = time.perf_counter()
    results = with_examples(accs, models, ds, config.device, config.batch_size)
    examples_s = time.perf_counter() - t1
    files = write_activation_stats(run_dir.path, results)
    run_dir.record_stage(
        STAGE, {**dataclasses.asdict(acc_config), "models": list(config.models),
                "dataset": str(ds.path), "keep_tokens": config.keep_tokens,
                "token_filter": config.token_filter, "frequent_tokens": config.frequent_tokens,
                "token_table_mb": config.token_table_mb},
        models=[m.name for m in models], outputs=files,
        tokens={"sequences": n_seq, "tokens": s.tokens, "kept_tokens": s.kept_tokens},
        timings={"forward_s": s.forward_s, "accumulate_s": s.accumulate_s,
                 "examples_s": examples_s, "total_s": time.perf_counter() - t0})
    return StatsResult(run_dir.path, [m.name for m in models], files, n_seq, s.tokens,
                       s.kept_tokens)


def run_correlate_with_stats(config: CorrelateConfig) -> CorrelateResult:
    """The correlate stage with every model's activation statistics (default
    ``ActivationStatsConfig``) computed from the same forward passes and written as the
    stats stage writes them (rank 0)."""
    from universal_neurons.analysis.neuron_table import write_activation_stats
    from universal_neurons.engine.activation_stats import activation_stats_for
    from universal_neurons.stages.correlate import load_models, open_dataset, run_correlate

    models = load_models(config, config.device)
    dataset, n_seq = open_dataset(config, models)
    accs = activation_stats_for(models, dataset, n_seq, keep_all=config.keep_tokens,
                                keep_rule=config.token_filter, device=config.device)
    result = run_correlate(config, extra_accumulators=accs, models=models)
    if result.tables:  # rank 0
        write_activation_stats(result.rundir, with_examples(accs, models, dataset, config.device))
    return result


def with_examples(accs, models, dataset, device: str, batch_size: int = 8) -> list:
    """Finalize each model's statistics and add the examples a report shows, with the
    activation at every token of their windows (``engine.example_windows``: one more
    forward per sequence an example comes from)."""
    from universal_neurons.engine.example_windows import ExampleConfig, add_examples

    by_name = {m.name: m for m in models}
    out = []
    for acc in accs:
        res = acc.finalize()
        add_examples(res, by_name[res.model].adapter, dataset.tokens,
                     ExampleConfig(batch_size=batch_size), device)
        out.append(res)
    return out
