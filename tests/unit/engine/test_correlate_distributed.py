"""Two gloo processes (token sharding, then tile sharding) equal a single-process run, to
what the engine promises across reduction orders (docs/engine.md)."""

from __future__ import annotations

import os
import socket

import numpy as np
import pandas as pd
import torch
import torch.multiprocessing as mp
from correlate_helpers import assert_hists_agree, captured, corr64, tiling_budget
from safetensors.torch import load_file

from universal_neurons.stages.correlate import CorrelateConfig, run_correlate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, ports: list[int], runs: list[dict]) -> None:
    torch.set_num_threads(1)
    for port, kw in zip(ports, runs):
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        passes = kw.pop("_passes", None)
        res = run_correlate(CorrelateConfig(**kw))
        assert passes is None or res.plan.n_passes >= passes


def read_run(out) -> tuple[pd.DataFrame, dict]:
    table = pd.read_parquet(out / "neurons" / "ma.parquet")
    summaries = {f.name: load_file(f) for f in sorted((out / "correlations").iterdir())}
    return table, summaries


def test_two_gloo_processes_equal_one(tiny_suite, tmp_path):
    base = {"models": tuple(tiny_suite["models"]), "dataset": tiny_suite["dataset"],
            "progress": False, "rows_per_gemm": 256, "batch_size": 4}
    single = run_correlate(CorrelateConfig(out=str(tmp_path / "single"), **base))
    p = single.plan
    tile_budget = tiling_budget(p)
    runs = [{**base, "out": str(tmp_path / "tokens")},
            {**base, "out": str(tmp_path / "tiles"), "max_memory": tile_budget, "_passes": 2}]
    mp.spawn(_worker, args=(2, [free_port(), free_port()], runs), nprocs=2, join=True)

    acts = captured(tiny_suite)
    want_table, want = read_run(tmp_path / "single")
    for mode in ("tokens", "tiles"):
        table, got = read_run(tmp_path / mode)
        assert list(table.columns) == list(want_table.columns)
        for c in table.columns:
            if table[c].dtype.kind == "f":
                np.testing.assert_allclose(table[c], want_table[c], atol=1e-6, rtol=0)
            else:
                assert list(table[c]) == list(want_table[c]), (mode, c)
        assert got.keys() == want.keys()
        for name, tensors in want.items():
            for key, w in tensors.items():
                if w.dtype.is_floating_point:  # skew/kurt can be large: relative for them
                    rtol = 1e-5 if key in ("skew", "kurt") else 0
                    torch.testing.assert_close(got[name][key], w, atol=1e-6, rtol=rtol,
                                               equal_nan=True)
                elif key == "hist":  # counts of values on a bin edge depend on rounding
                    a, b = name.removesuffix(".safetensors").split("__")
                    assert_hists_agree(got[name][key], w, corr64(acts[a], acts[b]))
                else:
                    assert torch.equal(got[name][key], w), (mode, name, key)
