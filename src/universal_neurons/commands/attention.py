"""``universal-neurons attention``: attention-deactivation neurons (paper §5.3)."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import count as _count

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




def _positions(text: str) -> tuple[int, int | None]:
    start, sep, end = text.partition(":")
    try:
        lo, hi = int(start), (int(end) if end.strip() else None)
    except ValueError:
        lo, hi = -1, None
    if not sep or lo < 1 or (hi is not None and hi <= lo):
        raise argparse.ArgumentTypeError(f"bad --positions {text!r}: expected START:END with "
                                         "1 <= START < END, e.g. 64:256, or START: for the end")
    return lo, hi


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="M", help="model, e.g. tiny-gpt2-a")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--dataset", metavar="TOKENS", default=None,
                   help="token dataset folder (default: the bundled test split, tokenized)")
    p.add_argument("--tokens", type=_count, default=16_384, metavar="N",
                   help="tokens streamed, e.g. 1M (default 16384)")
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context of the default dataset (default min(512, model n_ctx))")
    p.add_argument("--pairs", nargs="+", default=[], metavar="L.N:L.H",
                   help="neuron-head pairs to path-ablate, e.g. L3.17:L5.2 (default: the "
                        "top heuristic pairs)")
    p.add_argument("--neurons", nargs="+", default=[], metavar="L.N",
                   help="choose the top pairs among these neurons only (e.g. universal ones)")
    p.add_argument("--top-pairs", type=int, default=5,
                   help="pairs per sign path-ablated by default (default 5)")
    p.add_argument("--table-k", type=int, default=100,
                   help="pairs per sign listed in heuristic_top (default 100)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline")
    p.add_argument("--max-points", type=int, default=2000,
                   help="per-token points kept per pair for plots (default 2000)")
    p.add_argument("--norm-measure", choices=("head_pct", "head_abs", "model_abs"),
                   default="head_pct",
                   help="output-norm change: %% change of the head-space |z_h| (head_pct, the "
                        "paper's figure, default), its absolute change (head_abs, the paper's "
                        "script) or absolute change of |z_h W_O| (model_abs)")
    p.add_argument("--positions", type=_positions, default=(64, 256), metavar="START:END",
                   help="query positions measured, END excluded and optional (default 64:256, "
                        "the paper's; 1: = every position after BOS)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.stages.attention import AttentionConfig, run_attention

    config = AttentionConfig(
        model=args.model, out=args.out, dataset=args.dataset, tokens=args.tokens,
        n_ctx=args.n_ctx, batch_size=args.batch_size, device=args.device,
        pairs=tuple(args.pairs), neurons=tuple(args.neurons), top_pairs=args.top_pairs,
        table_k=args.table_k, seed=args.seed, max_points=args.max_points,
        norm_measure=args.norm_measure, positions=args.positions,
        plots=not args.no_plots, progress=not args.quiet)
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
