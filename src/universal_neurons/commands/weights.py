"""``universal-neurons weights``: weight statistics of every neuron (paper §4.2)."""

from __future__ import annotations

import argparse

NAME = "weights"
HELP = "per-neuron weight statistics: norms, input bias, L2 penalty, vocab/attention composition"
DESCRIPTION = """\
Compute, from each model's weights under TransformerLens's default processing (fold_ln,
center_writing_weights, center_unembed; the model itself is not modified), for every neuron:
  w_in_norm, input_bias, w_out_norm, in_out_sim = cos(w_in, w_out),
  l2_penalty = |w_in|^2 + |w_out|^2,
  vocab_mean/var/skew/kurt = moments over the vocabulary of cos(W_U, w_out) (kurtosis not
  excess: ~3 for a random direction), with the top/bottom-k tokens.
With --compositions also: top/bottom-k tokens of cos(W_E, w_in); top/bottom-k neurons of
later layers by cos(w_out, w_in'); attention composition (q/k/v with later heads, o with
earlier heads) -- about three times the arithmetic, and nothing in the report reads them.
Gated MLPs use the gate as the input direction. Writes
  RUN/stats/<model>/weights.safetensors        every array, [layers, d_mlp, ...]
  RUN/stats/<model>/weight_tokens.parquet      decoded top/bottom-k tokens
  RUN/neurons/<model>.parquet                  the per-neuron columns (joined in)

examples:
  universal-neurons weights --model tiny-gpt2-a --out runs/tiny
  universal-neurons weights --model stanford-gpt2-small --out runs/small --device cuda
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.weights import WeightsConfig

    add_config_options(p, WeightsConfig)


def run(args: argparse.Namespace) -> int:
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.weights import WeightsConfig, run_weights

    result = run_weights(config_from_args(WeightsConfig, args))
    for name, (layers, d_mlp) in result.shapes.items():
        print(f"{name}: weight statistics of {layers} x {d_mlp} neurons")
    print(f"wrote {result.rundir}")
    return 0
