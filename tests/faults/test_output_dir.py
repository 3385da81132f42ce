"""Output directories that cannot take the outputs: one line before any compute, and a
disk that fills up during a run: one line naming the file, nothing left looking complete."""

from __future__ import annotations

import errno
import os

import pytest
from fault_helpers import cli, correlate_args, fill_disk

from universal_neurons.rundir import atomic_path

MiB = 1 << 20


@pytest.fixture
def no_compute(monkeypatch):
    """Fail the test if a model is loaded or a token streamed."""
    def boom(*args, **kwargs):
        raise AssertionError("computed before checking the output directory")

    monkeypatch.setattr("universal_neurons.engine.runner.stream", boom)
    monkeypatch.setattr("universal_neurons.models.loading.load_model", boom)


def run_args(suite, out) -> list[str]:
    return ["run", "--models", *suite["models"], "--dataset", suite["dataset"], "--out",
            str(out), "--quiet"]


def read_only_dir(tmp_path, tmpfs):
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only mount
        return tmpfs(MiB, read_only=True)
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    return d


@pytest.mark.parametrize("command", ["correlate", "run"])
@pytest.mark.parametrize("case", ["file", "under-file", "read-only", "full"])
def test_unusable_output_dir_is_one_line_before_compute(suite, tmp_path, tmpfs, capsys,
                                                        no_compute, command, case):
    if case == "file":
        out = tmp_path / "taken"
        out.write_text("not a run")
        expect = f"--out {out} is a file, not a directory; choose another --out"
    elif case == "under-file":
        (tmp_path / "taken").write_text("not a run")
        out = tmp_path / "taken" / "run"
        expect = f"--out {out} lies under {tmp_path / 'taken'}, which is a file"
    elif case == "read-only":
        out = read_only_dir(tmp_path, tmpfs) / "run"
        expect = f"cannot write to --out {out} ("
    else:
        out = tmpfs(MiB) / "run"
        expect = f"--out {out} has 1.0 MiB free but the outputs need about"
    args = correlate_args(suite, out) if command == "correlate" else run_args(suite, out)
    code, err = cli(capsys, *args)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"universal-neurons {command}: error: {expect}"), err[0]
    if case in ("file", "under-file"):
        assert (tmp_path / "taken").read_text() == "not a run"
    else:
        assert not out.exists()


def fill_when_streaming(monkeypatch, disk) -> None:
    """The disk fills up once the pass starts (after every check)."""
    from universal_neurons.engine import runner

    real = runner.stream

    def stream(*args, **kwargs):
        fill_disk(disk)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "stream", stream)


@pytest.mark.parametrize("when", ["checkpoint", "outputs"])
def test_disk_full_during_correlate_is_one_line_naming_the_file(suite, tmpfs, capsys,
                                                                monkeypatch, when):
    disk = tmpfs(20 * MiB)
    out = disk / "run"
    fill_when_streaming(monkeypatch, disk)
    extra = ("--checkpoint-every", "64") if when == "checkpoint" else ()
    code, err = cli(capsys, *correlate_args(suite, out, *extra))
    assert code == 1 and len(err) == 1, err
    path = out / "checkpoints" / "correlate.pt" if when == "checkpoint" else out / "correlations"
    assert err[0].startswith(f"universal-neurons correlate: error: {path}"), err[0]
    assert "No space left on device; the disk is full: free some space" in err[0]
    assert not (out / "manifest.json").exists() and not (out / "neurons").exists()
    assert [p for p in out.rglob("*") if p.is_file()] == []  # no temp or partial files


def test_disk_full_in_run_fails_the_stage_and_records_nothing(suite, tmpfs, capsys,
                                                               monkeypatch, caplog):
    disk = tmpfs(40 * MiB)
    out = disk / "run"
    fill_when_streaming(monkeypatch, disk)
    code, err = cli(capsys, *run_args(suite, out))
    assert code == 1, err
    assert len(err) == 1 and err[0].startswith("universal-neurons run: error:"), err
    assert "No space left on device" in err[0]
    assert "stage correlate failed" in caplog.text and "resume" in caplog.text
    assert "index.html" not in capsys.readouterr().out
    assert not (out / "pipeline.json").exists() and not (out / "manifest.json").exists()


@pytest.mark.parametrize("writer", ["safetensors", "torch", "parquet"])
def test_atomic_writes_report_a_full_disk_as_enospc(tmpfs, writer):
    import numpy as np
    import pandas as pd
    import torch
    from safetensors.numpy import save_file

    disk = tmpfs(256 * 1024)
    target = disk / f"out.{writer}"
    with pytest.raises(OSError) as e, atomic_path(target) as tmp:
        if writer == "safetensors":
            save_file({"x": np.zeros(1 << 17)}, str(tmp))
        elif writer == "torch":
            torch.save({"x": torch.zeros(1 << 17, dtype=torch.float64)}, tmp)
        else:
            pd.DataFrame({"x": np.random.default_rng(0).random(1 << 17)}).to_parquet(tmp)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(target)
    assert list(disk.iterdir()) == []
