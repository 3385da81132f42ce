"""The whole study as a sequence of cached stages (``universal-neurons run``).

Each stage is a stage runner (``stages.<stage>.run_<stage>``) called with its config
(:func:`stage_configs`: the run's settings plus per-stage extra options). A stage is skipped only when a previous
run in the same directory finished it with the same config and package version, the
same inputs (token dataset: ``meta.json`` and ``tokens.npy`` identity; models: weight file
identities, see :mod:`universal_neurons.fingerprints`), the same run of the stage before it
(whose outputs it reads), and when all its outputs (:data:`outputs.STAGE_OUTPUTS`) are on
disk as the pipeline left them (same files, sizes and modification times). Otherwise it
runs, the log says why ("dataset changed", "outputs missing: ..."), and every stage after
it runs again. Stages record themselves in ``RUN/pipeline.json`` only after they finish
and their outputs are checked, so an interrupted run resumes at the first unfinished stage
(and the correlate stage resumes from its own checkpoint), and a run never reports success
with outputs missing.
"""

from __future__ import annotations

import json
import logging
import math
import time
import types
import typing
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from universal_neurons import __version__
from universal_neurons.errors import UserError
from universal_neurons.outputs import (
    changed_outputs,
    missing_outputs,
    output_state,
    run_output_bytes,
)
from universal_neurons.rundir import check_output_dir, write_json

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"

STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "correlate": ("dataset", "models"), "weights": ("models",),
    "explain": ("dataset", "models"), "entropy": ("dataset", "models"),
    "attention": ("dataset", "models"), "paper-results": ("dataset", "models"),
}
"""Stage -> the run inputs it reads besides earlier stages' outputs."""


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
    token_filter: str = "ours"
    """Tokens the passes drop: ``ours`` or ``paper`` (see ``correlate --help``)."""
    top_percent: float | None = None
    """Compare the top P% by excess correlation in the claims table (default: threshold)."""
    max_memory: str | None = None
    """Memory budget of the correlate pass and of the explain stage's token table, e.g.
    ``16G`` (default: each stage's own, 70% of available RAM)."""
    precision: str | None = None
    """GEMM inputs of the correlate pass (``fp32``, ``tf32``, ``bf16``; default: correlate's)."""
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
        if not (math.isfinite(self.threshold) and 0 < self.threshold <= 1):
            raise UserError(f"threshold must be in (0, 1], got {self.threshold!r}; e.g. 0.5")
        if self.top_percent is not None and not 0 < self.top_percent <= 100:
            raise UserError(f"top_percent must be in (0, 100], got {self.top_percent!r}")
        if self.max_memory is not None:
            from universal_neurons.engine.sizes import parse_bytes

            parse_bytes(self.max_memory)  # UserError naming the value
        if self.token_filter not in ("ours", "paper"):
            raise UserError(f"token_filter must be ours or paper, got {self.token_filter!r}")
        unknown = set(self.skip) - set(STAGE_NAMES)
        if unknown:
            raise UserError(f"unknown stage(s) to skip {sorted(unknown)}; stages are "
                            f"{', '.join(STAGE_NAMES)}")


STAGE_NAMES = ("correlate", "weights", "properties", "explain", "families", "entropy",
               "attention", "paper-results", "paper", "report")


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML config. Keys are RunConfig fields, spelled like the long options
    (``explain-tokens``) or the fields (``explain_tokens``); ``[extra]`` holds per-stage
    argument lists. Unknown keys and values of the wrong type are one-line UserErrors."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise UserError("reading a TOML config needs Python 3.11 or newer") from None
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {p} does not exist")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {p} is not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config file {p} ({e})") from None
    data = {k.replace("-", "_"): v for k, v in raw.items()}
    known = set(RunConfig.__dataclass_fields__)
    bad = [k for k in raw if k.replace("-", "_") not in known]
    if bad:
        raise UserError(f"unknown key(s) {sorted(bad)} in {p}; known keys: "
                        f"{sorted(k.replace('_', '-') for k in known)}")
    hints = typing.get_type_hints(RunConfig)
    for k, v in data.items():
        if k.endswith("tokens") and isinstance(v, str):
            v = data[k] = _toml_count(p, k, v)
        if not _conforms(v, hints[k]):
            raise UserError(f"config file {p}: {k.replace('_', '-')} must be "
                            f"{_describe(hints[k])}, got {v!r}")
    for k in ("models", "skip"):
        if k in data:
            data[k] = tuple([data[k]] if isinstance(data[k], str) else data[k])
    return data


def _toml_count(p: Path, key: str, text: str) -> int:
    from universal_neurons.data.dataset import parse_count

    try:
        return parse_count(text)
    except ValueError:
        raise UserError(f"config file {p}: {key.replace('_', '-')} must be an integer or a "
                        f"count like \"10M\", got {text!r}") from None


def _conforms(v: Any, tp: Any) -> bool:
    """Whether a TOML value fits a RunConfig annotation (str, int, float, bool, tuple[str,
    ...], dict[str, list[str]], X | None)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(v, a) for a in args if a is not type(None))
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if origin in (tuple, list):  # a tuple field also takes one string (models = "gpt2")
        return (origin is tuple and isinstance(v, str)) or (
            isinstance(v, list) and all(_conforms(x, args[0]) for x in v))
    if origin is dict:
        return isinstance(v, dict) and all(isinstance(k, str) and _conforms(x, args[1])
                                           for k, x in v.items())
    return True


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin in (tuple, list):
        return "a list of strings"
    if origin is dict:
        return "a table of string lists (stage = [\"--option\", \"value\"])"
    return {bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(tp, str(tp))


def stage_configs(cfg: RunConfig, reference: str) -> list[tuple[str, Any]]:
    """``(stage, config)`` of every stage not skipped, in order: the settings of ``cfg``,
    then each stage's ``cfg.extra`` arguments (its own command-line options) on top."""
    from universal_neurons.stages.attention import AttentionConfig
    from universal_neurons.stages.correlate import CorrelateConfig
    from universal_neurons.stages.entropy import EntropyConfig
    from universal_neurons.stages.explain import ExplainConfig
    from universal_neurons.stages.families import FamiliesConfig
    from universal_neurons.stages.paper import PaperConfig
    from universal_neurons.stages.paper_results import PaperResultsConfig
    from universal_neurons.stages.properties import PropertiesConfig
    from universal_neurons.stages.report import ReportStageConfig
    from universal_neurons.stages.weights import WeightsConfig

    out, ds = cfg.out, cfg.dataset
    memory = {"max_memory": cfg.max_memory} if cfg.max_memory else {}
    correlate = dict(models=cfg.models, out=out, dataset=ds, max_tokens=cfg.tokens,
                     threshold=cfg.threshold, baseline=cfg.baseline, seed=cfg.seed,
                     device=cfg.device, all_pairs=cfg.all_pairs,
                     token_filter=cfg.token_filter, **memory)
    if cfg.tokens >= 10_000_000:  # checkpoints cost a full state write; worth it on long runs
        correlate["checkpoint_every"] = cfg.tokens // 10
    if cfg.precision:
        correlate["precision"] = cfg.precision
    one = dict(model=reference, out=out, dataset=ds)
    stages: list[tuple[str, type, dict[str, Any]]] = [
        ("correlate", CorrelateConfig, correlate),
        ("weights", WeightsConfig, dict(models=cfg.models, out=out, device=cfg.device)),
        ("properties", PropertiesConfig, dict(out=out, threshold=cfg.threshold,
                                              top_percent=cfg.top_percent)),
        ("explain", ExplainConfig, dict(**one, max_tokens=cfg.explain_tokens, neurons="all",
                                        token_filter=cfg.token_filter, **memory)),
        ("families", FamiliesConfig, dict(out=out)),
        ("entropy", EntropyConfig, dict(**one, tokens=cfg.intervention_tokens,
                                        device=cfg.device)),
        ("attention", AttentionConfig, dict(**one, tokens=cfg.intervention_tokens,
                                            device=cfg.device)),
        ("paper-results", PaperResultsConfig, dict(out=out, model=reference, dataset=ds,
                                                   tokens=cfg.explain_tokens,
                                                   device=cfg.device)),
        ("paper", PaperConfig, dict(out=out)),  # before report, whose front page links it
        ("report", ReportStageConfig, dict(out=out)),
    ]
    return [(name, cls(**{**base, **extra_settings(name, cfg.extra.get(name, []))}))
            for name, cls, base in stages if name not in cfg.skip]


def extra_settings(stage: str, argv: list[str]) -> dict[str, Any]:
    """The config fields a stage's extra arguments set (``["--batch-size", "4"]`` ->
    ``{"batch_size": 4}``), parsed with the stage command's own options; only the options
    given appear. Unknown or bad arguments are a UserError naming the stage."""
    import argparse
    import importlib

    if not argv:
        return {}
    mod = importlib.import_module(f"universal_neurons.commands.{stage.replace('-', '_')}")
    parser = argparse.ArgumentParser(prog=f"[extra] {stage}", add_help=False,
                                     exit_on_error=False)
    mod.add_arguments(parser)
    for action in parser._actions:  # report only what was given
        action.default, action.required = argparse.SUPPRESS, False
    try:
        args, rest = parser.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise UserError(f"extra arguments of stage {stage}: {e}") from None
    if rest:
        raise UserError(f"extra arguments of stage {stage}: unknown {rest}; see "
                        f"`universal-neurons {stage} --help`")
    convert = getattr(mod, "config_settings", None)
    given = convert(args) if convert else vars(args)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()
            if not k.startswith("_")}


def run_stage(name: str, config: Any) -> Any:
    """Run one stage with its config; returns the stage's result."""
    from universal_neurons.stages import (
        attention,
        entropy,
        explain,
        families,
        paper,
        paper_results,
        properties,
        report,
        stats,
        weights,
    )

    runners: dict[str, Callable[[Any], Any]] = {
        "correlate": stats.run_correlate_with_stats, "weights": weights.run_weights,
        "properties": properties.run_properties, "explain": explain.run_explain,
        "families": families.run_families, "entropy": entropy.run_entropy,
        "attention": attention.run_attention,
        "paper-results": paper_results.run_paper_results, "paper": paper.run_paper,
        "report": report.run_report,
    }
    return runners[name](config)


def config_key(config: Any) -> dict[str, Any]:
    """What of a stage config the cache compares: every field but ``progress``, as JSON."""
    fields = {k: v for k, v in asdict(config).items() if k != "progress"}
    return json.loads(json.dumps(fields, default=str))


def read_record(path: Path) -> dict[str, Any]:
    """``RUN/pipeline.json`` ({} if absent); UserError naming the file if it is corrupt."""
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict) or not isinstance(record.get("stages", {}), dict):
            raise ValueError("not a pipeline record")
    except (ValueError, UnicodeDecodeError) as e:
        first = (str(e).splitlines() or [""])[0][:100]
        raise UserError(f"{path} is corrupt ({first}); delete it or pass --force to rerun "
                        "every stage") from None
    return record


def rerun_reasons(prev: dict[str, Any] | None, settings: dict[str, Any], inputs: dict[str, str],
                  upstream: str, run_dir: Path, name: str,
                  seen: dict[str, list[int]] | None = None) -> list[str]:
    """Why stage ``name`` must run ([] = it is up to date and may be skipped). ``seen`` is
    the state of its outputs when the pipeline last looked (after the last stage it ran)."""
    if not prev:
        return ["not run before"]
    reasons = []
    if prev.get("version") != __version__:
        reasons.append(f"package version changed ({prev.get('version')} -> {__version__})")
    if prev.get("settings") != settings:
        reasons.append("settings changed")
    old = prev.get("inputs", {})
    reasons += [f"{k} changed" for k in inputs if old.get(k) != inputs[k]]
    if prev.get("upstream") != upstream:
        reasons.append("an earlier stage reran")
    missing = missing_outputs(run_dir, name)
    if missing:
        reasons.append(f"outputs missing: {', '.join(missing)}")
    elif seen is not None:
        changed = changed_outputs(seen, output_state(run_dir, name))
        if changed:
            more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
            reasons.append(f"outputs changed: {', '.join(changed[:3])}{more}")
    return reasons


def run_pipeline(cfg: RunConfig, runner: Callable[[str, Any], Any] = run_stage,
                 quiet: bool = False, force: bool = False) -> dict[str, Any]:
    """Run every stage through ``runner(name, config)`` (default :func:`run_stage`); returns
    the pipeline record, whose ``last_run`` says which stages ran (and how long) and which
    were unchanged. ``quiet``: no progress bars."""
    from universal_neurons.fingerprints import dataset_fingerprint, models_fingerprint
    from universal_neurons.models.registry import expand_model_specs

    members = expand_model_specs(list(cfg.models))
    if len(members) < 2:
        raise UserError(f"run compares models trained from different seeds: got only "
                        f"{members}; give a suite (e.g. tiny-gpt2) or several models")
    run_dir = check_output_dir(cfg.out, run_output_bytes(members, cfg.all_pairs))
    record_path = run_dir / PIPELINE_FILE
    record = {} if force else read_record(record_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    record.setdefault("stages", {})
    record["config"] = asdict(cfg)
    fingerprints = {"dataset": dataset_fingerprint(cfg.dataset),
                    "models": models_fingerprint(members)}
    upstream = ""  # stamp of the last stage before this one
    stages = [(name, replace(config, progress=False) if quiet and hasattr(config, "progress")
               else config) for name, config in stage_configs(cfg, members[0])]
    ran: dict[str, float] = {}
    t_all = time.perf_counter()
    for i, (name, config) in enumerate(stages, 1):
        settings = config_key(config)
        inputs = {k: fingerprints[k] for k in STAGE_INPUTS.get(name, ())}
        prev = record["stages"].get(name)
        reasons = ["--force"] if force else rerun_reasons(
            prev, settings, inputs, upstream, run_dir, name,
            record.get("outputs", {}).get(name))
        if not reasons and prev is not None:
            log.info("[%d/%d] %s: unchanged, skipped", i, len(stages), name)
            upstream = prev["stamp"]
            continue
        log.info("[%d/%d] %s (%s)", i, len(stages), name, "; ".join(reasons))
        if record["stages"].pop(name, None) is not None:  # never looks done while it reruns
            write_json(record_path, record)
        t0 = time.perf_counter()
        try:
            runner(name, config)
        except (UserError, ValueError) as e:
            raise UserError(f"stage {name}: {e}; fix it and rerun the same command to resume "
                            "from this stage") from e
        except Exception:
            log.error("stage %s failed; fix the error below and rerun the same command to "
                      "resume from this stage", name)
            raise
        missing = missing_outputs(run_dir, name)
        if missing:
            raise UserError(f"stage {name} finished but wrote no {', '.join(missing)} in "
                            f"{run_dir}; rerun the same command (add --debug for details)")
        ran[name] = round(time.perf_counter() - t0, 2)
        stamp = uuid.uuid4().hex[:16]  # what the stages after this one were computed from
        record["stages"][name] = {"settings": settings, "version": __version__,
                                  "inputs": inputs, "upstream": upstream, "stamp": stamp,
                                  "seconds": ran[name],
                                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        upstream = stamp
        # what every stage's outputs look like now (later stages rewrite shared files, such
        # as the neuron tables); a change made outside the pipeline reruns the stage
        record["outputs"] = {n: output_state(run_dir, n) for n in STAGE_NAMES}
        write_json(record_path, record)
    gone = {n: m for n, _ in stages if (m := missing_outputs(run_dir, n))}
    if gone:
        raise UserError(f"outputs missing after the run: {gone}; rerun the same command")
    record["last_run"] = {"ran": ran, "unchanged": [n for n, _ in stages if n not in ran],
                          "total_seconds": round(time.perf_counter() - t_all, 2)}
    write_json(record_path, record)
    return record

