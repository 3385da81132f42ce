"""Expected durations of the benchmarks, printed before they measure anything.

Rough by design: GEMMs count their FLOPs; everything else (forward passes, summaries,
scatter-adds, setup) counts as FLOP-equivalents fitted on one run of each benchmark on the
project's AMD EPYC machines (2 threads), and all of it is divided by a matmul rate measured
at start-up, so that a faster or busier machine scales the estimate.
"""

from __future__ import annotations

import time

import torch


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, reps: int = 2) -> float:
    """GFLOP/s of an ``n x n`` matmul in ``dtype``, best of ``reps`` after a warm-up."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def announce(parts: dict[str, float], rates: dict[str, float], note: str = "") -> float:
    """Print the expected duration (one line) and return it in seconds."""
    total = sum(parts.values())
    print(f"expected duration: ~{total / 60:.1f} min{note} ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in parts.items())
          + f"; rough, from {', '.join(f'{k} {r:.0f}' for k, r in rates.items())} GFLOP/s "
          "2048^3 matmuls)", flush=True)
    return total


# ---- bench_correlate.py -----------------------------------------------------------------------
def correlate_seconds(args, n_tokens: int, precs: list[str], rate: dict[str, float]) -> dict:
    """Rough seconds of each part of bench_correlate (rates in GFLOP/s per precision).

    GEMMs count their FLOPs; the rest (forward passes, summaries, the paper way's
    TransformerLens jobs) counts as FLOP-equivalents per token or per run, fitted on one run
    of this benchmark (AMD EPYC, 2 threads, 8k tokens) and scaled by the fp32 rate."""
    rows = args.rows_per_gemm + 1
    ref = 2 * 2048 * 4 * 2048  # cross-GEMM FLOPs per row, reference mode
    pairs = 2 * 2048 * (4 + 3 + 2 + 1) * 2048  # all-pairs
    cov = 5 * 4 * 2 * 512 * 512  # within-layer GEMMs
    g32 = rate["fp32"] * 1e9
    est: dict[str, float] = {}
    for pr in precs:
        g = rate[pr] * 1e9
        est[f"(a) {pr}"] = args.repeats * 2 * 2 * 4096 ** 3 / g
        est[f"(b) {pr}"] = args.repeats * 2 * rows * (ref + pairs + 2 * cov) / (0.85 * g)
        # forward ~50 MFLOP-eq per token, summaries ~470 GFLOP-eq, process + loads ~15 s
        est[f"(c) {pr}"] = args.e2e_repeats * (
            15 + n_tokens * (ref + cov) / g + (n_tokens * 50e6 + 470e9) / g32)
    if not args.skip_paper:  # 8 jobs x (~78 MFLOP-eq per token through TL, ~57 through HF)
        est["(d)"] = args.e2e_repeats * (8 * n_tokens * (78e6 + 57e6) / g32 + 10)
    return est


# ---- bench_explain.py -------------------------------------------------------------------------
def explain_seconds(n_tokens: int, n_neurons: int, n_vocab: int, gflops: float,
                    precision: str) -> dict[str, float]:
    """Rough seconds per part: FLOP-equivalents per token, neuron-row and neuron x vocabulary
    entry, fitted on one run here (AMD EPYC, 2 threads, 500 neurons, 200k tokens, fp32) and
    scaled by the measured fp32 matmul rate; fp64 counted twice for the pass."""
    g = gflops * 1e9
    return {"setup": (120e9 + 0.7e6 * n_tokens) / g,
            "pass": n_tokens * n_neurons * 9.7e3 * (2 if precision == "fp64" else 1) / g,
            "features": 70e9 / g, "VR": n_neurons * n_vocab * 5.5e3 / g}
