"""``universal-neurons correlate``: cross-model neuron correlations and universality."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import count as _count
from universal_neurons.commands._args import threshold as _threshold

NAME = "correlate"
HELP = "correlate every neuron with every neuron of other seeds; excess correlation, universality"
DESCRIPTION = """\
Stream a token dataset once through several models trained from different seeds and
compute, for every neuron, its Pearson correlation with every neuron of the other models
(all layers) and with a randomly rotated basis of them (the baseline). Writes
  RUN/neurons/<model>.parquet   layer, neuron, max/mean/min_corr, max/mean/min_baseline,
                                excess_corr, is_universal, baseline_std, p_value, q_value
                                (--rotations), excess_ci_low/high, split_half_agreement
                                (--blocks), <partner>_best/_corr/_baseline
  RUN/universality/threshold_curve.parquet   universal share at thresholds 0.1..0.9
  RUN/correlations/<a>__<b>.safetensors   per-neuron max/min, top/bottom-k, histogram,
                                moments of its correlations with b (both directions)
  RUN/manifest.json             config, seeds, token counts, memory plan, timings
The first model is the reference, compared with every other; --all-pairs gives every
model its own table. Under torchrun the ranks split the work (see docs/engine.md).

examples:
  universal-neurons correlate --models tiny-gpt2 --out runs/tiny
  universal-neurons correlate --models stanford-gpt2-small --dataset data/pile-100M \\
      --out runs/small --device cuda --checkpoint-every 10M
"""




def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", required=True, metavar="M",
                   help="models or suites (first = reference), e.g. tiny-gpt2 or "
                        "stanford-gpt2-small-a stanford-gpt2-small-b")
    p.add_argument("--dataset", metavar="TOKENS", default=None,
                   help="token dataset folder (default: the bundled test split, tokenized)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--all-pairs", action="store_true",
                   help="every model against every other, a neuron table for each")
    p.add_argument("--threshold", type=_threshold, default=0.5,
                   help="universal if excess_corr exceeds this (default 0.5)")
    p.add_argument("--baseline", choices=("rotation", "gaussian-rows", "none"),
                   default="rotation", help="random basis of the baseline: Haar rotation "
                   "(default), the paper code's normalised Gaussian rows, or none")
    p.add_argument("--seed", type=int, default=0, help="seed of the baseline bases (default 0)")
    p.add_argument("--rotations", type=int, default=1, metavar="K",
                   help="baseline draws: K independent bases per layer give each neuron a "
                   "K-draw null; adds baseline_std, p_value ((1 + #draws >= observed) / "
                   "(K + 1)) and Benjamini-Hochberg q_value (default 1 = the paper's single "
                   "baseline; each draw costs two more GEMMs per summarised chunk, "
                   "docs/engine.md)")
    p.add_argument("--blocks", type=int, default=1, metavar="B",
                   help="split the tokens into B >= 2 contiguous blocks for a delete-one-block "
                   "jackknife: adds excess_ci_low/high (95%%), excess_corr_block<j> and "
                   "split_half_agreement (universal in every block); co-moment memory grows "
                   "about (B + 1)-fold (default 1 = off)")
    p.add_argument("--site", choices=("post", "pre"), default="post",
                   help="neuron activation to correlate (default post = mlp.hook_post)")
    p.add_argument("--keep-tokens", action="store_true",
                   help="keep BOS/pad and newline tokens (dropped by default)")
    p.add_argument("--top-k", type=int, default=10, help="top/bottom partners kept per neuron")
    p.add_argument("--bins", type=int, default=100, help="histogram bins on [-1, 1]")
    p.add_argument("--precision", choices=("auto", "fp32", "tf32", "bf16"), default="auto",
                   help="GEMM inputs (float32 accumulation, float64 merges). auto (default): "
                   "the fastest precision native on the device whose error bound is within "
                   "--precision-tolerance (fp32 unless a tolerance is given). bf16 is fast only "
                   "on CUDA >= 8.0 and AVX512-BF16/AMX CPUs, tf32 only on CUDA >= 8.0; "
                   "elsewhere they fall back to fp32 with a warning (docs/engine.md)")
    p.add_argument("--precision-strict", action="store_true",
                   help="refuse a --precision the device does not run natively instead of "
                   "falling back to fp32")
    p.add_argument("--precision-tolerance", type=float, default=None, metavar="BOUND",
                   help="worst-case correlation error --precision auto may accept, e.g. 0.03 "
                   "to allow bf16 where it is native (default: the fp32 bound, ~5e-4)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--rows-per-gemm", type=int, default=4096,
                   help="kept tokens per accumulation GEMM (default 4096)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory budget, e.g. 16G (default: 70%% of available RAM, 90%% of "
                        "free GPU memory on CUDA)")
    p.add_argument("--max-tokens", type=_count, default=None, metavar="N",
                   help="use only the first N tokens of the dataset, e.g. 1M")
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context of the default dataset (default min(512, model n_ctx))")
    p.add_argument("--checkpoint-every", type=_count, default=None, metavar="N",
                   help="checkpoint every N tokens; rerunning the command resumes after "
                        "checking the checkpoint's SHA-256, options and dataset")
    p.add_argument("--restart", action="store_true",
                   help="discard an existing checkpoint (also one that fails its checks)")
    p.add_argument("--stats", action="store_true",
                   help="also compute every model's activation statistics (moments, sparsity, "
                   "histograms, top examples, per-token table; see `stats --help`) in the same "
                   "pass")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.stages.correlate import CorrelateConfig, run_correlate
    from universal_neurons.stages.stats import run_correlate_with_stats

    config = CorrelateConfig(
        models=tuple(args.models), out=args.out, dataset=args.dataset,
        all_pairs=args.all_pairs, threshold=args.threshold, baseline=args.baseline,
        seed=args.seed, rotations=args.rotations, blocks=args.blocks, site=args.site, keep_tokens=args.keep_tokens, top_k=args.top_k,
        bins=args.bins, precision=args.precision, precision_strict=args.precision_strict,
        precision_tolerance=args.precision_tolerance, device=args.device,
        batch_size=args.batch_size, rows_per_gemm=args.rows_per_gemm,
        max_memory=args.max_memory, max_tokens=args.max_tokens, n_ctx=args.n_ctx,
        checkpoint_every=args.checkpoint_every, restart=args.restart,
        progress=not args.quiet)
    # --stats: activation statistics from the same forward passes
    result = run_correlate_with_stats(config) if args.stats else run_correlate(config)
    _print_summary(result)
    return 0


def _print_summary(result) -> None:
    if result.tables:
        for name, table in result.tables.items():
            n = int(table["is_universal"].sum())
            u = result.universal.get(name, {})
            ci = (f", 95% CI {100 * u['fraction_ci_low']:.2f}-{100 * u['fraction_ci_high']:.2f}%"
                  if "fraction_ci_low" in u else "")
            sig = (f"; {u['n_significant']} with q < 0.05 against the rotation null"
                   if "n_significant" in u else "")
            print(f"{name}: {n} of {len(table)} neurons universal "
                  f"({100 * n / len(table):.2f}%{ci}){sig}")
        print(f"wrote {result.rundir}")
