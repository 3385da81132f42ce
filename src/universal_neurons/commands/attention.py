"""``universal-neurons attention``: attention-deactivation neurons (paper §5.3)."""

from __future__ import annotations

import argparse

NAME = "attention"
HELP = "attention-deactivation neurons: BOS heuristic for every neuron-head pair, path ablation"
DESCRIPTION = """\
Score every (neuron, later attention head) pair by h = w_out . W_Q^h . k_BOS / sqrt(d_head)
(k_BOS: the head's key of the BOS token at position 0) against random w_out directions of
the same norms; then, streaming the dataset once, path-ablate the top pairs -- remove the
neuron's output from ONE head's query only (keys, values and other heads untouched) -- and
correlate the change in the head's attention to BOS and in its output norm with the
neuron's activation. As in the paper, the output norm is the head's |z_h| (mixed values,
head space, value bias folded out), its change in percent, at query positions 64-255
(--norm-measure head_abs: the absolute change of |z_h|, which the paper's script
correlates; model_abs: absolute change of |z_h W_O| in model space; --positions 1:
every position after BOS). Also compares |W_O v_BOS| with other tokens' value norms per
head.
Writes to RUN/attention/:
  heuristic_top, heuristic_hist, heuristic_summary.json   scores vs baseline
  path_ablation (+ path_ablation_points)                  per pair: correlations, means
  bos_value_norms                                         per head: BOS vs others
and RUN/plots/attention_{heuristic,path_ablation,bos_value_norms}.png.
Sign convention: deltas are ablated - clean, so a neuron that switches a head off (sends
its attention to BOS) has a negative correlation between activation and delta.

examples:
  universal-neurons attention --model tiny-gpt2-a --out runs/tiny
  universal-neurons attention --model stanford-gpt2-small-a --pairs L4.3594:L5.1 \\
      --tokens 1M --device cuda --out runs/small
"""




def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.attention import AttentionConfig

    add_config_options(p, AttentionConfig)


def run(args: argparse.Namespace) -> int:
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.attention import AttentionConfig, run_attention

    config = config_from_args(AttentionConfig, args)
    result = run_attention(config)
    s = result.heuristic_summary
    print(f"heuristic: std {s['std']:.3g} over {s['n_pairs']:,} pairs (random baseline "
          f"{s['baseline_std']:.3g}); median head |W_O v_t| / |W_O v_BOS| = "
          f"{s['median_head_value_norm_ratio']:.3g}")
    for r in result.passed.path_ablation.itertuples():
        print(f"{r.pair}: corr(activation, delta BOS attention) = "
              f"{r.corr_act_delta_bos_attn:+.3f}, corr(activation, delta output norm) = "
              f"{r.corr_act_delta_out_norm:+.3f} ({r.norm_measure}, positions {r.positions})")
    print(f"wrote {result.rundir}")
    return 0
