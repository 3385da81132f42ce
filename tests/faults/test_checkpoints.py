"""Damaged, foreign and half-written checkpoints: never a silent resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from correlate_helpers import make_dataset
from fault_helpers import cli, correlate_args, largest_entry_span

from helpers import Killed, kill_after

CKPT = ("--checkpoint-every", "64")  # 2 sequences of 32: a checkpoint after every batch


def killed_run(suite, out: Path, monkeypatch, capsys, dataset: str | None = None) -> Path:
    """A correlate run killed in its 4th of 6 batches; returns its checkpoint."""
    args = correlate_args(suite, out, *CKPT)
    if dataset is not None:
        args[args.index("--dataset") + 1] = dataset
    with monkeypatch.context() as mp:
        kill_after(mp, 3)
        with pytest.raises(Killed):
            cli(capsys, *args)
    ckpt = out / "checkpoints" / "correlate.pt"
    assert ckpt.is_file() and not (out / "manifest.json").exists()
    return ckpt


def damage(ckpt: Path, how: str) -> None:
    if how == "truncated":
        os.truncate(ckpt, ckpt.stat().st_size // 2)
        return
    offset, size = largest_entry_span(ckpt)
    n = min(4096, size)
    with open(ckpt, "r+b") as f:
        f.seek(offset + (size - n) // 2)
        assert f.read(n) != b"\0" * n
        f.seek(offset + (size - n) // 2)
        f.write(b"\0" * n)
    torch.load(ckpt, weights_only=True)  # still a valid file: only the checksum can tell


@pytest.mark.parametrize("how", ["zeroed", "truncated"])
def test_damaged_checkpoint_is_refused_with_restart_hint(suite, tmp_path, monkeypatch, capsys,
                                                         how):
    out = tmp_path / "run"
    ckpt = killed_run(suite, out, monkeypatch, capsys)
    damage(ckpt, how)
    code, err = cli(capsys, *correlate_args(suite, out, *CKPT))
    assert code == 2 and len(err) == 1, err
    what = "is corrupt: its checksum" if how == "zeroed" else "is damaged or truncated ("
    assert err[0].startswith(f"universal-neurons correlate: error: checkpoint {ckpt} ")
    assert what in err[0] and err[0].endswith("pass --restart to discard it and start over")
    assert not (out / "manifest.json").exists() and not (out / "neurons").exists()
    code, err = cli(capsys, *correlate_args(suite, out, *CKPT, "--restart"))
    assert code == 0 and err == []
    assert (out / "manifest.json").exists() and not ckpt.exists()


def test_checkpoint_of_a_rebuilt_dataset_is_refused(suite, tmp_path, monkeypatch, capsys):
    ds = tmp_path / "tokens"
    make_dataset(ds, suite["tokenizer"], n_ctx=32, tokens=32 * 24, seed=0)
    out = tmp_path / "run"
    killed_run(suite, out, monkeypatch, capsys, dataset=str(ds))
    for f in ds.iterdir():  # rebuilt at the same path, like `tokenize --seed 7 --overwrite`
        f.unlink()
    ds.rmdir()
    make_dataset(ds, suite["tokenizer"], n_ctx=32, tokens=32 * 24, seed=7)
    args = correlate_args(suite, out, *CKPT)
    args[args.index("--dataset") + 1] = str(ds)
    code, err = cli(capsys, *args)
    assert code == 2 and len(err) == 1, err
    assert "another configuration (dataset_content:" in err[0] and "--restart" in err[0]


KILL_DURING_SAVE = """
import os, signal, sys
import torch
from universal_neurons.engine.checkpoint import save_checkpoint

def save(obj, path):  # half of a file, then SIGKILL, as when the machine kills the job
    with open(path, "wb") as f:
        f.write(b"PK" + bytes(200_000))
    os.kill(os.getpid(), signal.SIGKILL)

torch.save = save
save_checkpoint(sys.argv[1], {"x": torch.zeros(3)})
"""


def test_kill_during_checkpoint_write_leaves_a_temp_that_the_next_start_cleans(
        suite, tmp_path, monkeypatch, capsys):
    straight = tmp_path / "straight"
    assert cli(capsys, *correlate_args(suite, straight))[0] == 0
    out = tmp_path / "run"
    ckpt = killed_run(suite, out, monkeypatch, capsys)
    before = ckpt.read_bytes()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    r = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(ckpt)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    stale = list(ckpt.parent.glob(".correlate.pt.*.tmp"))
    assert len(stale) == 1 and stale[0].stat().st_size == 200_002
    assert ckpt.read_bytes() == before  # the old checkpoint is intact
    code, err = cli(capsys, *correlate_args(suite, out, *CKPT))
    assert code == 0 and err == []
    assert list(ckpt.parent.glob("*.tmp")) + list(ckpt.parent.glob(".*.tmp")) == []
    assert not ckpt.exists()
    name = next((straight / "neurons").glob("*.parquet")).name
    pd.testing.assert_frame_equal(pd.read_parquet(out / "neurons" / name),
                                  pd.read_parquet(straight / "neurons" / name))
