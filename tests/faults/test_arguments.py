"""Bad values are refused when parsed, in one line, before anything runs."""

from __future__ import annotations

import pytest
from fault_helpers import cli

from universal_neurons.cli import main
from universal_neurons.errors import UserError

COMMANDS = {
    "correlate": ["correlate", "--models", "a", "b", "--out", "x"],
    "properties": ["properties", "x"],
    "run": ["run"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("value", ["2", "0", "-0.1", "nan", "inf", "lots"])
def test_threshold_out_of_range_is_a_parse_error(command, value, capsys, tmp_path,
                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main([*COMMANDS[command], "--threshold", value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --threshold:" in err and "(0, 1]" in err
    assert list(tmp_path.iterdir()) == []  # nothing ran


def test_threshold_in_range_is_accepted():
    from universal_neurons.cli import build_parser

    args = build_parser().parse_args([*COMMANDS["correlate"], "--threshold", "1"])
    assert args.threshold == 1.0


@pytest.mark.parametrize(("toml", "message"), [
    ('tokens = "lots"\n', "tokens must be an integer or a count like \"10M\", got 'lots'"),
    ("threshold = 2\n", "threshold must be in (0, 1], got 2"),
    ("explain-tokens = 0\n", "token counts must be positive"),
])
def test_run_config_file_errors_are_one_line(tmp_path, capsys, toml, message):
    p = tmp_path / "study.toml"
    p.write_text(toml)
    code, err = cli(capsys, "run", str(p), "--out", str(tmp_path / "run"))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("universal-neurons run: error:") and message in err[0]
    assert not (tmp_path / "run").exists()


def test_corrupt_pipeline_record_is_one_line_naming_it(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "pipeline.json").write_text("{not json")
    code, err = cli(capsys, "run", "--models", "tiny-gpt2-a", "tiny-gpt2-b", "--out", str(run))
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"universal-neurons run: error: {run / 'pipeline.json'} is "
                             "corrupt (")
    assert err[0].endswith("delete it or pass --force to rerun every stage")


def test_debug_shows_the_traceback(tmp_path, capsys):
    out = tmp_path / "taken"
    out.write_text("")
    args = ["correlate", "--models", "a", "b", "--out", str(out)]
    assert cli(capsys, *args)[0] == 2
    with pytest.raises(UserError, match="is a file"):
        main(["--debug", *args])


def test_corrupt_manifest_is_one_line_naming_it(tmp_path):
    from universal_neurons.rundir import RunDir

    run = RunDir(tmp_path)
    run.manifest_path.write_text('{"stages": ')
    with pytest.raises(UserError, match=f"{run.manifest_path} is corrupt .*delete it"):
        run.record_stage("weights", {})
