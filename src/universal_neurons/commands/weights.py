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
    p.add_argument("--model", "--models", dest="models", nargs="+", required=True, metavar="M",
                   help="models or suites (aliases, HF ids, folders)")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument("--top-k", type=int, default=10,
                   help="tokens / neurons kept per list and neuron (default 10)")
    p.add_argument("--device", default="cpu", help="where to compute (cpu or cuda; default cpu)")
    p.add_argument("--precision", choices=("fp32", "fp64"), default="fp32",
                   help="dtype of the cosine matrix products (default fp32: cosines within "
                        "1e-6, vocab moments within 1e-5 relative (skew 1e-6 absolute) of "
                        "float64; fp64: exact to rounding, ~3x slower)")
    p.add_argument("--compositions", action="store_true",
                   help="also embedding tokens, neuron and attention compositions")


def run(args: argparse.Namespace) -> int:
    import time

    import torch

    from universal_neurons.analysis.neuron_table import write_weight_stats
    from universal_neurons.analysis.weights import compute_weight_stats
    from universal_neurons.models.loading import load_model
    from universal_neurons.models.registry import expand_model_specs
    from universal_neurons.rundir import RunDir

    if args.top_k < 1:
        raise ValueError(f"--top-k must be at least 1, got {args.top_k}")
    dtype = torch.float64 if args.precision == "fp64" else torch.float32
    run_dir = RunDir(args.out)
    names, files, t0 = [], [], time.perf_counter()
    for spec in expand_model_specs(list(args.models)):
        model = load_model(spec)
        pw = model.adapter.processed_weights()
        stats = compute_weight_stats(pw, top_k=args.top_k, device=args.device,
                                     matmul_dtype=dtype, compositions=args.compositions)
        files += write_weight_stats(run_dir.path, model.name, stats, tokenizer=model.tokenizer,
                                    meta={"model": model.name, "processing": "fold_ln, "
                                          "center_writing_weights, center_unembed"})
        names.append(model.name)
        print(f"{model.name}: weight statistics of {pw.n_layers} x {pw.d_mlp} neurons")
    run_dir.record_stage(NAME, {"models": list(args.models), "top_k": args.top_k,
                                "precision": args.precision,
                                "compositions": args.compositions},
                         models=names, outputs=files,
                         timings={"total_s": time.perf_counter() - t0})
    print(f"wrote {run_dir.path}")
    return 0
