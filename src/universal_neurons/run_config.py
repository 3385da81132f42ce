"""The settings of ``universal-neurons run``: :class:`RunConfig` and its TOML file.

A TOML file's keys are RunConfig fields, spelled like the long options (``explain-tokens``)
or the fields (``explain_tokens``); ``[extra]`` holds per-stage argument lists. Unknown keys
and values of the wrong type are one-line UserErrors naming the key and the file.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from universal_neurons.errors import UserError


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
    rotations: int = 1
    """Baseline draws of the correlate stage (``correlate --rotations``)."""
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
    sums: str | None = None
    """Co-moment sums of the correlate pass (``fp64``, ``fp32``; default: correlate's)."""
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
        if self.sums is not None and self.sums not in ("fp64", "fp32"):
            raise UserError(f"sums must be fp64 or fp32, got {self.sums!r}")
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
