"""Cost of ``correlate --rotations K`` (not a timed test; prints one report).

Extra baseline draws cost only finalisation work: per draw, a QR and a rotated variance
per layer (first pass), the bases again in each later pass, and two GEMMs per summarised
chunk. Measured on synthetic co-moments (values do not change the cost):

  (a) the bundled suite's shape (5 models, 4 layers x 512 neurons, reference mode): the
      whole finalisation (``ModelStats.from_moments`` + ``summarize_moments``) at
      ``--ks`` (default 1 and 10), then K = 100 projected linearly from the per-draw slope;
  (b) GPT-2-small shape (12 layers x 3072 neurons): one layer's QR (single-threaded, as the
      engine makes them), one layer's rotated variances, one chunk's baseline (a layer of
      the row model against a layer of a partner: two ``[3072, 3072]`` GEMMs and the
      maxima) and one chunk's correlation summary, projected to a 5-model reference run
      (4 partners: 576 layer-pair chunks, 60 bases) for K = 10 and 100.

Times are process CPU seconds (all threads), which a busy machine inflates far less than
wall time; a projection divides the GEMM parts by the thread count and the QRs by the QR
workers (the engine runs one single-threaded QR per core).

    nice .venv/bin/python benchmarks/bench_rotations.py
    nice .venv/bin/python benchmarks/bench_rotations.py --ks 1 10 --d 3072 --layers 12
"""

from __future__ import annotations

import argparse
import time

import torch

from universal_neurons.engine.finalize import (
    MAX_QR_WORKERS,
    Baselines,
    ModelStats,
    _baseline_chunk,
    _Chunk,
    summarize_moments,
)
from universal_neurons.engine.layout import CrossBlock, Layout, ModelShape
from universal_neurons.engine.moments import CoMoments
from universal_neurons.engine.rotation import baseline_basis, rotated_variances
from universal_neurons.engine.summary import NeuronSummary


def _pd(d: int, gen: torch.Generator) -> torch.Tensor:
    """``Float64[d, d]`` positive definite (a sample co-moment of 2d rows)."""
    g = torch.randn(2 * d, d, generator=gen, dtype=torch.float64)
    return g.t() @ g


def synthetic_moments(shapes: list[ModelShape], seed: int = 0) -> CoMoments:
    """Reference-mode co-moments with random positive-definite layer co-moments and
    cross co-moments of correlation-like size."""
    gen = torch.Generator().manual_seed(seed)
    block = CrossBlock(0, 0, shapes[0].n_layers, 1, len(shapes))
    acc = CoMoments(shapes, [block])
    acc.n = 4 * max(s.d_mlp for s in shapes)
    assert acc.cov is not None
    for m, s in enumerate(shapes):
        for layer in range(s.n_layers):
            acc.cov[m][layer].copy_(_pd(s.d_mlp, gen))
    scale = float(acc.cov[0][0].diagonal().mean())
    acc.cross[0].copy_(torch.randn(acc.cross[0].shape, generator=gen, dtype=torch.float64)
                       * 0.05 * scale)
    return acc


def finalise(shapes: list[ModelShape], k: int) -> dict[str, float]:
    """Seconds of the whole finalisation with ``k`` draws (fresh moments, fresh bases)."""
    acc = synthetic_moments(shapes)
    layout = Layout(shapes)
    base = Baselines("rotation", 0, layout, torch.device("cpu"), draws=k)
    t0 = time.process_time()
    stats = ModelStats.from_moments(acc, base, free_cov=True)
    t1 = time.process_time()
    summ = {}
    for b in range(1, len(shapes)):
        summ[(0, b)] = NeuronSummary(shapes[0].n_neurons, shapes[b].n_neurons, draws=k)
        summ[(b, 0)] = NeuronSummary(shapes[b].n_neurons, shapes[0].n_neurons, draws=k)
    summarize_moments(acc, stats, summ, base)
    t2 = time.process_time()
    return {"stats_s": t1 - t0, "summarize_s": t2 - t1, "total_s": t2 - t0}


def layer_costs(d: int, repeats: int = 2) -> dict[str, float]:
    """Seconds of one QR, one rotated variance, one chunk's baseline and correlation
    summary at layer width ``d`` (best of ``repeats``)."""
    gen = torch.Generator().manual_seed(1)
    cov = _pd(d, gen)
    c = torch.randn(d, d, generator=gen) * 0.05
    inv = torch.full((d,), 1.0)
    shapes = [ModelShape("a", 1, d), ModelShape("b", 1, d)]
    layout = Layout(shapes)
    out = {"qr_s": float("inf"), "rotvar_s": float("inf"), "baseline_chunk_s": float("inf"),
           "corr_chunk_s": float("inf")}
    for r in range(repeats):
        t0 = time.process_time()
        basis = baseline_basis("rotation", r, "a", 0, d)
        t1 = time.process_time()
        rotated_variances(cov, basis)
        t2 = time.process_time()
        out["qr_s"] = min(out["qr_s"], t1 - t0)
        out["rotvar_s"] = min(out["rotvar_s"], t2 - t1)
    stats = ModelStats(layout, 10 * d, torch.zeros(2 * d, dtype=torch.float64),
                       [torch.ones(d, dtype=torch.float64)] * 2,
                       {(m, 0, 0): torch.ones(d, dtype=torch.float64) for m in (0, 1)})
    base = Baselines("rotation", 0, layout, torch.device("cpu"))
    base.use(stats)
    base.prepare([(0, 0), (1, 0)])
    ch = _Chunk(0, 1, 0, 0, 1, slice(0, d), slice(0, d), c.double())
    for _ in range(repeats):
        s_ab, s_ba = NeuronSummary(d, d), NeuronSummary(d, d)
        t0 = time.process_time()
        _baseline_chunk(ch, c, inv, inv, s_ab, s_ba, base, 0)
        t1 = time.process_time()
        rho = c * inv[:, None] * inv[None, :]
        s_ab.add(rho, slice(0, d), 0)
        s_ba.add(rho.t(), slice(0, d), 0)
        t2 = time.process_time()
        out["baseline_chunk_s"] = min(out["baseline_chunk_s"], t1 - t0)
        out["corr_chunk_s"] = min(out["corr_chunk_s"], t2 - t1)
    return out


def project(costs: dict[str, float], n_models: int, layers: int, k: int, workers: int
            ) -> dict[str, float]:
    """Seconds a reference run of ``n_models`` spends finalising with ``k`` draws (one pass):
    bases and rotated variances of every layer per draw (``workers`` QRs at once), and the
    baseline of every layer-pair chunk per draw, next to the correlation summaries (once)."""
    threads = torch.get_num_threads()
    bases = n_models * layers
    chunks = layers * layers * (n_models - 1)
    qr = k * bases * costs["qr_s"] / workers
    rotvar = k * bases * costs["rotvar_s"] / threads
    baseline = k * chunks * costs["baseline_chunk_s"] / threads
    corr = chunks * costs["corr_chunk_s"] / threads
    return {"qr_s": qr, "rotvar_s": rotvar, "baseline_s": baseline, "corr_s": corr,
            "total_s": qr + rotvar + baseline + corr}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ks", type=int, nargs="+", default=[1, 10])
    p.add_argument("--d", type=int, default=3072, help="layer width of the large shape")
    p.add_argument("--layers", type=int, default=12, help="layers of the large shape")
    p.add_argument("--models", type=int, default=5)
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    suite = [ModelShape(f"tiny-{c}", 4, 512) for c in "abcde"[:args.models]]
    rows = {k: finalise(suite, k) for k in args.ks}
    print("(a) bundled-suite shape (5 x 4 x 512, reference): finalisation CPU seconds")
    for k, r in rows.items():
        print(f"  K={k:<4} stats {r['stats_s']:7.2f}  summarize {r['summarize_s']:7.2f}  "
              f"total {r['total_s']:7.2f}")
    ks = sorted(rows)
    if len(ks) >= 2:
        slope = (rows[ks[-1]]["total_s"] - rows[ks[0]]["total_s"]) / (ks[-1] - ks[0])
        print(f"  per extra draw {slope:.3f} s -> K=100 about "
              f"{rows[ks[0]]['total_s'] + slope * (100 - ks[0]):.1f} s")
    costs = layer_costs(args.d)
    workers = min(MAX_QR_WORKERS, torch.get_num_threads())
    print(f"(b) layer width {args.d}, CPU seconds: one QR {costs['qr_s']:.2f} (1 thread), rotated "
          f"variance {costs['rotvar_s']:.2f}, one chunk's baseline "
          f"{costs['baseline_chunk_s']:.2f}, its correlation summary "
          f"{costs['corr_chunk_s']:.2f}; projected wall time of a one-pass run:")
    for k in (1, 10, 100):
        pr = project(costs, args.models, args.layers, k, workers)
        print(f"  {args.models} models x {args.layers} layers, K={k:<3}: QR {pr['qr_s']:8.0f} s "
              f"({workers} at once), rotated variances {pr['rotvar_s']:7.0f} s, baselines "
              f"{pr['baseline_s']:8.0f} s, correlations {pr['corr_s']:6.0f} s, total "
              f"{pr['total_s'] / 3600:6.2f} h")


if __name__ == "__main__":
    main()
