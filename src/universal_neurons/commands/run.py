"""``universal-neurons run``: the whole study, cached per stage, resumable."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import count as _count
from universal_neurons.commands._args import threshold as _threshold

NAME = "run"
HELP = "run the whole study (correlations, statistics, families, roles, report) in one command"
DESCRIPTION = """\
Run every stage in order on one run directory:

  correlate (+ activation statistics in the same pass) -> weights -> properties ->
  explain -> families -> entropy -> attention -> paper-results -> paper (RUN/paper/index.md)
  -> report

With no arguments it studies the bundled suite tiny-gpt2 (tiny-gpt2-a against b..e) on the
bundled test split and writes runs/default/report/index.html. A finished stage is skipped
only when its arguments, its inputs (the token dataset's files, the models' weight files),
the stages before it and its own outputs on disk are all unchanged; otherwise it reruns
(the log says why) with every stage after it. An interrupted run resumes. Records live in
RUN/pipeline.json (--force ignores it). Settings can come from a TOML file whose keys are
the long options below, spelled explain-tokens or explain_tokens (plus [extra] with
per-stage argument lists); command-line options override the file.

examples:
  universal-neurons run
  universal-neurons run --models stanford-gpt2-small --dataset data/pile-10M --tokens 10M \\
      --device cuda --out runs/gpt2-small
  universal-neurons run study.toml --skip attention
"""




def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", default=None, metavar="CONFIG.toml",
                   help="optional TOML file with the settings below")
    p.add_argument("--models", nargs="+", default=None, metavar="M",
                   help="models or suites; the first is explained in depth (default tiny-gpt2)")
    p.add_argument("--dataset", default=None, metavar="TOKENS",
                   help="token dataset folder (default: bundled test split)")
    p.add_argument("--tokens", type=_count, default=None, metavar="N",
                   help="tokens for the correlation/statistics pass (default 100k)")
    p.add_argument("--explain-tokens", type=_count, default=None, metavar="N",
                   help="tokens for variance-reduction explanations (default 50k)")
    p.add_argument("--intervention-tokens", type=_count, default=None, metavar="N",
                   help="tokens for entropy sweeps and path ablation (default 2k)")
    p.add_argument("--out", default=None, metavar="RUN", help="run directory (default runs/default)")
    p.add_argument("--threshold", type=_threshold, default=None,
                   help="excess correlation above which a neuron is universal (default 0.5)")
    p.add_argument("--all-pairs", action="store_true", default=None,
                   help="every model gets its own excess correlations")
    p.add_argument("--top-percent", type=float, default=None, metavar="P",
                   help="claims table compares the top P%% by excess correlation")
    p.add_argument("--device", default=None, help="cpu or cuda (default cpu)")
    p.add_argument("--seed", type=int, default=None, help="seed of the baseline rotations")
    p.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="memory budget of the correlate pass and the explain token table, "
                        "e.g. 16G (default: 70%% of available RAM)")
    p.add_argument("--precision", default=None,
                   help="GEMM inputs of the correlate pass: fp32, tf32, bf16 (see "
                        "`correlate --help`)")
    p.add_argument("--sums", choices=("fp64", "fp32"), default=None,
                   help="co-moment sums of the correlate pass: fp64 (default) or fp32 (half "
                        "the memory, fewer passes; see `correlate --help`)")
    p.add_argument("--token-filter", choices=("ours", "paper"), default=None,
                   help="tokens the correlate, statistics and explain passes drop: ours "
                        "(default: BOS/pad and every newline token) or paper (pad/BOS and "
                        "the single newline token)")
    p.add_argument("--skip", nargs="+", default=None, metavar="STAGE",
                   help="stages not to run (correlate weights properties explain families "
                   "entropy attention paper-results report)")
    p.add_argument("--force", action="store_true", help="rerun every stage")


def run(args: argparse.Namespace) -> int:
    import time

    from universal_neurons.pipeline import RunConfig, load_config_file, run_pipeline

    values = load_config_file(args.config) if args.config else {}
    for name in ("models", "dataset", "tokens", "explain_tokens", "intervention_tokens", "out",
                 "threshold", "all_pairs", "top_percent", "device", "seed", "max_memory",
                 "precision", "sums", "token_filter", "skip"):
        v = getattr(args, name)
        if v is not None:
            values[name] = tuple(v) if isinstance(v, list) else v
    cfg = RunConfig(**values)
    t0 = time.perf_counter()
    record = run_pipeline(cfg, quiet=args.quiet, force=args.force)
    last = record["last_run"]
    ran = ", ".join(f"{k} {v:.0f}s" for k, v in last["ran"].items()) or "nothing"
    unchanged = f"; unchanged: {', '.join(last['unchanged'])}" if last["unchanged"] else ""
    print(f"study finished in {time.perf_counter() - t0:.0f}s (ran: {ran}{unchanged}); "
          f"open {cfg.out}/report/index.html")
    return 0
