"""Shared pieces of the fault-injection tests: running the CLI, simulated kills, disks."""

from __future__ import annotations

import zipfile
from pathlib import Path


def cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run ``universal-neurons ARGV``; its exit code and non-empty stderr lines."""
    from universal_neurons.cli import main

    code = main([*argv])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    return code, err


def correlate_args(suite, out: Path, *extra: str) -> list[str]:
    return ["correlate", "--models", *suite["models"], "--dataset", suite["dataset"],
            "--out", str(out), "--batch-size", "4", "--quiet", *extra]


def fill_disk(directory: Path) -> None:
    """Write zeros into ``directory`` until its file system is full."""
    with open(directory / "ballast", "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * (1 << 16))
        except OSError:
            pass


def largest_entry_span(path: Path) -> tuple[int, int]:
    """``(offset, size)`` of the data of the largest entry of a torch.save zip file."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len = int.from_bytes(header[26:28], "little")
    extra_len = int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def write_outputs(run: Path, stage: str) -> None:
    """What a stage of ``run`` leaves: one file per pattern of its outputs (``*`` -> ``x``)."""
    from universal_neurons.outputs import STAGE_OUTPUTS

    for pattern in STAGE_OUTPUTS[stage]:
        f = run / pattern.replace("*", "x")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(stage)
