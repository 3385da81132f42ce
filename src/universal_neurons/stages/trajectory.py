"""The trajectory stage: universality of member a's neurons at each training checkpoint.

``run_trajectory(TrajectoryConfig(...))`` is what ``universal-neurons trajectory`` runs: for
each checkpoint, load every member of the suite at that checkpoint and run the correlate
stage (``stages.correlate.run_correlate``: one pass, member a against the others) into
``RUN/trajectory/<checkpoint>/``; then follow each neuron of member a (same seed, same
index) across checkpoints (``analysis.trajectory``) and write
``RUN/trajectory/neurons.parquet``, ``RUN/trajectory/summary.parquet``, the
``plots/trajectory_*.png`` figures and the manifest. A checkpoint whose correlate run
finished with the same inputs and options is read back, not recomputed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal

from universal_neurons.constants import (
    PLOTS_DIR,
    TRAJECTORY_CHECKPOINT_RECORD,
    TRAJECTORY_NEURONS,
    TRAJECTORY_SUMMARY,
    neuron_table,
    trajectory_checkpoint_dir,
    trajectory_file,
)
from universal_neurons.engine.precision import PrecisionChoice
from universal_neurons.errors import UserError
from universal_neurons.options import count, dataset_opt, opt, run_opt, threshold_arg, tokens_opt
from universal_neurons.stages.correlate import CorrelateConfig

log = logging.getLogger(__name__)

STAGE = "trajectory"
_POSITION = (("tokens", re.compile(r"tokens[-_]?(\d+)")),
             ("step", re.compile(r"(?:step|checkpoint)[-_]?(\d+)")))
"""How a checkpoint label names its training position (``tokens-250000``, ``step1000``,
``checkpoint-1000``)."""


@dataclass(frozen=True)
class Checkpoint:
    """One training checkpoint: a label (the folder name under ``trajectory/``) and the spec
    of every member at it, in the order of ``TrajectoryConfig.models``."""

    label: str
    specs: tuple[str, ...]
    step: int | None = None
    tokens: int | None = None


@dataclass(frozen=True)
class TrajectoryConfig:
    """Options of the trajectory stage (the CLI flags, one for one)."""

    models: tuple[str, ...] = opt(MISSING, "--models", "--model", metavar="M")
    """Models or a suite (first = member a, whose neurons are followed), e.g.
    pythia-160m-seeds or W/members/tiny-gpt2-a W/members/tiny-gpt2-b."""
    checkpoints: tuple[str, ...] = opt(MISSING, metavar="C")
    """In training order (the last is the reference): hub revisions (step1000 ...: each
    model is loaded as MODEL@step1000) or, for models given as folders, folders relative to
    each (snapshots/tokens-250000 ...)."""
    out: str = run_opt()
    """Run directory."""
    tokenizer: str | None = opt(None, metavar="DIR")
    """Tokenizer folder for checkpoint folders saved without one (the zoo's snapshots:
    W/tokenizer)."""
    dataset: str | None = dataset_opt()
    """Token dataset folder (default: the bundled test split, tokenized)."""
    threshold: float = opt(0.5, type=threshold_arg)
    """Universal if excess_corr exceeds this."""
    baseline: Literal["rotation", "gaussian-rows", "none"] = "rotation"
    """Random basis of the baseline (the same at every checkpoint)."""
    seed: int = 0
    """Seed of the baseline bases (the same at every checkpoint)."""
    site: Literal["post", "pre"] = "post"
    """Neuron activation to correlate (post = mlp.hook_post)."""
    keep_tokens: bool = False
    """Keep BOS/pad and newline tokens (dropped by default)."""
    token_filter: Literal["ours", "paper"] = "ours"
    """Tokens dropped unless --keep-tokens (see `correlate --help`)."""
    precision: PrecisionChoice = "auto"
    """GEMM inputs (see `correlate --help`; auto = fp32 here)."""
    device: str = "cpu"
    """Where to compute (cpu or cuda)."""
    batch_size: int = 8
    """Sequences per forward pass."""
    rows_per_gemm: int = 4096
    """Kept tokens buffered per GEMM."""
    max_memory: str | None = opt(None, metavar="SIZE")
    """Memory budget of each pass, e.g. 16G."""
    max_tokens: int | None = tokens_opt(None)
    """Use only the first N tokens of the dataset at every checkpoint, e.g. 1M."""
    n_ctx: int | None = None
    """Context of the default dataset (default min(512, model n_ctx))."""
    checkpoint_every: int | None = opt(None, type=count, metavar="N")
    """Save the engine's state every N tokens within a checkpoint's pass."""
    restart: bool = False
    """Recompute every checkpoint, even those already done."""
    plots: bool = opt(True, "--no-plots", help="write the tables only (no PNG plots)")
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.models:
            raise UserError("trajectory needs models, e.g. --models pythia-160m-seeds")
        if not self.checkpoints:
            raise UserError("trajectory needs at least one checkpoint, e.g. --checkpoints "
                            "step1000 step10000 step143000")
        if len(set(self.checkpoints)) != len(self.checkpoints):
            raise UserError(f"checkpoints must be distinct, got {list(self.checkpoints)}")
        self.correlate_config(".", ("a", "b"))  # validates the correlate options

    def correlate_config(self, out: str | Path, specs: Sequence[str]) -> CorrelateConfig:
        """The correlate stage's config for one checkpoint (member a first)."""
        return CorrelateConfig(
            models=tuple(specs), out=str(out), dataset=self.dataset, threshold=self.threshold,
            baseline=self.baseline, seed=self.seed, site=self.site,
            keep_tokens=self.keep_tokens, token_filter=self.token_filter,
            precision=self.precision,
            device=self.device, batch_size=self.batch_size, rows_per_gemm=self.rows_per_gemm,
            max_memory=self.max_memory, max_tokens=self.max_tokens, n_ctx=self.n_ctx,
            checkpoint_every=self.checkpoint_every, restart=self.restart,
            progress=self.progress)


@dataclass
class TrajectoryResult:
    rundir: Path
    model: str
    """Member a (whose neurons are followed)."""
    checkpoints: list[Checkpoint]
    neurons: Any
    """``trajectory/neurons.parquet``: one row per (neuron, checkpoint)."""
    summary: Any
    """``trajectory/summary.parquet``: one row per checkpoint."""
    computed: list[str] = field(default_factory=list)
    """Labels of the checkpoints correlated by this call (the others were read back)."""
    plots: list[Path] = field(default_factory=list)


def checkpoint_position(label: str) -> tuple[int | None, int | None]:
    """``(step, tokens)`` named by a checkpoint label (None where it names none)."""
    found = {k: int(m.group(1)) for k, rx in _POSITION if (m := rx.search(label))}
    return found.get("step"), found.get("tokens")


def member_names(models: Sequence[str]) -> list[str]:
    """The display names of the (expanded) members: alias, hub id or folder name."""
    from universal_neurons.models.registry import expand_model_specs, resolve_spec

    return [resolve_spec(m).name for m in expand_model_specs(list(models))]


def resolve_checkpoints(config: TrajectoryConfig) -> list[Checkpoint]:
    """Each checkpoint's member specs: ``model/checkpoint`` for a model folder,
    ``model@checkpoint`` otherwise (checked without loading anything)."""
    from universal_neurons.models.registry import expand_model_specs, resolve_spec

    members = expand_model_specs(list(config.models))
    if len(members) < 2:
        raise UserError(f"trajectory needs at least two models (got {members}); pass a suite "
                        "or several seeds, e.g. --models pythia-160m-seeds")
    out = []
    for c in config.checkpoints:
        specs = []
        for m in members:
            ref = resolve_spec(m)
            if ref.kind == "local":
                folder = Path(ref.location) / c
                if not folder.is_dir():
                    raise UserError(f"checkpoint {c!r}: no folder {folder}; for models given as "
                                    "folders pass checkpoint folders relative to each model "
                                    "folder, e.g. snapshots/tokens-250000")
                specs.append(str(folder))
            else:
                if ref.revision is not None and "@" in m:
                    raise UserError(f"model {m!r} already names a revision; pass it without "
                                    f"@{ref.revision} and list revisions in --checkpoints")
                specs.append(f"{m}@{c}")
                resolve_spec(specs[-1])
        label = Path(c).name if resolve_spec(members[0]).kind == "local" else c
        step, tokens = checkpoint_position(label)
        out.append(Checkpoint(label, tuple(specs), step, tokens))
    labels = [c.label for c in out]
    if len(set(labels)) != len(labels):
        raise UserError(f"checkpoint folders must end in distinct names, got {labels}")
    return out


def run_trajectory(config: TrajectoryConfig,
                   checkpoints: Sequence[Checkpoint] | None = None) -> TrajectoryResult:
    """Run the trajectory stage. ``checkpoints`` may be given explicitly (each with one spec
    per member of ``config.models``, in order); by default :func:`resolve_checkpoints`."""
    from universal_neurons.rundir import RunDir, check_output_dir, write_table

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("trajectory runs in one process; run it without torchrun (each "
                        "checkpoint's pass uses the whole device)")
    t0 = time.perf_counter()
    names = member_names(config.models)
    points = list(checkpoints) if checkpoints is not None else resolve_checkpoints(config)
    _check_points(points, names)
    check_output_dir(config.out)
    frames, computed, kept = [], [], {}
    for index, point in enumerate(points):
        table, n_kept, fresh = _checkpoint_table(config, point, names)
        kept[point.label] = n_kept
        if fresh:
            computed.append(point.label)
        frames.append(_long_rows(table, point, index, names[0]))
    neurons, summary = _analyse(frames, points, kept)
    run = RunDir(config.out)
    write_table(run / trajectory_file(TRAJECTORY_NEURONS), neurons)
    write_table(run / trajectory_file(TRAJECTORY_SUMMARY), summary)
    plots = (_plots(run.path / PLOTS_DIR, neurons, summary, names[0], config.threshold)
             if config.plots else [])
    run.record_stage(STAGE, dataclasses.asdict(config), model=names[0], members=names,
                     checkpoints=[dataclasses.asdict(p) for p in points], computed=computed,
                     timings={"total_s": time.perf_counter() - t0},
                     outputs=[trajectory_file(TRAJECTORY_NEURONS),
                              trajectory_file(TRAJECTORY_SUMMARY)])
    log.info("trajectory of %s over %d checkpoints written to %s (%d computed, %d read back)",
             names[0], len(points), config.out, len(computed), len(points) - len(computed))
    return TrajectoryResult(run.path, names[0], points, neurons, summary, computed, plots)


def _check_points(points: Sequence[Checkpoint], names: Sequence[str]) -> None:
    if not points:
        raise UserError("trajectory needs at least one checkpoint")
    labels = [p.label for p in points]
    if len(set(labels)) != len(labels):
        raise UserError(f"checkpoint labels must be distinct, got {labels}")
    for p in points:
        if len(p.specs) != len(names):
            raise ValueError(f"checkpoint {p.label!r} has {len(p.specs)} specs for "
                             f"{len(names)} members {list(names)}")
    pos = [p.step if p.step is not None else p.tokens for p in points]
    if None not in pos and any(b <= a for a, b in zip(pos, pos[1:])):  # type: ignore[operator]
        raise UserError(f"checkpoints must be in training order, got {labels}; list them "
                        "from the earliest to the last")


def _record(config: TrajectoryConfig, point: Checkpoint, names: Sequence[str]) -> dict:
    """What a checkpoint's results depend on (compared before reading them back)."""
    from universal_neurons.fingerprints import dataset_fingerprint, models_fingerprint

    corr = config.correlate_config(".", point.specs).semantic()
    return {"label": point.label, "specs": list(point.specs), "members": list(names),
            "weights": models_fingerprint(point.specs), "tokenizer": config.tokenizer,
            "dataset": dataset_fingerprint(config.dataset), "correlate": corr}


def _checkpoint_table(config: TrajectoryConfig, point: Checkpoint, names: Sequence[str]
                      ) -> tuple[Any, int | None, bool]:
    """Member a's neuron table at ``point`` (read back when its record matches, else
    computed), its kept-token count, and whether it was computed now."""
    import pandas as pd

    from universal_neurons.rundir import write_json
    from universal_neurons.stages.correlate import run_correlate

    sub = Path(config.out) / trajectory_checkpoint_dir(point.label)
    record_path = sub / TRAJECTORY_CHECKPOINT_RECORD
    want = json.loads(json.dumps(_record(config, point, names), default=str))
    table_path = sub / neuron_table(names[0])
    if not config.restart and record_path.is_file() and table_path.is_file():
        have = json.loads(record_path.read_text())
        if have.get("inputs") == want:
            log.info("checkpoint %s: read back from %s", point.label, sub)
            return pd.read_parquet(table_path), have.get("kept_tokens"), False
        log.info("checkpoint %s: options or inputs changed, recomputing", point.label)
    record_path.unlink(missing_ok=True)
    models = _load_members(config, point, names)
    log.info("checkpoint %s: correlating %s", point.label, ", ".join(point.specs))
    result = run_correlate(config.correlate_config(sub, point.specs), models=models)
    del models
    write_json(record_path, {"inputs": want, "kept_tokens": result.n_kept,
                             "dataset_tokens": result.n_tokens})
    return result.tables[names[0]], result.n_kept, True


def _load_members(config: TrajectoryConfig, point: Checkpoint, names: Sequence[str]) -> list:
    """Every member at ``point``, named by its member name (the same at every checkpoint)."""
    from transformers.utils import logging as hf_logging

    from universal_neurons.models.loading import load_model

    bars = hf_logging.is_progress_bar_enabled()
    if not config.progress:
        hf_logging.disable_progress_bar()
    try:
        return [dataclasses.replace(load_model(s, device=config.device,
                                               tokenizer_dir=config.tokenizer), name=n)
                for s, n in zip(point.specs, names)]
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _long_rows(table: Any, point: Checkpoint, index: int, model: str) -> Any:
    """Member a's neuron table as rows of the trajectory (``[n_neurons]`` rows)."""
    import pandas as pd

    keep = ["layer", "neuron", "mean_corr", "mean_baseline", "excess_corr", "is_universal"]
    out = table[[c for c in keep if c in table.columns]].copy()
    out.insert(0, "model", model)
    out.insert(3, "checkpoint", point.label)
    out.insert(4, "checkpoint_index", index)
    out.insert(5, "step", pd.array([point.step] * len(out), dtype="Int64"))
    out.insert(6, "tokens", pd.array([point.tokens] * len(out), dtype="Int64"))
    out["is_universal"] = out["is_universal"].fillna(False).astype(bool)
    return out


def _analyse(frames: list, points: Sequence[Checkpoint], kept: dict) -> tuple[Any, Any]:
    import pandas as pd

    from universal_neurons.analysis.trajectory import checkpoint_summary, neuron_trajectories

    long = pd.concat(frames, ignore_index=True)
    neurons = neuron_trajectories(long)
    summary = checkpoint_summary(long)
    summary.insert(2, "step", pd.array([p.step for p in points], dtype="Int64"))
    summary.insert(3, "tokens", pd.array([p.tokens for p in points], dtype="Int64"))
    summary.insert(4, "kept_tokens", pd.array([kept.get(p.label) for p in points],
                                              dtype="Int64"))
    return neurons, summary


def _plots(folder: Path, neurons: Any, summary: Any, model: str, threshold: float
           ) -> list[Path]:
    from universal_neurons.report.plots_trajectory import plot_trajectory

    try:
        return plot_trajectory(neurons, summary, folder, model, threshold)
    except UserError as e:  # matplotlib missing: tables are still written
        log.warning("no trajectory plots: %s", e)
        return []
