"""The whole study at the paper's model sizes, on small token counts (not a timed test).

Builds five GPT-2-small-shaped models (12 layers, d_model 768, 3,072 neurons per layer;
``--shape medium``: 24 layers, d_model 1024, 4,096 neurons) from seeds 0-4 with random
weights and the bundled suite's tokenizer, in a cache folder outside the repository, then
runs every stage of ``universal-neurons run`` as its own process (the same argument lists
the pipeline uses) and prints, per stage: wall time, tokens/s, peak RSS; for correlate also
the plan against the measured peak, and the accumulate step's GFLOP/s against this
machine's float32 matmul peak measured in the same run. Last, the projected time of the
paper's 100M-token correlate stage here and on one 80 GB GPU (A100 dense peaks; the
figures used are printed).

    .venv/bin/python benchmarks/bench_scale.py                      # GPT-2 small x 5
    .venv/bin/python benchmarks/bench_scale.py --tokens 2k --skip entropy attention
    .venv/bin/python benchmarks/bench_scale.py --shape medium --plan-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

SHAPES = {"small": dict(n_layer=12, n_embd=768, n_head=12, n_inner=3072),
          "medium": dict(n_layer=24, n_embd=1024, n_head=16, n_inner=4096)}


def build_suite(work: Path, shape: str, seeds: range = range(5)) -> list[str]:
    """Five random GPT-2s of ``shape`` saved with the bundled tokenizer (made once)."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from universal_neurons.models.registry import bundled_member_path

    tok = AutoTokenizer.from_pretrained(bundled_member_path("tiny-gpt2-a"))
    paths = []
    for seed in seeds:
        out = work / f"gpt2-{shape}-{'abcde'[seed]}"
        if not (out / "model.safetensors").is_file():
            torch.manual_seed(seed)
            cfg = GPT2Config(**SHAPES[shape], n_positions=1024, vocab_size=len(tok),
                             bos_token_id=tok.bos_token_id or 0,
                             eos_token_id=tok.eos_token_id or 0)
            GPT2LMHeadModel(cfg).save_pretrained(out, safe_serialization=True)
            tok.save_pretrained(out)
        paths.append(str(out))
    return paths


def gpu_matmul_peak(device: str, precision: str, n: int = 8192) -> tuple[float, str]:
    """Best ``torch.mm`` rate of an ``n x n`` product on the GPU in ``precision``."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(5):
        torch.cuda.synchronize(device)
        t = time.perf_counter()
        torch.mm(a, b)
        torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best, f"{precision}, {n}^3 on {torch.cuda.get_device_name(device)}"


def _stage_in_child(name: str, config, log: str) -> None:
    """Child process body: run one stage with its output in ``log`` and its resident set
    sampled by phase into ``<log>.rss.json`` (:class:`RssSampler`)."""
    import logging

    with open(log, "w") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        from universal_neurons.pipeline import run_stage

        with RssSampler(log + ".rss.json"):
            run_stage(name, config)


class RssSampler:
    """Samples this process's resident set every ``interval`` seconds from a thread and
    attributes each sample to the phase the main thread is in: its innermost three frames
    inside the package (``module.function``). Writes, per phase, the peak RSS and the
    sample count, and the stack of the overall peak, as JSON on exit."""

    def __init__(self, path: str, interval: float = 0.1):
        import threading

        self.path, self.interval = path, interval
        self.peaks: dict[str, list[float]] = {}
        self.peak: tuple[int, list[str]] = (0, [])
        self._stop = threading.Event()
        self._main = threading.main_thread().ident
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        phases = sorted(self.peaks.items(), key=lambda kv: -kv[1][0])
        with open(self.path, "w") as f:
            json.dump({"peak_rss": self.peak[0], "peak_stack": self.peak[1],
                       "phases": [{"phase": k, "peak_rss": int(v[0]), "samples": int(v[1])}
                                  for k, v in phases]}, f, indent=1)

    def _run(self) -> None:
        import sys

        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(self.interval):
            with open("/proc/self/statm") as f:
                rss = int(f.read().split()[1]) * page
            frame = sys._current_frames().get(self._main)
            stack = []
            while frame is not None:
                mod = frame.f_globals.get("__name__", "")
                if mod.startswith("universal_neurons"):
                    stack.append(f"{mod.removeprefix('universal_neurons.')}."
                                 f"{frame.f_code.co_name}:{frame.f_lineno}")
                frame = frame.f_back
            stack.reverse()  # outermost first
            phase = " > ".join(s.rsplit(":", 1)[0] for s in stack[-3:]) or "(outside)"
            entry = self.peaks.setdefault(phase, [0, 0])
            entry[0], entry[1] = max(entry[0], rss), entry[1] + 1
            if rss > self.peak[0]:
                self.peak = (rss, stack)


def run_stage_process(name: str, config, log: Path) -> dict:
    """One stage in a fresh process: wall seconds, peak RSS (ru_maxrss), exit code."""
    import multiprocessing

    t = time.perf_counter()
    proc = multiprocessing.get_context("spawn").Process(
        target=_stage_in_child, args=(name, config, str(log)))
    proc.start()
    _, status, usage = os.wait4(proc.pid, 0)
    return {"wall_s": time.perf_counter() - t, "rss_peak": usage.ru_maxrss * 1024,
            "user_s": usage.ru_utime, "sys_s": usage.ru_stime,
            "minor_faults": usage.ru_minflt, "rc": os.waitstatus_to_exitcode(status)}


def correlate_figures(run: Path, peak: float) -> dict:
    """Plan, token counts and the accumulate step's rate from the correlate manifest."""
    from universal_neurons.engine.layout import Layout, ModelShape
    from universal_neurons.engine.planner import FLOAT64_ADD_FLOPS

    m = json.loads((run / "manifest.json").read_text())["stages"]["correlate"]
    plan, t, kept = m["plan"], m["timings"], m["tokens"]["kept_tokens"]
    dims = _dims(m)
    shapes = [ModelShape(name, d.n_layers, d.d_mlp) for name, d in zip(m["models"], dims)]
    layout = Layout(shapes)
    rates, whole = [], []
    fwd_per_token = sum(d.forward_flops_per_token for d in dims)
    for p, blocks in enumerate(plan["passes"]):
        elems = 0
        for b in blocks:
            from universal_neurons.engine.layout import CrossBlock

            blk = CrossBlock(*b)
            rows, cols = layout.block_rows(blk), layout.block_cols(blk)
            elems += (rows.stop - rows.start) * (cols.stop - cols.start)
        if p == 0:
            elems += sum(s.n_layers * s.d_mlp ** 2 for s in shapes)
        fold = FLOAT64_ADD_FLOPS if plan.get("sums", "fp64") == "fp64" else 0
        flops = kept * elems * (2 + fold / plan["rows_per_gemm"])
        # streaming minus forward: the accumulate steps plus the last flush of the buffer
        # (with fewer kept tokens than rows_per_gemm that flush is all of the GEMM work)
        acc_s = t.get(f"pass{p}_stream_s", 0.0) - t.get(f"pass{p}_forward_s", 0.0)
        if acc_s > 0 and p > 0:  # pass 0 also feeds the activation statistics
            rates.append(flops / acc_s)
            # the whole pass: accumulation and forward passes over its streaming time
            whole.append((flops + kept * fwd_per_token) / t[f"pass{p}_stream_s"])
    return {"plan": plan, "kept": kept, "timings": t, "shapes": shapes,
            "accumulate_flops_s": sum(rates) / len(rates) if rates else None,
            "pass_flops_s": sum(whole) / len(whole) if whole else None,
            "peak_flops_s": peak}


def _dims(manifest: dict) -> list:
    from universal_neurons.models.dims import model_dims

    return [model_dims(path) for path in manifest["config"]["models"]]


def main() -> None:
    from universal_neurons.data.dataset import parse_count

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=tuple(SHAPES), default="small")
    p.add_argument("--work", default=os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
        "universal-neurons", "bench-scale"), help="models, dataset and run (outside the repo)")
    p.add_argument("--tokens", default="1k", help="correlate/statistics tokens (default 1k)")
    p.add_argument("--explain-tokens", default="4k")
    p.add_argument("--intervention-tokens", default="512")
    p.add_argument("--max-memory", default=None,
                   help="budget handed to the stages, as `run --max-memory` (default: theirs)")
    p.add_argument("--skip", nargs="*", default=[], help="stages not to run")
    p.add_argument("--device", default="cpu", help="cpu or cuda, handed to the stages")
    p.add_argument("--precision", default=None, help="correlate GEMM inputs (as `run`)")
    p.add_argument("--sums", default=None, choices=("fp64", "fp32"),
                   help="correlate co-moment sums (as `run`)")
    p.add_argument("--plan-only", action="store_true", help="print the plans and stop")
    p.add_argument("--gpu-memory", default="80GB", help="GPU for the projection (80GB)")
    p.add_argument("--gpu-precision", default="bf16", choices=("fp32", "tf32", "bf16"))
    args = p.parse_args()

    from universal_neurons.engine.projection import (
        A100_PEAK_TFLOPS,
        cpu_matmul_peak,
        format_duration,
    )
    from universal_neurons.pipeline import RunConfig, stage_configs

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    specs = build_suite(work, args.shape)
    print(f"models: {', '.join(specs)} (built in {time.perf_counter() - t0:.0f} s)")
    if args.device.startswith("cuda"):
        peak, what = gpu_matmul_peak(args.device, args.precision or "fp32")
    else:
        peak, what = max(cpu_matmul_peak(2048) for _ in range(2)), "float32, 2048^3, best of 2"
    print(f"matmul peak here: {peak / 1e9:.0f} GFLOP/s ({what}), "
          f"load avg {os.getloadavg()[0]:.1f}")
    gpu_proj = _gpu_projection(specs, args)
    if args.plan_only:
        return
    _announce(specs, parse_count(args.tokens), peak, args)

    run = work / f"run-{args.shape}"
    cfg = RunConfig(models=tuple(specs), out=str(run), tokens=parse_count(args.tokens),
                    explain_tokens=parse_count(args.explain_tokens),
                    intervention_tokens=parse_count(args.intervention_tokens),
                    max_memory=args.max_memory, skip=tuple(args.skip), device=args.device,
                    precision=args.precision, sums=args.sums)
    rows = []
    for name, config in stage_configs(cfg, specs[0]):
        config = dataclasses.replace(config, progress=False)
        if name == "correlate":
            config = dataclasses.replace(config, restart=True)
        print(f"[{name}] {config}", flush=True)
        r = run_stage_process(name, config, work / f"{name}.log")
        rows.append((name, r))
        print(f"  {r['wall_s']:.1f} s, peak RSS {r['rss_peak'] / 2**30:.2f} GiB, "
              f"sys {r['sys_s']:.0f} s, {r['minor_faults']:,} minor faults, rc {r['rc']}",
              flush=True)
        if r["rc"]:
            print(f"  failed; see {work / (name + '.log')}")
            break

    print("=" * 78)
    print(f"bench_scale  GPT-2 {args.shape} shape x {len(specs)} seeds, "
          f"{parse_count(args.tokens):,} correlate tokens, load avg {os.getloadavg()[0]:.1f}")
    tokens = {"correlate": cfg.tokens, "explain": cfg.explain_tokens,
              "entropy": cfg.intervention_tokens, "attention": cfg.intervention_tokens}
    print(f"{'stage':<11}{'wall':>9}{'tokens/s':>10}{'peak RSS':>11}{'sys':>7}")
    for name, r in rows:
        tps = f"{tokens[name] / r['wall_s']:.1f}" if name in tokens else "-"
        print(f"{name:<11}{r['wall_s']:>8.1f}s{tps:>10}{r['rss_peak'] / 2**30:>10.2f}G"
              f"{r['sys_s']:>6.0f}s")
    if rows and rows[0][0] == "correlate" and rows[0][1]["rc"] == 0:
        _report_correlate(run, peak, rows[0][1], gpu_proj, A100_PEAK_TFLOPS[args.gpu_precision],
                          args.gpu_precision, format_duration)


SUMMARY_FLOPS_PER_ELEMENT = 8000
"""FLOP-equivalents per correlation and direction of folding it into the per-neuron
summaries (top-k, histogram, power sums, baseline maxima): fitted on one GPT-2-small run on
a 2-core AMD EPYC (about 1,300 s of 2,481 s of summarising at 66 GFLOP/s)."""
OTHER_STAGES_S_AT_66_GFLOPS = 720
"""Wall seconds of weights, properties, explain (2k tokens), families, entropy and attention
(256 tokens) and report at GPT-2-small shape on that machine at 66 GFLOP/s."""


def _announce(specs: list[str], tokens: int, peak: float, args) -> None:
    """Print the expected duration: the correlate stage's streaming (from its plan), its
    fixed costs (rotated baselines, summaries, one QR per layer) and the other stages."""
    from universal_neurons.engine.layout import ModelShape
    from universal_neurons.engine.planner import forward_bytes, plan_correlation
    from universal_neurons.engine.projection import project
    from universal_neurons.engine.sizes import default_budget, parse_bytes
    from universal_neurons.models.dims import model_dims

    dims = [model_dims(s) for s in specs]
    shapes = [ModelShape(Path(s).name, d.n_layers, d.d_mlp) for s, d in zip(specs, dims)]
    from universal_neurons.errors import UserError

    budget = parse_bytes(args.max_memory) if args.max_memory else default_budget(args.device)
    try:
        plan = plan_correlation(shapes, "reference", budget,
                                model_bytes=sum(d.n_params * 4 for d in dims),
                                forward_bytes=forward_bytes(dims, 8 * 512), batch_size=8)
    except UserError as e:
        print(f"expected duration: unknown ({e})", flush=True)
        return
    n_ref, n_partners = shapes[0].n_neurons, sum(s.n_neurons for s in shapes[1:])
    d = shapes[0].d_mlp
    parts = {
        "streaming": project(plan, shapes, dims, tokens, peak).seconds,
        "baselines": 2 * 2 * n_ref * n_partners * d / peak,
        "summaries": 2 * n_ref * n_partners * SUMMARY_FLOPS_PER_ELEMENT / peak,
        "bases": sum(s.n_layers for s in shapes) * 2 * (4 / 3) * d ** 3
        / (peak / max(1, os.cpu_count() or 1)) / max(1, os.cpu_count() or 1),
    }
    skipped = set(args.skip)
    if not {"weights", "explain", "entropy"} <= skipped:
        parts["other stages"] = OTHER_STAGES_S_AT_66_GFLOPS * 66e9 / peak
    total = sum(parts.values())
    print(f"expected duration: ~{total / 60:.0f} min (" + ", ".join(
        f"{k} {v / 60:.0f} min" for k, v in parts.items()) + "; rough, scaled by the peak above)",
        flush=True)


def _gpu_projection(specs: list[str], args) -> float:
    """Plan and projected 100M-token correlate time on one GPU of ``--gpu-memory``."""
    from universal_neurons.engine.layout import ModelShape
    from universal_neurons.engine.planner import forward_bytes, plan_correlation
    from universal_neurons.engine.projection import A100_PEAK_TFLOPS, format_duration, project
    from universal_neurons.engine.sizes import parse_bytes
    from universal_neurons.models.dims import model_dims

    dims = [model_dims(s) for s in specs]
    shapes = [ModelShape(Path(s).name, d.n_layers, d.d_mlp) for s, d in zip(specs, dims)]
    budget = int(0.9 * parse_bytes(args.gpu_memory))
    plan = plan_correlation(shapes, "reference", budget, model_bytes=sum(d.n_params * 4
                                                                         for d in dims),
                            forward_bytes=forward_bytes(dims, 8 * 512), batch_size=8,
                            bf16_copy=args.gpu_precision == "bf16", device_type="cuda")
    tf = A100_PEAK_TFLOPS[args.gpu_precision]
    proj = project(plan, shapes, dims, 100_000_000, tf * 1e12)
    print(f"GPU plan ({args.gpu_memory}, 90% usable, {args.gpu_precision}): {plan.n_passes} "
          f"pass(es), {plan.total_bytes / 2**30:.1f} GiB; 100M tokens at {tf} TFLOP/s "
          f"(A100 dense peak) x 80% accumulate / 50% forward: {format_duration(proj.seconds)}")
    return proj.seconds


def _report_correlate(run: Path, peak: float, r: dict, gpu_s: float, gpu_tf: float,
                      gpu_prec: str, fmt) -> None:
    f = correlate_figures(run, peak)
    plan, t = f["plan"], f["timings"]
    print(f"correlate: plan {plan['n_passes']} pass(es), {plan['rows_per_gemm']} rows/GEMM, "
          f"batch {plan.get('batch_size')}; planned {plan['total_bytes'] / 2**30:.2f} GiB, "
          f"measured peak RSS {r['rss_peak'] / 2**30:.2f} GiB "
          f"({r['rss_peak'] / plan['total_bytes']:.0%} of plan)")
    if f["accumulate_flops_s"]:
        print(f"  accumulate step (passes after the first): "
              f"{f['accumulate_flops_s'] / 1e9:.0f} GFLOP/s = "
              f"{f['accumulate_flops_s'] / peak:.0%} of the matmul peak above")
    if f["pass_flops_s"]:
        print(f"  whole passes after the first, forward passes included: "
              f"{f['pass_flops_s'] / 1e9:.0f} GFLOP/s = {f['pass_flops_s'] / peak:.0%} of peak")
    stream = sum(v for k, v in t.items() if k.endswith("_stream_s"))
    summ = sum(v for k, v in t.items() if k.endswith("_summarize_s"))
    fixed = t.get("total_s", r["wall_s"]) - stream
    per_tok = stream / max(f["kept"], 1)
    print(f"  streaming {stream:.0f} s ({f['kept'] / stream:.1f} kept tokens/s over all "
          f"passes), summarising {summ:.0f} s, other fixed costs {fixed - summ:.0f} s")
    print(f"  projected 100M-token correlate here: {fmt(fixed + per_tok * 1e8)}; on one GPU "
          f"({gpu_tf} TFLOP/s {gpu_prec}): {fmt(gpu_s)}")
    _report_rss(run.parent / "correlate.log.rss.json", plan)


def _report_rss(path: Path, plan: dict) -> None:
    """The sampled resident set by phase (``RssSampler``) against the plan's terms."""
    if not path.is_file():
        return
    rss = json.loads(path.read_text())
    print(f"  sampled peak RSS {rss['peak_rss'] / 2**30:.2f} GiB in "
          f"{' > '.join(rss['peak_stack'][-4:])}")
    for ph in rss["phases"][:8]:
        print(f"    {ph['peak_rss'] / 2**30:6.2f} GiB  {ph['samples']:>6} samples  {ph['phase']}")
    b = plan["bytes"]
    print("  plan terms (GiB): " + ", ".join(f"{k} {v / 2**30:.2f}" for k, v in b.items()))


if __name__ == "__main__":
    main()
