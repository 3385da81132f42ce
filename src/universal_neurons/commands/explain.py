"""``universal-neurons explain``: variance-reduction explanations of neurons (paper §4.3)."""

from __future__ import annotations

import argparse

NAME = "explain"
HELP = "explain neurons by token, previous-token and sequence features (variance reduction)"
DESCRIPTION = """\
Stream a token dataset once through a model and explain each selected neuron by binary
features: properties of the current and of the previous token (type, punctuation,
numbers, pronouns, affixes, word groups, unigrams, single letters), spaCy part of speech,
dependency and entity (optional extra: pip install 'universal-neurons[nlp]'), position
bins and context (inside quotes/parentheses, after a newline). For every neuron and
feature, VR = 1 - sum_g p_g Var_g / Var over the two groups the feature makes; the
previous token never crosses a sequence boundary. Writes
  RUN/explanations/<model>.parquet     top-k explanations per neuron (feature, kind, VR)
  RUN/explanations/<model>_vr.parquet  every VR, one row per neuron, plus position_mi
                                       (I(position; fires) in nats over every context
                                       position, the paper's), firing rate, top tokens
  RUN/features/<tokenizer>/vocab_features.parquet   the token features of the vocabulary
The per-token table costs 2 x vocab x neurons x 20 bytes; above --max-memory the neurons
are split over several passes.

examples:
  universal-neurons explain --model tiny-gpt2-a --out runs/tiny --neurons all
  universal-neurons explain --model stanford-gpt2-small-a --dataset data/pile-10M \\
      --out runs/small                        # the universal neurons found by correlate
"""




def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.options import add_config_options
    from universal_neurons.stages.explain import ExplainConfig

    add_config_options(p, ExplainConfig)


def run(args: argparse.Namespace) -> int:
    from universal_neurons.options import config_from_args
    from universal_neurons.stages.explain import ExplainConfig, run_explain

    config = config_from_args(ExplainConfig, args)
    result = run_explain(config)
    ex = result.explanations
    best = ex.top(1)
    print(f"explained {len(ex.neurons)} neurons of {ex.model} with {len(ex.columns)} features "
          f"in {result.timings['total_s']:.1f}s")
    for _, r in best.sort_values("vr", ascending=False).head(10).iterrows():
        print(f"  L{r.layer}.{r.neuron:<6} {r.kind:<8} {r.feature:<28} VR {r.vr:.3f}")
    for key, path in result.paths.items():
        print(f"{key}: {path}")
    return 0
