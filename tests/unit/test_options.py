"""Command-line options generated from config dataclasses (``universal_neurons.options``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Literal

import pytest

from universal_neurons.options import (
    NO_CLI,
    add_config_options,
    config_from_args,
    config_from_argv,
    count,
    field_docs,
    models_opt,
    opt,
    run_opt,
    tokens_opt,
)


@dataclass(frozen=True)
class Toy:
    """A config with one field of every kind."""

    models: tuple[str, ...] = models_opt()
    """Models to compare."""
    out: str = run_opt()
    """Run directory."""
    tokens: int | None = tokens_opt(None)
    """Tokens to stream."""
    ratio: float = 0.5
    """A ratio, in
    two lines."""
    site: Literal["post", "pre"] = "post"
    """Which activation."""
    fast: bool = False
    """Go fast."""
    plots: bool = opt(True, "--no-plots", help="skip the plots")
    """Write plots."""
    hidden: int = opt(3, metavar="K")
    internal: dict | None = field(default=None, metadata=NO_CLI)
    progress: bool = True


def parser(cls: type = Toy, **kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    p.add_argument("--quiet", action="store_true")
    add_config_options(p, cls, **kw)
    return p


def test_field_docs_are_the_attribute_docstrings():
    docs = field_docs(Toy)
    assert docs["ratio"] == "A ratio, in two lines."
    assert docs["site"] == "Which activation." and "hidden" not in docs


def test_every_kind_of_field_parses_to_the_config():
    args = parser().parse_args(["--model", "a", "b", "--out", "R", "--tokens", "10k",
                                "--ratio", "0.25", "--site", "pre", "--fast", "--no-plots",
                                "--hidden", "7", "--quiet"])
    cfg = config_from_args(Toy, args)
    assert cfg.models == ("a", "b") and cfg.out == "R" and cfg.tokens == 10_000
    assert cfg.ratio == 0.25 and cfg.site == "pre" and cfg.fast and not cfg.plots
    assert cfg.hidden == 7 and cfg.progress is False and cfg.internal is None
    defaults = config_from_args(Toy, parser().parse_args(["--models", "a", "--out", "R"]))
    assert (defaults.tokens, defaults.ratio, defaults.site, defaults.fast, defaults.plots,
            defaults.progress) == (None, 0.5, "post", False, True, True)


def test_help_comes_from_docstrings_with_defaults():
    text = parser().format_help()
    assert "A ratio, in two lines (default 0.5)" in " ".join(text.split())
    assert "skip the plots" in text and "--internal" not in text and "--progress" not in text
    assert "{post,pre}" in text


def test_bad_values_and_missing_required_options_are_refused():
    with pytest.raises(argparse.ArgumentError):
        parser().parse_args(["--models", "a", "--out", "R", "--site", "mid"])
    with pytest.raises(argparse.ArgumentError):
        parser().parse_args(["--models", "a", "--out", "R", "--tokens", "lots"])
    with pytest.raises(SystemExit):  # --out is required (argparse exits with usage)
        argparse.ArgumentParser.parse_args(parser(), ["--models", "a"])


def test_deprecated_spelling_sets_the_same_field_and_says_so(capsys):
    args = parser().parse_args(["--models", "a", "--out", "R", "--max-tokens", "2M"])
    assert config_from_args(Toy, args).tokens == 2_000_000
    assert "--max-tokens is deprecated, use --tokens" in capsys.readouterr().err


def test_positional_run_directory_is_an_alias_of_out():
    @dataclass(frozen=True)
    class Staged:
        out: str = run_opt()
        """Run directory."""

    p = parser(Staged, run_positional=True)
    assert config_from_args(Staged, p.parse_args(["runs/x"])).out == "runs/x"
    assert config_from_args(Staged, p.parse_args(["--out", "runs/y"])).out == "runs/y"
    with pytest.raises(ValueError, match="two run directories"):
        config_from_args(Staged, p.parse_args(["runs/x", "--out", "runs/y"]))
    with pytest.raises(ValueError, match="--out RUN"):
        config_from_args(Staged, p.parse_args([]))


def test_config_from_argv_lets_overrides_fill_required_fields():
    cfg = config_from_argv(Toy, ["--ratio", "0.1"], models=("m",), out="R")
    assert cfg.ratio == 0.1 and cfg.models == ("m",)
    with pytest.raises(ValueError, match="unknown arguments"):
        config_from_argv(Toy, ["--nope"], models=("m",), out="R")


def test_count_accepts_suffixes():
    assert count("500k") == 500_000 and count("1M") == 1_000_000
    with pytest.raises(argparse.ArgumentTypeError):
        count("many")


def _subparser(name: str) -> argparse.ArgumentParser:
    from universal_neurons.cli import build_parser

    p = build_parser(only=name)
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_every_stage_command_takes_its_options_from_the_config():
    from universal_neurons.stages.correlate import CorrelateConfig
    from universal_neurons.stages.entropy import EntropyConfig
    from universal_neurons.stages.explain import ExplainConfig
    from universal_neurons.stages.stats import StatsConfig
    from universal_neurons.stages.trajectory import TrajectoryConfig
    from universal_neurons.stages.weights import WeightsConfig

    for name, cls in (("correlate", CorrelateConfig), ("stats", StatsConfig),
                      ("weights", WeightsConfig), ("explain", ExplainConfig),
                      ("entropy", EntropyConfig), ("trajectory", TrajectoryConfig)):
        actions = _subparser(name)._actions
        dests = {a.dest for a in actions}
        assert {f.name for f in fields(cls)} - {"progress"} <= dests, name
        assert all(a.help for a in actions if a.option_strings and a.help != argparse.SUPPRESS)
    assert "--tokens" in _subparser("explain").format_help()
