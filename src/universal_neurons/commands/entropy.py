"""``universal-neurons entropy``: entropy neurons by fixing activations (paper §5.2)."""

from __future__ import annotations

import argparse

NAME = "entropy"
HELP = "find entropy neurons and sweep fixed activations: final-norm scale, entropy, loss, rank"
DESCRIPTION = """\
Fix the activation of each given neuron (and of random baseline neurons from the last
layers) to each of several values at every position, and measure the final norm's scale,
next-token entropy, loss and reciprocal rank of the true token (paper Fig. 7). As in the
paper: values -0.17 0 1 ... 6; means over tokens that are neither BOS/EOS/pad
(--count-special counts them) nor the last position; baseline neurons drawn from the
last two layers among those with l2 penalty <= its 90th percentile and vocab_var >= its
10th (--baseline-draw uniform: any neuron of those layers). Without
--neurons (or with --find) neurons are first ranked from weights alone: the norm of
w_out inside the effective null space of W_U (the smallest singular directions holding
at most --null-energy of its spectrum), with w_out norm, vocab_var and the cosine
between candidates (entropy/anti-entropy pairs). Writes
  RUN/entropy/candidates.parquet        layer, neuron, w_out_norm, vocab_var, null_frac,
                                        null_norm, rank  (+ candidate_pairs: cos of w_outs)
  RUN/entropy/sweep.parquet             group (clean/target/baseline), neuron, value,
                                        loss, entropy, ln_scale, reciprocal_rank, n_tokens
  RUN/plots/entropy_<neuron>.png        the four metrics vs value, target vs baseline
(CSV copies beside the tables.)

examples:
  universal-neurons entropy --model tiny-gpt2-a --out runs/tiny
  universal-neurons entropy --model stanford-gpt2-medium-a --neurons L23.945 L22.2882 \\
      --tokens 100k --device cuda --out runs/medium
"""




def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.entropy import EntropyConfig

    add_config_options(p, EntropyConfig)


def run(args: argparse.Namespace) -> int:
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.entropy import EntropyConfig, run_entropy

    config = config_from_args(EntropyConfig, args)
    result = run_entropy(config)
    if result.candidates is not None:
        best = result.candidates.head(5)
        print("best candidates: " + ", ".join(
            f"{r.neuron_name} (null_frac {r.null_frac:.2f}, |w_out| {r.w_out_norm:.2f})"
            for r in best.itertuples()))
    s = result.sweep.summary
    for name in dict.fromkeys(s.loc[s["group"] == "target", "neuron"]):
        t = s[s["neuron"] == name].sort_values("value")
        lo, hi = t.iloc[0], t.iloc[-1]
        print(f"{name}: value {lo.value:g} -> {hi.value:g}: ln_scale {lo.ln_scale:.3g} -> "
              f"{hi.ln_scale:.3g}, entropy {lo.entropy:.3f} -> {hi.entropy:.3f}")
    print(f"wrote {result.rundir}")
    return 0
