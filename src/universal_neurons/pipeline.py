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
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, replace
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
from universal_neurons.run_config import STAGE_NAMES, RunConfig, load_config_file
from universal_neurons.rundir import check_output_dir, write_json

__all__ = ["STAGE_NAMES", "RunConfig", "load_config_file", "run_pipeline", "run_stage",
           "stage_configs"]

log = logging.getLogger(__name__)

PIPELINE_FILE = "pipeline.json"

STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "correlate": ("dataset", "models"), "weights": ("models",),
    "explain": ("dataset", "models"), "entropy": ("dataset", "models"),
    "attention": ("dataset", "models"), "paper-results": ("dataset", "models"),
}
"""Stage -> the run inputs it reads besides earlier stages' outputs."""


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
                     device=cfg.device, all_pairs=cfg.all_pairs, rotations=cfg.rotations,
                     token_filter=cfg.token_filter, **memory)
    if cfg.tokens >= 10_000_000:  # checkpoints cost a full state write; worth it on long runs
        correlate["checkpoint_every"] = cfg.tokens // 10
    if cfg.precision:
        correlate["precision"] = cfg.precision
    if cfg.sums:
        correlate["sums"] = cfg.sums
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

    from universal_neurons.options import given_arguments

    if not argv:
        return {}
    mod = importlib.import_module(f"universal_neurons.commands.{stage.replace('-', '_')}")
    try:
        given = given_arguments(mod.add_arguments, argv, f"extra arguments of stage {stage}")
    except ValueError as e:
        raise UserError(f"{e}; see `universal-neurons {stage} --help`") from None
    convert = getattr(mod, "config_settings", None)
    return convert(argparse.Namespace(**given)) if convert else given


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

