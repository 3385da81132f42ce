"""Benchmark of ``compute_weight_stats`` at GPT-2-small shape (not a timed test).

Random weights shaped like GPT-2 small (d_model 768, d_mlp 3072, vocabulary 50,257 by
default) held in memory (the statistics read only ``W_in, b_in, W_out, W_U``), and the
default statistics (float32 products, no compositions) computed by:

- **after**: this checkout's ``analysis/weights.py``;
- **before**: ``analysis/weights.py`` as it was before the tiled products (or ``--before
  REV``), loaded from git; skipped when git or that revision is not available.

They run alternately, ``--repeats`` times; the best wall and CPU (process) time of each is
printed for ``--layers`` layers, with the projection to 12 layers (the time is linear in
the layer count, plus a one-off part for the vocabulary's normalisation that this
overstates) and the ratio. Also the float32 GEMM's share: ``2 N V d`` flops at the
measured ``numpy.matmul`` rate of a ``[1024, 768] x [768, 4096]`` product.

    .venv/bin/python benchmarks/bench_weights.py --layers 2
    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_weights.py --threads 1  # CPU time
                                                        # that load from others cannot inflate
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from universal_neurons.analysis.weights import compute_weight_stats

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "src/universal_neurons/analysis/weights.py"
TILED_COMMIT_MARK = "VOCAB_TILE"


def previous_weights(rev: str | None) -> tuple[Any, str] | None:
    """``compute_weight_stats`` of ``WEIGHTS`` at ``rev`` (default: the newest commit
    without the tiled products), and that revision."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        if rev is None:
            for sha in git("log", "--format=%H", "-n", "50", "--", WEIGHTS).split():
                if TILED_COMMIT_MARK not in git("show", f"{sha}:{WEIGHTS}"):
                    rev = sha
                    break
            rev = rev or "HEAD"
        src = git("show", f"{rev}:{WEIGHTS}")
        rev = git("rev-parse", "--short", rev)
    except (OSError, subprocess.CalledProcessError):
        return None
    if TILED_COMMIT_MARK in src:
        return None
    mod = types.ModuleType("weights_before")
    sys.modules[mod.__name__] = mod  # (its dataclasses look their module up)
    exec(compile(src, f"{rev}:{WEIGHTS}", "exec"), mod.__dict__)  # noqa: S102
    return mod.compute_weight_stats, rev


def gemm_rate() -> tuple[float, float]:
    """float32 GFLOP per second of wall and per CPU-second of numpy.matmul at one tile's
    shape (best of 3 each)."""
    a = np.random.default_rng(0).standard_normal((1024, 768), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((768, 4096), dtype=np.float32)
    out = np.empty((1024, 4096), dtype=np.float32)
    wall = cpu = float("inf")
    for _ in range(3):
        w0, c0 = time.perf_counter(), time.process_time()
        np.matmul(a, b, out=out)
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    flop = 2 * 1024 * 768 * 4096 / 1e9
    return flop / wall, flop / cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--d-mlp", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=50_257)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (numpy's BLAS: set OPENBLAS_NUM_THREADS)")
    ap.add_argument("--before", default=None, help="git revision of the 'before' weights.py")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    L, d, m, V = args.layers, args.d_model, args.d_mlp, args.vocab
    pw = SimpleNamespace(W_in=torch.randn(L, d, m, generator=gen) * 0.02,
                         b_in=torch.randn(L, m, generator=gen) * 0.02,
                         W_out=torch.randn(L, m, d, generator=gen) * 0.02,
                         W_U=torch.randn(d, V, generator=gen) * 0.02, W_gate=None)
    fns = {"after": compute_weight_stats}
    before = previous_weights(args.before)
    if before is not None:
        fns[f"before ({before[1]})"] = before[0]
    else:
        print("before: not available (no git history of weights.py here)")
    best = {k: (float("inf"), float("inf")) for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn(pw)
            w, c = time.perf_counter() - w0, time.process_time() - c0
            best[name] = (min(best[name][0], w), min(best[name][1], c))
    rate, cpu_rate = gemm_rate()
    gflop = 2 * L * m * V * d / 1e9
    print(f"{L} layers x {m} neurons, d_model {d}, vocabulary {V:,}; torch threads "
          f"{torch.get_num_threads()}; float32 GEMM (numpy.matmul) {rate:.0f} GFLOP/s wall, "
          f"{cpu_rate:.0f} GFLOP per CPU-second")
    print(f"  the vocabulary product alone: {gflop:.0f} GFLOP = {gflop / rate:.1f} s wall, "
          f"{gflop / cpu_rate:.1f} CPU-s at those rates (12 layers: {gflop / rate * 12 / L:.0f} "
          f"s, {gflop / cpu_rate * 12 / L:.0f} CPU-s)")
    for name, (w, c) in best.items():
        print(f"  {name:16s} wall {w:7.1f} s  cpu {c:7.1f} s   12 layers: wall "
              f"{w * 12 / L:6.0f} s  cpu {c * 12 / L:6.0f} s")
    if before is not None:
        (w1, c1), (w0, c0) = best["after"], best[next(k for k in best if k != "after")]
        print(f"  after / before: {w0 / w1:.2f}x faster (wall), {c0 / c1:.2f}x (cpu)")


if __name__ == "__main__":
    main()
