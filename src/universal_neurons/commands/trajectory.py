"""``universal-neurons trajectory``: universality of each neuron over training checkpoints."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import count as _count
from universal_neurons.commands._args import threshold as _threshold

NAME = "trajectory"
HELP = "universality over training: excess correlation of each neuron at every checkpoint"
DESCRIPTION = """\
For each training checkpoint, correlate every neuron of the first model (member a) with the
other models at the same checkpoint (one `correlate` pass per checkpoint, into
RUN/trajectory/<checkpoint>/), then follow each neuron (same seed, same index) across
checkpoints: when it first becomes universal, whether it stays universal, and how its excess
correlation at an early checkpoint predicts the last one. Writes
  RUN/trajectory/neurons.parquet   one row per (neuron, checkpoint): layer, neuron,
                                   checkpoint, step, tokens, excess_corr, is_universal,
                                   emerged, persists, first_universal, stays_universal, ...
  RUN/trajectory/summary.parquet   one row per checkpoint: share universal, median excess,
                                   emergence and persistence rates, Spearman/Pearson with the
                                   last checkpoint, precision/recall of universal-here for
                                   universal-at-the-last
  RUN/plots/trajectory_*.png       figures (the report shows them)
Checkpoints are hub revisions (each model is loaded as MODEL@CHECKPOINT) or, for models
given as folders, folders inside each (e.g. the zoo's snapshots/tokens-N). List them in
training order; the last is the reference. Rerunning skips the checkpoints already done
with the same options (--restart recomputes them). See docs/trajectory.md.

examples:
  universal-neurons trajectory --models pythia-160m-seeds \\
      --checkpoints step1000 step10000 step143000 --out runs/pythia-traj --max-tokens 1M
  universal-neurons trajectory --models W/members/tiny-gpt2-a W/members/tiny-gpt2-b \\
      --checkpoints snapshots/tokens-250000 snapshots/tokens-1000000 \\
      --tokenizer W/tokenizer --out runs/tiny-traj
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", required=True, metavar="M",
                   help="models or a suite (first = member a, whose neurons are followed)")
    p.add_argument("--checkpoints", nargs="+", required=True, metavar="C",
                   help="in training order: hub revisions (step1000 ...) or, for models given "
                   "as folders, folders relative to each (snapshots/tokens-250000 ...)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer folder for checkpoint folders saved without one (the zoo's "
                   "snapshots: W/tokenizer)")
    p.add_argument("--dataset", metavar="TOKENS", default=None,
                   help="token dataset folder (default: the bundled test split, tokenized)")
    p.add_argument("--max-tokens", type=_count, default=None, metavar="N",
                   help="use only the first N tokens of the dataset at every checkpoint")
    p.add_argument("--threshold", type=_threshold, default=0.5,
                   help="universal if excess_corr exceeds this (default 0.5)")
    p.add_argument("--baseline", choices=("rotation", "gaussian-rows", "none"),
                   default="rotation", help="random basis of the baseline (default rotation)")
    p.add_argument("--seed", type=int, default=0, help="seed of the baseline bases (default 0)")
    p.add_argument("--site", choices=("post", "pre"), default="post",
                   help="neuron activation to correlate (default post)")
    p.add_argument("--keep-tokens", action="store_true",
                   help="keep BOS/pad and newline tokens (dropped by default)")
    p.add_argument("--precision", choices=("auto", "fp32", "tf32", "bf16"), default="auto",
                   help="GEMM inputs (see `correlate --help`; default auto = fp32)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--rows-per-gemm", type=int, default=4096,
                   help="kept tokens per accumulation GEMM (default 4096)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory budget of each pass, e.g. 16G")
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context of the default dataset (default min(512, model n_ctx))")
    p.add_argument("--checkpoint-every", type=_count, default=None, metavar="N",
                   help="save the engine's state every N tokens within a checkpoint's pass")
    p.add_argument("--restart", action="store_true",
                   help="recompute every checkpoint, even those already done")
    p.add_argument("--no-plots", action="store_true", help="write the tables only")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.stages.trajectory import TrajectoryConfig, run_trajectory

    config = TrajectoryConfig(
        models=tuple(args.models), checkpoints=tuple(args.checkpoints), out=args.out,
        tokenizer=args.tokenizer, dataset=args.dataset, threshold=args.threshold,
        baseline=args.baseline, seed=args.seed, site=args.site, keep_tokens=args.keep_tokens,
        precision=args.precision, device=args.device, batch_size=args.batch_size,
        rows_per_gemm=args.rows_per_gemm, max_memory=args.max_memory,
        max_tokens=args.max_tokens, n_ctx=args.n_ctx, checkpoint_every=args.checkpoint_every,
        restart=args.restart, plots=not args.no_plots, progress=not args.quiet)
    result = run_trajectory(config)
    print(f"{result.model}: universality at {len(result.checkpoints)} checkpoints "
          f"({len(result.computed)} computed, "
          f"{len(result.checkpoints) - len(result.computed)} read back)")
    for row in result.summary.itertuples(index=False):
        print(f"  {row.checkpoint}: {row.n_universal} universal "
              f"({100 * row.share_universal:.2f}%), median excess {row.median_excess:.3f}, "
              f"{row.n_emerged} new, Spearman with last {row.spearman_last:.3f}")
    print(f"wrote {result.rundir}")
    return 0
