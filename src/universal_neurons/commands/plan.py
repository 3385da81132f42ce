"""``universal-neurons plan``: the memory plan and projected time of a study, before any
download."""

from __future__ import annotations

import argparse
import json

from universal_neurons.commands._args import count as _count

NAME = "plan"
HELP = "memory plan and projected time of a correlate run, from model configs alone"
DESCRIPTION = """\
Plan a correlate run without loading weights or data: passes over the tokens, rows per
GEMM, batch size, the bytes each part holds, and a projected time for --tokens tokens.
Model dimensions come from local config.json files or, for the registry's aliases and
suites (GPT-2, stanford-gpt2-small/medium, Pythia seeds), from their published configs,
so a GPU can be sized before anything is downloaded.

The projection: GEMM flops of the accumulation (all passes) and of the forward passes
(re-run on every pass) at a fraction of the device's matmul peak -- on CPU measured here
in a second, on CUDA the --peak-tflops you give (default: an A100's dense peak for the
precision). It assumes the accumulation reaches 80% and the forward passes 50% of peak.

examples:
  universal-neurons plan --models stanford-gpt2-small
  universal-neurons plan --models stanford-gpt2-medium --device cuda --max-memory 80G \\
      --precision bf16 --tokens 100M
  universal-neurons plan --models stanford-gpt2-medium --device cuda --max-memory 80GB \\
      --precision bf16 --sums fp32     # half the co-moment memory: 3 passes instead of 7
"""

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", required=True, metavar="M",
                   help="models or suites (first = reference), as for correlate")
    p.add_argument("--all-pairs", action="store_true", help="every model against every other")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory budget, e.g. 80G (default: as correlate would use on this "
                        "machine; required for cuda when no GPU is present)")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="GEMM inputs (default fp32)")
    p.add_argument("--sums", choices=("fp64", "fp32"), default="fp64",
                   help="co-moment sums, as correlate --sums (default fp64)")
    p.add_argument("--tokens", type=_count, default=100_000_000, metavar="N",
                   help="tokens of the study to project (default 100M, the paper's)")
    p.add_argument("--n-ctx", type=int, default=512, help="context length (default 512)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--rows-per-gemm", type=int, default=4096,
                   help="kept tokens per accumulation GEMM (default 4096)")
    p.add_argument("--no-baseline", action="store_true", help="plan without the baseline")
    p.add_argument("--rotations", type=int, default=1, metavar="K",
                   help="baseline draws, as correlate --rotations (default 1)")
    p.add_argument("--blocks", type=int, default=1, metavar="B",
                   help="jackknife token blocks, as correlate --blocks (default 1 = off)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="matmul peak of the device for the projection (CUDA default: an "
                        "A100's dense peak for --precision; CPU default: measured now)")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    from universal_neurons.engine.layout import ModelShape
    from universal_neurons.engine.planner import forward_bytes, plan_correlation
    from universal_neurons.engine.projection import format_duration, project
    from universal_neurons.engine.sizes import default_budget, format_bytes, parse_bytes
    from universal_neurons.errors import UserError
    from universal_neurons.models.dims import model_dims
    from universal_neurons.models.registry import expand_model_specs

    specs = expand_model_specs(list(args.models))
    if len(specs) < 2:
        raise UserError(f"plan needs at least two models (got {specs}); pass a suite or "
                        "several models")
    if min(args.n_ctx, args.batch_size, args.rows_per_gemm, args.rotations, args.blocks) < 1:
        raise UserError("--n-ctx, --batch-size, --rows-per-gemm, --rotations and --blocks "
                        "must be positive")
    dims = [model_dims(s) for s in specs]
    device_type = "cuda" if args.device.startswith("cuda") else "cpu"
    if args.max_memory is not None:
        budget = parse_bytes(args.max_memory)
    elif device_type == "cuda" and not _cuda_available():
        raise UserError("no GPU here to read the memory from: pass --max-memory, e.g. 80G")
    else:
        budget = default_budget(args.device)
    shapes = [ModelShape(s, d.n_layers, d.d_mlp) for s, d in zip(specs, dims)]
    batch_tokens = args.batch_size * args.n_ctx
    def plan_for(sums: str):
        return plan_correlation(
            shapes, "all-pairs" if args.all_pairs else "reference", budget,
            baseline=not args.no_baseline, rows_per_gemm=args.rows_per_gemm,
            model_bytes=sum(d.n_params * 4 for d in dims),
            forward_bytes=forward_bytes(dims, batch_tokens), batch_size=args.batch_size,
            bf16_copy=args.precision == "bf16", device_type=device_type,
            draws=args.rotations, blocks=args.blocks, sums=sums)

    plan = plan_for(args.sums)
    peak, peak_source = _peak(args, device_type)
    proj = project(plan, shapes, dims, args.tokens, peak)
    acc, fwd, seconds = proj.accumulate_flops_per_token, proj.forward_flops_per_token, \
        proj.seconds
    if args.json:
        print(json.dumps({"models": specs, "plan": plan.to_dict(),
                          "accumulate_gflop_per_token": acc / 1e9,
                          "forward_gflop_per_token": fwd / 1e9, "peak_tflops": peak / 1e12,
                          "peak_source": peak_source, "tokens": args.tokens,
                          "projected_seconds": seconds}, indent=2))
        return 0
    print(plan.describe(shapes))
    print(f"per token: accumulate {acc / 1e9:.2f} GFLOP, forward {fwd / 1e9:.2f} GFLOP "
          f"({plan.n_passes} pass(es) x {len(dims)} models)")
    print(f"projected for {args.tokens:,} tokens on {args.device} at {peak / 1e12:.2f} TFLOP/s "
          f"peak ({peak_source}): {format_duration(seconds)}  "
          f"(plan total {format_bytes(plan.total_bytes)})")
    if args.sums == "fp64" and plan.n_passes > 1:
        print(_fp32_hint(plan.n_passes, plan_for("fp32"), args))
    return 0


def _fp32_hint(passes: int, fp32, args: argparse.Namespace) -> str:
    """What ``--sums fp32`` would change, with its correlation error bound."""
    from universal_neurons.engine.moments import correlation_error_bound

    if fp32.n_passes >= passes:
        return "(--sums fp32 would not need fewer passes)"
    bound = correlation_error_bound(args.precision, fp32.rows_per_gemm,
                                    "cuda" if args.device.startswith("cuda") else "cpu",
                                    "fp32", args.tokens)
    return (f"with --sums fp32: {fp32.n_passes} pass(es) instead of {passes}; worst-case "
            f"correlation error {bound:.1e} at {args.tokens:,} tokens (docs/engine.md)")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _peak(args: argparse.Namespace, device_type: str) -> tuple[float, str]:
    """Matmul peak in FLOP/s and where it came from."""
    from universal_neurons.engine.projection import A100_PEAK_TFLOPS, cpu_matmul_peak

    if args.peak_tflops is not None:
        return args.peak_tflops * 1e12, "given"
    if device_type == "cuda":
        return A100_PEAK_TFLOPS[args.precision] * 1e12, f"A100 dense {args.precision} peak"
    return cpu_matmul_peak(), "measured here, fp32"
