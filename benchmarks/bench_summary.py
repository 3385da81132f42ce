"""Benchmark of the per-neuron summaries (not a timed test; prints one report).

Folds synthetic correlation chunks of GPT-2-small shape (``rho: [3072, 3072 k]`` float32,
one layer of a model against ``k`` partner layers, as ``finalize.summarize_moments`` cuts
them) into :class:`NeuronSummary` both ways (rows ``a -> b`` and columns ``b -> a``):

- **after**: ``NeuronSummary.add_pair`` (engine/summary_fold.py);
- **before**: the previous implementation (``add(rho)`` then ``add(rho.t())``), loaded from
  git: ``engine/summary.py`` as it was just before ``summary_fold.py`` was added (or
  ``--before REV``). Skipped when git or that revision is not available.

The two run alternately, ``--repeats`` times, and the best of each is kept, so that load
from other processes hits both alike. Printed per variant: wall and CPU (process) time per
chunk, correlations per second (one correlation = one chunk entry folded into both
directions), and the ratio after/before, for each ``--threads``. Also the projected
summary time (without the baseline) of GPT-2 small x 5 in reference mode: 36,864 x 36,864
x 4 partners correlations.

    .venv/bin/python benchmarks/bench_summary.py
    .venv/bin/python benchmarks/bench_summary.py --threads 1 2 --partner-layers 1 --repeats 7
"""

from __future__ import annotations

import argparse
import subprocess
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from universal_neurons.engine.summary import NeuronSummary

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = "src/universal_neurons/engine/summary.py"
GPT2_SMALL_CORRELATIONS = 36_864 * 36_864 * 4


def previous_summary(rev: str | None) -> tuple[Any, str] | None:
    """The ``NeuronSummary`` class of ``SUMMARY`` at ``rev`` (default: the commit before
    the one that added summary_fold.py), and the revision used."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        if rev is None:
            added = git("log", "--diff-filter=A", "--format=%H", "--",
                        "src/universal_neurons/engine/summary_fold.py").split()
            rev = f"{added[-1]}~1" if added else "HEAD"
        src = git("show", f"{rev}:{SUMMARY}")
        rev = git("rev-parse", "--short", rev)
    except (OSError, subprocess.CalledProcessError):
        return None
    if "def add_pair" in src:
        return None
    mod = types.ModuleType("summary_before")
    exec(compile(src, f"{rev}:{SUMMARY}", "exec"), mod.__dict__)  # noqa: S102
    return mod.NeuronSummary, rev


def best_of(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[float, float]]:
    """``{name: (wall, cpu)}``: the best of ``repeats`` alternating runs of each."""
    best = {k: (float("inf"), float("inf")) for k in fns}
    for f in fns.values():
        f()  # warm up
    for _ in range(repeats):
        for k, f in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            f()
            w, c = time.perf_counter() - w0, time.process_time() - c0
            best[k] = (min(best[k][0], w), min(best[k][1], c))
    return best


def variants(rho: torch.Tensor, k: int, bins: int,
             before: tuple[Any, str] | None) -> dict[str, Callable[[], None]]:
    """Fresh summaries folding ``rho`` both ways: after, and before when available."""
    d, c = rho.shape
    rows = slice(0, d)
    new = NeuronSummary(d, c, k, bins), NeuronSummary(c, d, k, bins)
    fns: dict[str, Callable[[], None]] = {"after": lambda: new[0].add_pair(rho, rows, 0, new[1])}
    if before is not None:
        cls, rev = before
        old = cls(d, c, k, bins), cls(c, d, k, bins)

        def run_old() -> None:
            old[0].add(rho, rows, 0)
            old[1].add(rho.t(), slice(0, c), 0)
        fns[f"before ({rev})"] = run_old
    return fns


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-mlp", type=int, default=3072, help="rows (one layer's neurons)")
    ap.add_argument("--partner-layers", type=int, default=1,
                    help="partner layers per chunk (finalize: as many as fit 2^24 elements)")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--bins", type=int, default=100)
    ap.add_argument("--threads", type=int, nargs="+", default=[torch.get_num_threads()])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--before", default=None, help="git revision of the 'before' summary.py")
    ap.add_argument("--std", type=float, default=0.05,
                    help="spread of the synthetic correlations (~1/sqrt(tokens))")
    args = ap.parse_args()

    d, c = args.d_mlp, args.d_mlp * args.partner_layers
    gen = torch.Generator().manual_seed(0)
    rho = (torch.randn(d, c, generator=gen) * args.std).clamp_(-1, 1)
    rho[torch.rand(d, c, generator=gen) < 1e-3] *= 8  # a tail, as real rows have
    rho.clamp_(-1, 1)
    before = previous_summary(args.before)
    print(f"chunk [{d}, {c}] float32, k={args.top_k}, bins={args.bins}, "
          f"best of {args.repeats} alternating runs")
    if before is None:
        print("before: not available (no git history of summary.py here)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        fns = variants(rho, args.top_k, args.bins, before)
        best = best_of(fns, args.repeats)
        print(f"\n{threads} thread(s):")
        for name, (w, cpu) in best.items():
            rate = d * c / w
            print(f"  {name:16s} wall {w * 1e3:7.1f} ms  cpu {cpu * 1e3:7.1f} ms  "
                  f"{rate / 1e6:6.1f} M correlations/s (both directions)  GPT-2 small x 5: "
                  f"{GPT2_SMALL_CORRELATIONS / rate:6.0f} s")
        if before is not None:
            (w1, c1), (w0, c0) = best["after"], best[next(k for k in best if k != "after")]
            print(f"  after / before: {w0 / w1:.2f}x faster (wall), {c0 / c1:.2f}x (cpu)")


if __name__ == "__main__":
    main()
