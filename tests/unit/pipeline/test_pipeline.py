"""Stage caching and resume of ``universal-neurons run`` with a recording fake invoker."""

from __future__ import annotations

import pytest

from universal_neurons.errors import UserError
from universal_neurons.pipeline import STAGE_NAMES, RunConfig, load_config_file, run_pipeline


class Recorder:
    def __init__(self, fail_on: str | None = None):
        self.calls: list[str] = []
        self.fail_on = fail_on

    def __call__(self, argv: list[str]) -> int:
        self.calls.append(argv[0])
        return 1 if argv[0] == self.fail_on else 0


def cfg(tmp_path, **kw) -> RunConfig:
    return RunConfig(models=("tiny-gpt2-a", "tiny-gpt2-b"), out=str(tmp_path / "run"), **kw)


def test_all_stages_run_once_then_are_cached(tmp_path):
    rec = Recorder()
    run_pipeline(cfg(tmp_path), rec, quiet=True)
    assert rec.calls == list(STAGE_NAMES)
    rec2 = Recorder()
    run_pipeline(cfg(tmp_path), rec2, quiet=True)
    assert rec2.calls == []


def test_changed_stage_reruns_it_and_everything_after(tmp_path):
    run_pipeline(cfg(tmp_path), Recorder(), quiet=True)
    rec = Recorder()
    run_pipeline(cfg(tmp_path, explain_tokens=1000), rec, quiet=True)
    assert rec.calls == list(STAGE_NAMES[STAGE_NAMES.index("explain"):])


def test_failed_stage_stops_and_resume_starts_there(tmp_path):
    with pytest.raises(UserError, match="stage families failed"):
        run_pipeline(cfg(tmp_path), Recorder(fail_on="families"), quiet=True)
    rec = Recorder()
    run_pipeline(cfg(tmp_path), rec, quiet=True)
    assert rec.calls == list(STAGE_NAMES[STAGE_NAMES.index("families"):])


def test_skip_and_validation(tmp_path):
    rec = Recorder()
    run_pipeline(cfg(tmp_path, skip=("attention", "entropy")), rec, quiet=True)
    assert "attention" not in rec.calls and "entropy" not in rec.calls
    with pytest.raises(UserError, match="unknown stage"):
        cfg(tmp_path, skip=("nope",))
    with pytest.raises(UserError, match="only"):
        run_pipeline(RunConfig(models=("tiny-gpt2-a",), out=str(tmp_path / "r")), Recorder())


def test_toml_config(tmp_path):
    p = tmp_path / "study.toml"
    p.write_text('models = ["tiny-gpt2-a", "tiny-gpt2-c"]\ntokens = 1000\n'
                 '[extra]\ncorrelate = ["--batch-size", "4"]\n')
    values = load_config_file(p)
    c = RunConfig(out=str(tmp_path / "run"), **values)
    assert c.models == ("tiny-gpt2-a", "tiny-gpt2-c") and c.tokens == 1000
    rec_args: list[list[str]] = []
    run_pipeline(c, lambda argv: rec_args.append(argv) or 0, quiet=True)
    assert rec_args[0][-3:] == ["--batch-size", "4", "--quiet"]
    p.write_text("modls = 1\n")
    with pytest.raises(UserError, match="modls"):
        load_config_file(p)
