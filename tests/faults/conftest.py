"""Fixtures for the fault-injection tests: a two-model random GPT-2 suite and a token
dataset (built once, tiny), and small tmpfs mounts for full and read-only disks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "engine"))
from correlate_helpers import make_dataset, make_model, make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def suite(tmp_path_factory):
    """Two 1-layer GPT-2 folders (d_mlp 32) sharing a tokenizer, and a dataset of 24
    sequences of 32 tokens; ``b`` is a noisy permuted copy of ``a``."""
    root = tmp_path_factory.mktemp("fault-suite")
    tok = make_tokenizer(root / "tokenizer")
    a = make_model(root / "fa", tok, seed=0, n_layer=1, d_model=16, d_mlp=32)
    b = make_model(root / "fb", tok, seed=1, n_layer=1, d_model=16, d_mlp=32, base=a,
                   noise=0.1)
    ds = make_dataset(root / "tokens", tok, n_ctx=32, tokens=32 * 24)
    return {"root": root, "tokenizer": tok, "models": [str(a), str(b)],
            "dataset": str(ds.path)}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size, read_only=False) -> Path``: a fresh tmpfs of ``size`` bytes (root
    only; the test is skipped otherwise or when mounting fails); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: int, read_only: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / f"tmpfs{len(mounted)}"
        point.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(point)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False)

