"""``universal-neurons trajectory``: universality of each neuron over training checkpoints."""

from __future__ import annotations

import argparse

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
      --checkpoints step1000 step10000 step143000 --out runs/pythia-traj --tokens 1M
  universal-neurons trajectory --models W/members/tiny-gpt2-a W/members/tiny-gpt2-b \\
      --checkpoints snapshots/tokens-250000 snapshots/tokens-1000000 \\
      --tokenizer W/tokenizer --out runs/tiny-traj
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.trajectory import TrajectoryConfig

    add_config_options(p, TrajectoryConfig)


def run(args: argparse.Namespace) -> int:
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.trajectory import TrajectoryConfig, run_trajectory

    result = run_trajectory(config_from_args(TrajectoryConfig, args))
    print(f"{result.model}: universality at {len(result.checkpoints)} checkpoints "
          f"({len(result.computed)} computed, "
          f"{len(result.checkpoints) - len(result.computed)} read back)")
    for row in result.summary.itertuples(index=False):
        print(f"  {row.checkpoint}: {row.n_universal} universal "
              f"({100 * row.share_universal:.2f}%), median excess {row.median_excess:.3f}, "
              f"{row.n_emerged} new, Spearman with last {row.spearman_last:.3f}")
    print(f"wrote {result.rundir}")
    return 0
