"""``universal-neurons entropy``: entropy neurons by fixing activations (paper §5.2)."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import count as _count

NAME = "entropy"
HELP = "find entropy neurons and sweep fixed activations: final-norm scale, entropy, loss, rank"
DESCRIPTION = """\
Fix the activation of each given neuron (and of random baseline neurons from the last
layers) to each of several values at every position, and measure the final norm's scale,
next-token entropy, loss and reciprocal rank of the true token (paper Fig. 6). As in the
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
    p.add_argument("--model", required=True, metavar="M", help="model, e.g. tiny-gpt2-a")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--neurons", nargs="+", default=[], metavar="L.N",
                   help="neurons to sweep, e.g. L23.945 (default: the best candidates)")
    p.add_argument("--values", nargs="+", type=float,
                   default=[-0.17, 0, 1, 2, 3, 4, 5, 6], metavar="V",
                   help="activation values to fix (default -0.17 0 1 2 3 4 5 6, the paper's)")
    p.add_argument("--find", action="store_true",
                   help="rank candidates from weights even when --neurons are given")
    p.add_argument("--dataset", metavar="TOKENS", default=None,
                   help="token dataset folder (default: the bundled test split, tokenized)")
    p.add_argument("--tokens", type=_count, default=16_384, metavar="N",
                   help="tokens to run, e.g. 100k (default 16384)")
    p.add_argument("--n-ctx", type=int, default=None,
                   help="context of the default dataset (default min(512, model n_ctx))")
    p.add_argument("--baseline", type=int, default=20, metavar="K",
                   help="random baseline neurons (default 20)")
    p.add_argument("--baseline-layers", type=int, default=2,
                   help="baseline neurons come from the last this-many layers (default 2)")
    p.add_argument("--baseline-draw", choices=("filtered", "uniform"), default="filtered",
                   help="filtered (the paper's, default): l2 penalty <= 90th percentile and "
                        "vocab_var >= 10th percentile; uniform: any neuron of those layers")
    p.add_argument("--count-special", action="store_true",
                   help="count rows whose token is BOS/EOS/pad in the means (the paper "
                        "leaves them out)")
    p.add_argument("--seed", type=int, default=0, help="seed of the baseline neurons")
    p.add_argument("--find-layers", type=int, default=2, metavar="K",
                   help="rank candidates in the last K layers (default 2; 0 = all)")
    p.add_argument("--null-energy", type=float, default=0.01,
                   help="share of W_U's spectrum energy in its effective null space "
                        "(default 0.01)")
    p.add_argument("--top-k", type=int, default=20,
                   help="candidates whose pairwise cosines are listed (default 20)")
    p.add_argument("--n-targets", type=int, default=2,
                   help="best candidates swept when no --neurons are given (default 2)")
    p.add_argument("--per-token", action="store_true",
                   help="also save per-token metrics of the clean and target runs")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.stages.entropy import EntropyConfig, run_entropy

    config = EntropyConfig(
        model=args.model, out=args.out, neurons=tuple(args.neurons), values=tuple(args.values),
        find=args.find, dataset=args.dataset, tokens=args.tokens, n_ctx=args.n_ctx,
        batch_size=args.batch_size, device=args.device, n_baseline=args.baseline,
        baseline_layers=args.baseline_layers, seed=args.seed, null_energy=args.null_energy,
        baseline_draw=args.baseline_draw, count_special=args.count_special,
        find_layers=args.find_layers or None, top_k=args.top_k, n_targets=args.n_targets,
        keep_tokens=args.per_token, plots=not args.no_plots, progress=not args.quiet)
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
