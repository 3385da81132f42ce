"""Stage caching and resume of ``universal-neurons run`` with a recording fake invoker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from universal_neurons.errors import UserError
from universal_neurons.outputs import STAGE_OUTPUTS
from universal_neurons.pipeline import STAGE_NAMES, RunConfig, load_config_file, run_pipeline


def write_outputs(run: Path, stage: str) -> None:
    """One file per output pattern of ``stage`` (``*`` -> ``x``), as the real stage would."""
    for pattern in STAGE_OUTPUTS[stage]:
        f = run / pattern.replace("*", "x")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(stage)


class Recorder:
    """Stands in for the CLI: records the stages it is asked to run and writes their
    outputs (all of them, or none with ``write=False``)."""

    def __init__(self, run: Path, fail_on: str | None = None, write: bool = True):
        self.run, self.fail_on, self.write = run, fail_on, write
        self.calls: list[str] = []

    def __call__(self, name: str, config) -> None:
        self.calls.append(name)
        if name == self.fail_on:
            raise UserError(f"{name} failed")
        if self.write:
            write_outputs(self.run, name)


def cfg(tmp_path, **kw) -> RunConfig:
    return RunConfig(models=("tiny-gpt2-a", "tiny-gpt2-b"), out=str(tmp_path / "run"), **kw)


def rec(tmp_path, **kw) -> Recorder:
    return Recorder(tmp_path / "run", **kw)


def test_all_stages_run_once_then_are_cached(tmp_path):
    r = rec(tmp_path)
    record = run_pipeline(cfg(tmp_path), r, quiet=True)
    assert r.calls == list(STAGE_NAMES)
    assert list(record["last_run"]["ran"]) == list(STAGE_NAMES)
    r2 = rec(tmp_path)
    record = run_pipeline(cfg(tmp_path), r2, quiet=True)
    assert r2.calls == []
    assert record["last_run"]["ran"] == {} and record["last_run"]["unchanged"] == list(STAGE_NAMES)


def test_changed_stage_reruns_it_and_everything_after(tmp_path):
    run_pipeline(cfg(tmp_path), rec(tmp_path), quiet=True)
    r = rec(tmp_path)
    run_pipeline(cfg(tmp_path, explain_tokens=1000), r, quiet=True)
    assert r.calls == list(STAGE_NAMES[STAGE_NAMES.index("explain"):])


def test_failed_stage_stops_and_resume_starts_there(tmp_path):
    with pytest.raises(UserError, match="families failed"):
        run_pipeline(cfg(tmp_path), rec(tmp_path, fail_on="families"), quiet=True)
    r = rec(tmp_path)
    run_pipeline(cfg(tmp_path), r, quiet=True)
    assert r.calls == list(STAGE_NAMES[STAGE_NAMES.index("families"):])


def test_deleted_outputs_rerun_their_stage_and_everything_after(tmp_path, caplog):
    run_pipeline(cfg(tmp_path), rec(tmp_path), quiet=True)
    (tmp_path / "run" / "properties" / "claims.json").unlink()
    r = rec(tmp_path)
    with caplog.at_level("INFO", logger="universal_neurons.pipeline"):
        run_pipeline(cfg(tmp_path), r, quiet=True)
    assert r.calls == list(STAGE_NAMES[STAGE_NAMES.index("properties"):])
    assert "properties (outputs missing: properties/claims.json)" in caplog.text
    assert "explain (an earlier stage reran)" in caplog.text


def test_stage_that_writes_nothing_is_not_recorded(tmp_path):
    with pytest.raises(UserError, match="stage correlate finished but wrote no manifest.json"):
        run_pipeline(cfg(tmp_path), rec(tmp_path, write=False), quiet=True)
    assert not (tmp_path / "run" / "pipeline.json").exists()
    run_pipeline(cfg(tmp_path), rec(tmp_path), quiet=True)
    (tmp_path / "run" / "report" / "index.html").unlink()
    with pytest.raises(UserError, match="stage report finished but wrote no report/index.html"):
        run_pipeline(cfg(tmp_path), rec(tmp_path, write=False), quiet=True)
    record = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert "report" not in record["stages"] and "families" in record["stages"]


def test_changed_dataset_reruns_the_stages_that_read_it(tmp_path, caplog):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "meta.json").write_text('{"seed": 0}')
    (ds / "tokens.npy").write_bytes(b"0" * 64)
    run_pipeline(cfg(tmp_path, dataset=str(ds)), rec(tmp_path), quiet=True)
    (ds / "meta.json").write_text('{"seed": 7}')  # rebuilt in place, e.g. tokenize --overwrite
    r = rec(tmp_path)
    with caplog.at_level("INFO", logger="universal_neurons.pipeline"):
        run_pipeline(cfg(tmp_path, dataset=str(ds)), r, quiet=True)
    assert r.calls == list(STAGE_NAMES)
    assert "correlate (dataset changed)" in caplog.text


def test_skip_and_validation(tmp_path):
    r = rec(tmp_path)
    run_pipeline(cfg(tmp_path, skip=("attention", "entropy")), r, quiet=True)
    assert "attention" not in r.calls and "entropy" not in r.calls
    with pytest.raises(UserError, match="unknown stage"):
        cfg(tmp_path, skip=("nope",))
    with pytest.raises(UserError, match="only"):
        run_pipeline(RunConfig(models=("tiny-gpt2-a",), out=str(tmp_path / "r")), r)
    for bad in (2.0, 0.0, float("nan"), float("inf")):
        with pytest.raises(UserError, match=r"threshold must be in \(0, 1\]"):
            cfg(tmp_path, threshold=bad)


def test_corrupt_pipeline_record_names_the_file(tmp_path):
    run_pipeline(cfg(tmp_path), rec(tmp_path), quiet=True)
    record = tmp_path / "run" / "pipeline.json"
    record.write_text('{"stages": {"correlate": ')
    with pytest.raises(UserError, match=f"{record} is corrupt .*delete it or pass --force"):
        run_pipeline(cfg(tmp_path), rec(tmp_path), quiet=True)
    r = rec(tmp_path)
    run_pipeline(cfg(tmp_path), r, quiet=True, force=True)
    assert r.calls == list(STAGE_NAMES)


def test_toml_config(tmp_path):
    p = tmp_path / "study.toml"
    p.write_text('models = ["tiny-gpt2-a", "tiny-gpt2-c"]\ntokens = 1000\n'
                 '[extra]\ncorrelate = ["--batch-size", "4"]\n')
    values = load_config_file(p)
    c = RunConfig(out=str(tmp_path / "run"), **values)
    assert c.models == ("tiny-gpt2-a", "tiny-gpt2-c") and c.tokens == 1000
    configs = {}

    def runner(name, config):
        configs[name] = config
        write_outputs(tmp_path / "run", name)

    run_pipeline(c, runner, quiet=True)
    assert configs["correlate"].batch_size == 4 and configs["correlate"].max_tokens == 1000
    assert configs["explain"].batch_size == 8 and not configs["correlate"].progress
    p.write_text("modls = 1\n")
    with pytest.raises(UserError, match="modls"):
        load_config_file(p)


def test_toml_keys_in_both_spellings_and_counts(tmp_path):
    p = tmp_path / "study.toml"
    p.write_text('explain-tokens = 300\nintervention_tokens = "2k"\nall-pairs = true\n')
    assert load_config_file(p) == {"explain_tokens": 300, "intervention_tokens": 2000,
                                   "all_pairs": True}


@pytest.mark.parametrize(("line", "message"), [
    ('tokens = "lots"', "tokens must be an integer or a count like \"10M\", got 'lots'"),
    ("threshold = \"high\"", "threshold must be a number, got 'high'"),
    ("all-pairs = 1", "all-pairs must be true or false, got 1"),
    ("models = [1, 2]", "models must be a list of strings, got [1, 2]"),
    ("seed = 1.5", "seed must be an integer, got 1.5"),
    ('extra = {correlate = "--x"}', "extra must be a table of string lists"),
])
def test_toml_type_errors_are_one_line_naming_the_key(tmp_path, line, message):
    p = tmp_path / "study.toml"
    p.write_text(line + "\n")
    with pytest.raises(UserError) as e:
        load_config_file(p)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_changed_model_weights_rerun_the_stages_that_load_them(tmp_path, caplog):
    folders = []
    for name in ("ma", "mb"):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text('{"n_layer": 1, "n_embd": 8}')
        (d / "model.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}" + b"\0" * 16)
        folders.append(str(d))
    c = RunConfig(models=tuple(folders), out=str(tmp_path / "run"))
    run_pipeline(c, rec(tmp_path), quiet=True)
    (tmp_path / "mb" / "model.safetensors").write_bytes(b"\x02\0\0\0\0\0\0\0{}" + b"\1" * 32)
    r = rec(tmp_path)
    with caplog.at_level("INFO", logger="universal_neurons.pipeline"):
        run_pipeline(c, r, quiet=True)
    assert r.calls == list(STAGE_NAMES)
    assert "correlate (models changed)" in caplog.text
    assert "weights (models changed; an earlier stage reran)" in caplog.text


def test_outputs_rewritten_outside_the_pipeline_rerun_their_stage(tmp_path, caplog):
    run_pipeline(cfg(tmp_path), rec(tmp_path), quiet=True)
    (tmp_path / "run" / "families" / "x_counts.csv").write_text("edited by hand, longer")
    r = rec(tmp_path)
    with caplog.at_level("INFO", logger="universal_neurons.pipeline"):
        run_pipeline(cfg(tmp_path), r, quiet=True)
    assert r.calls == list(STAGE_NAMES[STAGE_NAMES.index("families"):])
    assert "families (outputs changed: families/x_counts.csv)" in caplog.text
    r = rec(tmp_path)
    run_pipeline(cfg(tmp_path), r, quiet=True)
    assert r.calls == []


def test_memory_budget_and_precision_reach_the_stages_that_use_them(tmp_path):
    from universal_neurons.pipeline import stage_configs

    configs = dict(stage_configs(cfg(tmp_path, max_memory="12G", precision="bf16"),
                                 "tiny-gpt2-a"))
    assert configs["correlate"].max_memory == "12G"
    assert configs["correlate"].precision == "bf16"
    assert configs["explain"].max_memory == "12G"
    plain = dict(stage_configs(cfg(tmp_path), "tiny-gpt2-a"))
    assert plain["correlate"].max_memory is None and plain["correlate"].precision == "auto"
    with pytest.raises(UserError, match="bad memory size 'lots'"):
        cfg(tmp_path, max_memory="lots")


def test_extra_arguments_are_parsed_by_the_stage_options(tmp_path):
    from universal_neurons.pipeline import stage_configs

    c = cfg(tmp_path, extra={"families": ["--unigram", "0.7", "--no-plots"],
                             "report": ["--top-n", "3"], "entropy": ["--max-tokens", "64"],
                             "correlate": ["--stats", "--batch-size", "2"]})
    configs = dict(stage_configs(c, "tiny-gpt2-a"))
    assert configs["families"].thresholds.unigram == 0.7 and not configs["families"].plots
    assert configs["report"].settings.top_n == 3
    assert configs["entropy"].tokens == 64  # the deprecated spelling still works
    assert configs["correlate"].batch_size == 2 and configs["correlate"].max_tokens == 100_000
    for bad in (["--no-such-option"], ["--batch-size", "many"]):
        with pytest.raises(UserError, match="extra arguments of stage correlate"):
            stage_configs(cfg(tmp_path, extra={"correlate": bad}), "tiny-gpt2-a")
