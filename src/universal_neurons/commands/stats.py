"""``universal-neurons stats``: activation statistics of every neuron in one pass."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import count as _count

NAME = "stats"
HELP = "per-neuron activation statistics: moments, sparsity, histograms, top examples, tokens"
DESCRIPTION = """\
Stream a token dataset once through each model (BOS/pad and newline tokens dropped unless
--keep-tokens) and keep, for every neuron, exactly and mergeably:
  mean, var, skew, kurt   of the pre-activation (streaming float64 moments; kurt not excess)
  sparsity                fraction of tokens where the neuron is active (--sparsity-rule;
                          default post>0, the paper's code used e.g. pre>-0.1)
  histogram               of the pre-activation, a range fitted per neuron + overflow bins
  top-k examples          largest post-activations (sequence, position, value)
  per-token table         mean/max post-activation on the most frequent tokens (bounded
                          by --token-table-mb)
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
    import dataclasses
    import time

    from universal_neurons.analysis.neuron_table import write_activation_stats
    from universal_neurons.data.dataset import dataset_for_models
    from universal_neurons.engine.activation_stats import (
        ActivationStatsConfig,
        activation_stats_for,
    )
    from universal_neurons.engine.runner import batch_ranges, stream
    from universal_neurons.models.loading import load_models
    from universal_neurons.rundir import RunDir

    t0 = time.perf_counter()
    config = ActivationStatsConfig(n_bins=args.bins, top_k=args.top_k,
                                   sparsity_rule=args.sparsity_rule)
    models = load_models(args.models, device=args.device)
    ds, n_seq = dataset_for_models(models, args.dataset, args.n_ctx, args.max_tokens,
                                   show_progress=not args.quiet)
    accs = activation_stats_for(models, ds, n_seq, config,
                                token_budget_bytes=int(args.token_table_mb * 2**20),
                                n_frequent_tokens=args.frequent_tokens,
                                keep_all=args.keep_tokens, device=args.device)
    s = stream(ds, models, accs, batch_ranges(n_seq, args.batch_size),
               tokenizer=models[0].tokenizer, keep_all=args.keep_tokens, device=args.device,
               progress=not args.quiet, desc=NAME)
    run_dir = RunDir(args.out)
    files = write_activation_stats(run_dir.path, accs)
    run_dir.record_stage(
        NAME, {**dataclasses.asdict(config), "models": list(args.models),
               "dataset": str(ds.path), "keep_tokens": args.keep_tokens,
               "frequent_tokens": args.frequent_tokens, "token_table_mb": args.token_table_mb},
        models=[m.name for m in models], outputs=files,
        tokens={"sequences": n_seq, "tokens": s.tokens, "kept_tokens": s.kept_tokens},
        timings={"forward_s": s.forward_s, "accumulate_s": s.accumulate_s,
                 "total_s": time.perf_counter() - t0})
    print(f"{', '.join(m.name for m in models)}: statistics over {s.kept_tokens:,} kept tokens; "
          f"wrote {run_dir.path}")
    return 0
