"""The whole study as a sequence of cached stages (``universal-neurons run``).

Each stage is one subcommand with its arguments. A stage is skipped when a previous run in
the same directory finished it with the same arguments, package version and upstream
stages (its *key*); otherwise it runs, and every stage after it runs again. Stages record
their keys in ``RUN/pipeline.json`` only after they finish, so an interrupted run resumes
at the first unfinished stage (and the correlate stage resumes from its own checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from universal_neurons import __version__
from universal_neurons.errors import UserError
from universal_neurons.rundir import write_json

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"


@dataclass(frozen=True)
class RunConfig:
    """Settings of ``universal-neurons run`` (also readable from a TOML file)."""

    models: tuple[str, ...] = ("tiny-gpt2",)
    """Models or suites; the first model is the one explained in depth."""
    dataset: str | None = None
    """Token dataset folder; default: the bundled test split tokenized for the models."""
    tokens: int = 100_000
    """Tokens streamed by the correlation/statistics pass."""
    explain_tokens: int = 50_000
    """Tokens used for variance-reduction explanations."""
    intervention_tokens: int = 2_000
    """Tokens used for the entropy sweeps and attention path ablation."""
    out: str = "runs/default"
    threshold: float = 0.5
    all_pairs: bool = False
    baseline: str = "rotation"
    seed: int = 0
    device: str = "cpu"
    top_percent: float | None = None
    """Compare the top P% by excess correlation in the claims table (default: threshold)."""
    skip: tuple[str, ...] = ()
    """Stages not to run."""
    extra: dict[str, list[str]] = field(default_factory=dict)
    """Extra command-line arguments per stage, e.g. ``{"correlate": ["--batch-size", "4"]}``."""

    def __post_init__(self) -> None:
        if not self.models:
            raise UserError("run needs at least one model (--models)")
        if self.tokens < 1 or self.explain_tokens < 1 or self.intervention_tokens < 1:
            raise UserError(f"token counts must be positive, got tokens={self.tokens}, "
                            f"explain_tokens={self.explain_tokens}, "
                            f"intervention_tokens={self.intervention_tokens}")
        unknown = set(self.skip) - set(STAGE_NAMES)
        if unknown:
            raise UserError(f"unknown stage(s) to skip {sorted(unknown)}; stages are "
                            f"{', '.join(STAGE_NAMES)}")


STAGE_NAMES = ("correlate", "weights", "properties", "explain", "families", "entropy",
               "attention", "report")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config; keys are RunConfig fields (``[extra]`` holds per-stage args)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise UserError("reading a TOML config needs Python 3.11 or newer") from None
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {p} is not valid TOML: {e}") from None
    known = set(RunConfig.__dataclass_fields__)
    bad = set(data) - known
    if bad:
        raise UserError(f"unknown key(s) {sorted(bad)} in {p}; known keys: {sorted(known)}")
    for k in ("models", "skip"):
        if k in data:
            data[k] = tuple([data[k]] if isinstance(data[k], str) else data[k])
    return data


def stage_commands(cfg: RunConfig, reference: str) -> list[tuple[str, list[str]]]:
    """The subcommand argument lists of every stage, in order."""
    out = cfg.out
    ds = ["--dataset", cfg.dataset] if cfg.dataset else []
    correlate = ["correlate", "--models", *cfg.models, "--out", out, *ds,
                 "--max-tokens", str(cfg.tokens), "--threshold", str(cfg.threshold),
                 "--baseline", cfg.baseline, "--seed", str(cfg.seed), "--device", cfg.device,
                 "--stats"]
    if cfg.tokens >= 10_000_000:  # checkpoints cost a full state write; worth it on long runs
        correlate += ["--checkpoint-every", str(cfg.tokens // 10)]
    if cfg.all_pairs:
        correlate.append("--all-pairs")
    properties = ["properties", out, "--threshold", str(cfg.threshold)]
    if cfg.top_percent is not None:
        properties += ["--top-percent", str(cfg.top_percent)]
    stages = [
        ("correlate", correlate),
        ("weights", ["weights", "--model", *cfg.models, "--out", out, "--device", cfg.device]),
        ("properties", properties),
        ("explain", ["explain", "--model", reference, "--out", out, *ds, "--max-tokens",
                     str(cfg.explain_tokens), "--neurons", "all"]),
        ("families", ["families", out]),
        ("entropy", ["entropy", "--model", reference, "--out", out, *ds, "--tokens",
                     str(cfg.intervention_tokens), "--device", cfg.device]),
        ("attention", ["attention", "--model", reference, "--out", out, *ds, "--tokens",
                       str(cfg.intervention_tokens), "--device", cfg.device]),
        ("report", ["report", out]),
    ]
    return [(name, args + cfg.extra.get(name, [])) for name, args in stages
            if name not in cfg.skip]


def stage_key(args: list[str], upstream: str) -> str:
    blob = json.dumps({"args": args, "version": __version__, "upstream": upstream})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_pipeline(cfg: RunConfig, invoke: Callable[[list[str]], int], quiet: bool = False,
                 force: bool = False) -> dict[str, Any]:
    """Run every stage through ``invoke(argv) -> exit code``; returns the pipeline record."""
    from universal_neurons.models.registry import expand_model_specs

    members = expand_model_specs(list(cfg.models))
    if len(members) < 2:
        raise UserError(f"run compares models trained from different seeds: got only "
                        f"{members}; give a suite (e.g. tiny-gpt2) or several models")
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / PIPELINE_FILE
    record = json.loads(record_path.read_text()) if record_path.exists() and not force else {}
    record.setdefault("stages", {})
    record["config"] = asdict(cfg)
    upstream = ""
    stages = stage_commands(cfg, members[0])
    t_all = time.perf_counter()
    for i, (name, args) in enumerate(stages, 1):
        argv = args + (["--quiet"] if quiet else [])
        key = stage_key(args, upstream)
        upstream = key
        done = record["stages"].get(name, {})
        if done.get("key") == key:
            log.info("[%d/%d] %s: unchanged, skipped", i, len(stages), name)
            continue
        log.info("[%d/%d] %s: universal-neurons %s", i, len(stages), name, " ".join(argv))
        t0 = time.perf_counter()
        code = invoke(argv)
        if code != 0:
            raise UserError(f"stage {name} failed (exit {code}); fix the error above and rerun "
                            "the same command to resume from this stage")
        record["stages"][name] = {"key": key, "seconds": round(time.perf_counter() - t0, 2),
                                  "argv": args}
        write_json(record_path, record)
    record["total_seconds_last_run"] = round(time.perf_counter() - t_all, 2)
    write_json(record_path, record)
    return record
