"""``universal-neurons stats``: activation statistics of every neuron in one pass."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import count as _count

NAME = "stats"
HELP = "per-neuron activation statistics: moments, sparsity, histograms, examples, tokens"
DESCRIPTION = """\
Stream a token dataset once through each model (BOS/pad and newline tokens dropped unless
--keep-tokens) and keep, for every neuron, exactly and mergeably:
  mean, var, skew, kurt   of the pre-activation (streaming float64 moments; kurt not excess)
  sparsity                fraction of tokens where the neuron is active (--sparsity-rule;
                          default post>0, the paper's code used e.g. pre>-0.1)
  histogram               of the pre-activation, a range fitted per neuron + overflow bins
  example candidates      largest and smallest post-activations and a uniform sample of
                          positive ones (sequence, position, value)
  per-token table         mean/max post-activation on the most frequent tokens (bounded
                          by --token-table-mb)
Then it runs each model once more over only the sequences of the examples a report shows
(top, quantile bands of the positive activations, most negative; one per text window) and
records the activation at every token of their windows (7 tokens before to 3 after).
Writes RUN/stats/<model>/activation_stats.safetensors and joins the columns mean, var,
skew, kurt, sparsity into RUN/neurons/<model>.parquet.

examples:
  universal-neurons stats --model tiny-gpt2-a --out runs/tiny
  universal-neurons stats --model stanford-gpt2-small --dataset data/pile-100M \\
      --out runs/small --device cuda --max-tokens 10M
"""




def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "--models", dest="models", nargs="+", required=True, metavar="M",
                   help="models or suites (aliases, HF ids, folders); one pass for all")
    p.add_argument("--dataset", metavar="TOKENS", default=None,
                   help="token dataset folder (default: the bundled test split, tokenized)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--max-tokens", type=_count, default=None, metavar="N",
                   help="use only the first N tokens of the dataset, e.g. 1M")
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context of the default dataset (default min(512, model n_ctx))")
    p.add_argument("--keep-tokens", action="store_true",
                   help="keep BOS/pad and newline tokens (dropped by default)")
    p.add_argument("--sparsity-rule", default="post>0", metavar="RULE",
                   help="when a neuron counts as active: post>0 (default) or e.g. pre>-0.1")
    p.add_argument("--bins", type=int, default=64, help="histogram bins per neuron (default 64)")
    p.add_argument("--top-k", type=int, default=16,
                   help="top activating examples kept per neuron (default 16)")
    p.add_argument("--frequent-tokens", type=int, default=1000, metavar="N",
                   help="track per-token activations of up to N most frequent tokens")
    p.add_argument("--token-table-mb", type=float, default=256.0, metavar="MB",
                   help="memory budget of the per-token table per model (default 256)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.stages.stats import StatsConfig, run_stats

    result = run_stats(StatsConfig(
        models=tuple(args.models), out=args.out, dataset=args.dataset,
        max_tokens=args.max_tokens, n_ctx=args.n_ctx, keep_tokens=args.keep_tokens,
        sparsity_rule=args.sparsity_rule, bins=args.bins, top_k=args.top_k,
        frequent_tokens=args.frequent_tokens, token_table_mb=args.token_table_mb,
        device=args.device, batch_size=args.batch_size, progress=not args.quiet))
    print(f"{', '.join(result.models)}: statistics over {result.n_kept:,} kept tokens; "
          f"wrote {result.rundir}")
    return 0
