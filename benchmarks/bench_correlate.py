"""Benchmark of the correlation engine (not a timed test; prints one report).

Measures, in one run on this machine, for each ``--precisions`` (default fp32 and bf16):
  (a) the matmul peak of that GEMM input dtype (best of large ``torch.mm``), GFLOP/s;
  (b) the engine's accumulate step (``CoMoments.flush``: centring, Chan row, every cross
      and within-layer GEMM, float64 adds) in GFLOP/s and as a fraction of (a); peak and
      step are measured alternately so that load from other processes hits both alike;
  (c) end-to-end tokens/s of ``correlate`` for 5 models with the rotation baseline;
  (d) the paper code's way (wesg52/universal-neurons ``correlations_fast.py``) re-implemented
      faithfully on the same tokens: one job per (pair, baseline) -- 4 partners x {none,
      rotation} -- each re-running both models through TransformerLens's
      ``HookedTransformer.run_with_hooks`` (as that code does), float16 activations, a
      float32 einsum per layer pair added into float64 CPU sums, the baseline by explicitly
      rotating the activations, then the full correlation matrix and its summaries; and the
      speed ratio. Also the same jobs with this package's HF-hook forward passes, which
      isolates what one pass and the algebraic baseline buy;
  (e) the run's peak RSS (high-water mark, reset after the models are loaded) against the
      planner's estimate.

Models: the bundled suite ``tiny-gpt2`` when it is built, else (or with ``--random-models``)
5 random GPT-2s of the same shape (4 layers, d_model 160, d_mlp 512, n_ctx 256) with a
tokenizer trained on the bundled corpus.

Precisions this machine does not run natively (``engine/precision.py``: bf16 without
AVX512-BF16/AMX, e.g. on AVX2 CPUs, where a bf16 matmul is ~100x slower) are skipped with
the reason. Before measuring, the expected duration is printed (from the sizes and a quick
fp32 matmul rate; rough), and at the end the actual one.

    .venv/bin/python benchmarks/bench_correlate.py                   # prints how long first
    .venv/bin/python benchmarks/bench_correlate.py --random-models --tokens 8k --e2e-repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from expected_duration import announce, correlate_seconds, matmul_gflops

MEMBERS = [f"tiny-gpt2-{c}" for c in "abcde"]


# ---- setup ----------------------------------------------------------------------------------
def bundled_ready() -> bool:
    from universal_neurons.models.registry import bundled_member_path

    return all((bundled_member_path(m) / "model.safetensors").is_file() for m in MEMBERS)


def random_suite(work: Path) -> list[str]:
    """5 random GPT-2s shaped like the bundled suite, saved with a trained tokenizer."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok_dir = work / "tokenizer"
    if not (tok_dir / "tokenizer.json").exists():
        from universal_neurons.data.sources import open_source
        from universal_neurons.zoo.tokenizer import train_tokenizer

        docs = list(open_source("bundled:test").documents(None))
        train_tokenizer(docs, tok_dir, vocab_size=4096)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    paths = []
    for i, name in enumerate(MEMBERS):
        out = work / f"random-{name}"
        if not (out / "model.safetensors").exists():
            torch.manual_seed(i)
            cfg = GPT2Config(n_layer=4, n_embd=160, n_head=5, n_inner=512, n_positions=256,
                             vocab_size=len(tok), bos_token_id=0, eos_token_id=0,
                             activation_function="gelu_new")
            GPT2LMHeadModel(cfg).save_pretrained(out, safe_serialization=True)
            tok.save_pretrained(out)
        paths.append(str(out))
    return paths


def dataset_for(spec: str, work: Path, tokens: int):
    from universal_neurons.data.dataset import build_token_dataset, open_token_dataset
    from universal_neurons.models.loading import load_model

    tok = load_model(spec).tokenizer
    from universal_neurons.data.tokens import tokenizer_fingerprint

    out = work / f"tokens-{tokenizer_fingerprint(tok)[:12]}-{tokens}"
    if (out / "meta.json").exists():
        return open_token_dataset(out)
    return build_token_dataset("bundled:test", tok, out, n_ctx=256, tokens=tokens,
                               show_progress=False, overwrite=True)


# ---- (a) + (b) ------------------------------------------------------------------------------
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def accumulate_step(mode: str, rows: int, precision: str = "fp32") -> tuple[float, float]:
    """(seconds, GFLOP/s) of one accumulate step (buffer fill + ``CoMoments.flush`` with its
    Chan row) of ``rows`` tokens for the 5-model shapes."""
    from universal_neurons.engine.layout import ModelShape
    from universal_neurons.engine.moments import CoMoments
    from universal_neurons.engine.planner import single_pass_blocks

    shapes = [ModelShape(m, 4, 512) for m in MEMBERS]
    acc = CoMoments(shapes, single_pass_blocks(shapes, mode), rows_per_gemm=rows,
                    precision=precision)
    z = torch.randn(rows, 5 * 2048) * 0.5 + 0.1
    acc.update_rows(z)  # first step: no Chan row, allocations
    t = time.perf_counter()
    acc.update_rows(z)
    dt = time.perf_counter() - t
    n = rows + 1
    flops = sum(2 * n * (b.layer_stop - b.layer_start) * 512 * 2048 * len(b.partners)
                for b in acc.blocks) + 5 * 4 * 2 * n * 512 * 512
    return dt, flops / dt / 1e9


# ---- (c) + (e): a fresh process ---------------------------------------------------------------
def rss_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def child_e2e(specs: list[str], dataset: str, out: str, rows: int, batch_size: int,
              precision: str = "fp32") -> dict:
    """Run in a fresh process: load models, reset the RSS high-water mark, correlate."""
    from universal_neurons.models.loading import load_model
    from universal_neurons.stages.correlate import CorrelateConfig, run_correlate

    t0 = time.perf_counter()
    models = [load_model(s) for s in specs]
    load_s = time.perf_counter() - t0
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM (Linux >= 4.0)
    base = rss_bytes("VmRSS")
    t1 = time.perf_counter()
    res = run_correlate(CorrelateConfig(models=tuple(specs), out=out, dataset=dataset,
                                        rows_per_gemm=rows, batch_size=batch_size,
                                        precision=precision, precision_strict=True,
                                        progress=False, restart=True), models=models)
    wall = time.perf_counter() - t1
    return {"load_s": load_s, "wall_s": wall, "n_tokens": res.n_tokens, "n_kept": res.n_kept,
            "timings": res.timings, "rss_base": base, "rss_peak": rss_bytes("VmHWM"),
            "plan_engine_bytes": res.plan.engine_bytes, "plan": res.plan.bytes,
            "n_universal": int(res.tables[res.models[0]]["is_universal"].sum())}


# ---- (d) the paper code's way -----------------------------------------------------------------
def paper_activations_tl(tl, batch: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """As ``get_activations`` there: TransformerLens ``run_with_hooks`` (stopping before the
    unembedding), hook_post saved as float16, stacked, rearranged to ``[l, n, tokens]`` and
    filtered."""
    n_layers = tl.cfg.n_layers
    store: dict[str, torch.Tensor] = {}

    def save(t: torch.Tensor, hook) -> None:
        store[hook.name] = t.detach().to(torch.float16)

    hooks = [(f"blocks.{layer}.mlp.hook_post", save) for layer in range(n_layers)]
    tl.run_with_hooks(batch, fwd_hooks=hooks, stop_at_layer=n_layers + 1)
    acts = torch.stack([store[name] for name, _ in hooks], dim=2)  # [b, pos, l, n]
    acts = acts.permute(2, 3, 0, 1).reshape(n_layers, acts.shape[3], -1)  # [l, n, b*pos]
    return acts[:, :, keep.reshape(-1)]


def paper_activations_hf(model, batch: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The same through this package's HF forward hooks (isolates the accumulation)."""
    acts = model.adapter.capture(batch, sites=("post",))["post"].half()  # [l, b, p, n]
    acts = acts.permute(0, 3, 1, 2).reshape(acts.shape[0], acts.shape[3], -1)
    return acts[:, :, keep.reshape(-1)]


class PaperPearson:
    """``StreamingPearsonComputer`` of correlations_fast.py: float64 CPU sums."""

    def __init__(self, l1: int, d1: int, l2: int, d2: int):
        f64 = torch.float64
        self.m1_sum, self.m1_sum_sq = torch.zeros(l1, d1, dtype=f64), torch.zeros(l1, d1, dtype=f64)
        self.m2_sum, self.m2_sum_sq = torch.zeros(l2, d2, dtype=f64), torch.zeros(l2, d2, dtype=f64)
        self.m1_m2_sum = torch.zeros(l1, d1, l2, d2, dtype=f64)
        self.n = 0

    def update(self, a1: torch.Tensor, a2: torch.Tensor) -> None:
        for i in range(a1.shape[0]):
            x = a1[i].to(torch.float32)
            for j in range(a2.shape[0]):
                self.m1_m2_sum[i, :, j, :] += torch.einsum("at,bt->ab", x,
                                                           a2[j].to(torch.float32)).cpu()
        # (float32 here: float16 squares overflow on CPU sums)
        self.m1_sum += a1.float().sum(-1).cpu()
        self.m1_sum_sq += (a1.float() ** 2).sum(-1).cpu()
        self.m2_sum += a2.float().sum(-1).cpu()
        self.m2_sum_sq += (a2.float() ** 2).sum(-1).cpu()
        self.n += a1.shape[-1]

    def correlation(self) -> torch.Tensor:
        out = []
        for i in range(self.m1_sum.shape[0]):
            num = self.m1_m2_sum[i] - (1 / self.n) * torch.einsum("a,lb->alb", self.m1_sum[i],
                                                                    self.m2_sum)
            n1 = (self.m1_sum_sq[i] - self.m1_sum[i] ** 2 / self.n) ** 0.5
            n2 = (self.m2_sum_sq - self.m2_sum ** 2 / self.n) ** 0.5
            out.append((num / torch.einsum("a,lb->alb", n1, n2)).to(torch.float16))
        return torch.stack(out)


def paper_summary(c: torch.Tensor) -> dict:
    """``summarize_correlation_matrix``: histogram, top/bottom 50, max/min, moments."""
    edges = torch.linspace(-1, 1, 100)
    idx = torch.bucketize(c.contiguous(), edges)
    hist = torch.zeros(c.shape[0], 101, dtype=torch.long).scatter_add_(1, idx, torch.ones_like(idx))
    top = c.topk(50, dim=1)
    bottom = c.topk(50, dim=1, largest=False)
    mean = c.mean(1)
    z = (c - mean[:, None]) / c.var(1, unbiased=False).sqrt()[:, None]
    return {"hist": hist, "top": top, "bottom": bottom, "max": c.max(1), "min": c.min(1),
            "skew": (z ** 3).mean(1), "kurt": (z ** 4).mean(1)}


def paper_way(specs: list[str], dataset, n_seq: int, batch_size: int = 32,
              forward: str = "tl", device: str = "cpu") -> float:
    """Seconds for the 8 jobs (reference x 4 partners x {none, rotation}); ``forward`` "tl"
    runs TransformerLens's HookedTransformer as the paper code does, "hf" our HF hooks.
    On ``device`` run the models and the per-layer einsums; the sums stay float64 on the
    CPU, as in that code."""
    from universal_neurons.data.tokens import keep_mask
    from universal_neurons.models.loading import load_model
    from universal_neurons.models.transformer_lens import hooked_transformer

    models = [load_model(s, device=device) for s in specs]
    tokens = np.asarray(dataset.tokens[:n_seq], dtype=np.int64)
    keep = torch.from_numpy(keep_mask(tokens, models[0].tokenizer))
    if forward == "tl":  # built outside the timing, like the engine's model loads
        runners = [hooked_transformer(m.hf_model) for m in models]
        acts_of = paper_activations_tl
    else:
        runners, acts_of = models, paper_activations_hf
    t0 = time.perf_counter()
    for partner, runner in zip(models[1:], runners[1:]):
        for baseline in ("none", "rotation"):
            m1, m2 = models[0].adapter, partner.adapter
            comp = PaperPearson(m1.n_layers, m1.d_mlp, m2.n_layers, m2.d_mlp)
            if baseline == "rotation":
                rot = torch.randn(m2.n_layers, m2.d_mlp, m2.d_mlp, device=device)
                rot = (rot / rot.norm(dim=-1, keepdim=True)).half()
            for s in range(0, n_seq, batch_size):
                batch = torch.from_numpy(tokens[s:s + batch_size]).to(device)
                k = keep[s:s + batch_size].to(device)
                a1 = acts_of(runners[0], batch, k)
                a2 = acts_of(runner, batch, k)
                if baseline == "rotation":
                    a2 = torch.stack([torch.einsum("nt,mn->mt", a2[i].float(), rot[i].float())
                                      for i in range(a2.shape[0])])
                comp.update(a1, a2)
            corr = comp.correlation().reshape(m1.n_layers * m1.d_mlp, -1).float()
            paper_summary(corr)
            paper_summary(corr.T)
    return time.perf_counter() - t0


# ---- report -------------------------------------------------------------------------------------
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--random-models", action="store_true",
                   help="5 random GPT-2s even if the bundled suite is built")
    p.add_argument("--tokens", default="16k", help="dataset tokens for (c)-(e) (default 16k)")
    p.add_argument("--rows-per-gemm", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3, help="alternations of (a) and (b)")
    p.add_argument("--e2e-repeats", type=int, default=2, help="alternations of (c) and (d)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="sequences per forward pass in (c) and (d) (the paper's default: 32)")
    p.add_argument("--skip-paper", action="store_true", help="skip (d)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES),
                   help="GEMM input precisions for (a)-(c) and (e) (default: fp32 bf16; "
                   "those not native on this machine are skipped)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "bench_correlate"))
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_grad_enabled(False)
    if args._child:
        print(json.dumps(child_e2e(**json.loads(args._child))))
        return

    from universal_neurons.data.dataset import parse_count
    from universal_neurons.engine.precision import detect_caps, native_reason

    t_start = time.perf_counter()
    caps = detect_caps("cpu")
    precs = []
    for pr in dict.fromkeys(args.precisions):
        why = native_reason(pr, caps)
        if why is None:
            precs.append(pr)
        else:
            print(f"skipping {pr}: {why} ({caps.describe()})")
    if not precs:
        sys.exit("no precision left to measure: add fp32 to --precisions")
    rate = {pr: matmul_gflops(DTYPES[pr]) for pr in precs}
    expected = announce(correlate_seconds(args, parse_count(args.tokens), precs, rate), rate,
                        " plus setup")

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    use_bundled = bundled_ready() and not args.random_models
    specs = MEMBERS if use_bundled else random_suite(work)
    ds = dataset_for(specs[0], work, parse_count(args.tokens))

    peaks: dict[str, list[float]] = {pr: [] for pr in precs}
    steps: dict[tuple[str, str], list[tuple[float, float]]] = {
        (pr, mode): [] for pr in precs for mode in ("reference", "all-pairs")}
    for _ in range(args.repeats):
        for pr in precs:
            peaks[pr].append(matmul_gflops(DTYPES[pr], 4096, reps=1))
            for mode in ("reference", "all-pairs"):
                steps[pr, mode].append(accumulate_step(mode, args.rows_per_gemm, pr))

    def child(pr: str) -> dict:
        cmd = [sys.executable, __file__, "--_child", json.dumps(
            {"specs": specs, "dataset": str(ds.path), "out": str(work / f"run-{pr}"),
             "rows": args.rows_per_gemm, "batch_size": args.batch_size, "precision": pr})]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode:
            sys.exit(f"end-to-end child failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    e2es: dict[str, list[dict]] = {pr: [] for pr in precs}
    papers: dict[str, list[float]] = {"tl": [], "hf": []}
    for _ in range(args.e2e_repeats):  # alternate, so that load changes hit all alike
        for pr in precs:
            e2es[pr].append(child(pr))
        if not args.skip_paper:
            for fw in papers:
                papers[fw].append(paper_way(specs, ds, ds.n_seq, args.batch_size, forward=fw))

    print("=" * 72)
    print(f"bench_correlate  torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'bundled tiny-gpt2' if use_bundled else 'random tiny GPT-2 x5'} "
          f"(4 layers x 512 neurons), load avg {os.getloadavg()[0]:.1f}")
    for pr in precs:
        peak = max(peaks[pr])
        print(f"(a) {pr} matmul peak (4096^3, best of {len(peaks[pr])}): {peak:8.1f} GFLOP/s "
              f"(all: {', '.join(f'{x:.0f}' for x in peaks[pr])})")
        for mode in ("reference", "all-pairs"):
            rs = steps[pr, mode]
            best = max(g for _, g in rs)
            ratios = [g / pk for (_, g), pk in zip(rs, peaks[pr])]
            print(f"(b) {pr} accumulate step, {mode:<9} {args.rows_per_gemm} rows: "
                  f"{best:8.1f} GFLOP/s = {100 * best / peak:.0f}% of the {pr} peak (paired "
                  f"ratios {', '.join(f'{100 * r:.0f}%' for r in ratios)}; "
                  f"{min(s for s, _ in rs):.2f} s/step)")
    for pr in precs:
        e2e = min(e2es[pr], key=lambda r: r["wall_s"])
        tps = e2e["n_tokens"] / e2e["wall_s"]
        t = e2e["timings"]
        print(f"(c) {pr} end to end, 5 models, rotation baseline: {e2e['n_tokens']:,} tokens "
              f"({e2e['n_kept']:,} kept) in {e2e['wall_s']:.1f} s = {tps:,.0f} tokens/s, best of "
              f"{', '.join(format(r['wall_s'], '.1f') for r in e2es[pr])} s\n"
              f"    (forward passes {t.get('pass0_forward_s', 0):.1f} s, accumulate "
              f"{t.get('pass0_accumulate_s', 0):.1f} s, summarise "
              f"{t.get('pass0_summarize_s', 0):.1f} s; model load {e2e['load_s']:.1f} s not "
              f"counted); {e2e['n_universal']} universal")
        for fw, label in (("tl", "TransformerLens forward, as the paper code"),
                          ("hf", "our HF-hook forward")):
            if papers[fw]:
                paper_s = min(papers[fw])
                print(f"(d) paper way, 8 jobs on the same tokens, {label}: {paper_s:.1f} s = "
                      f"{e2e['n_tokens'] / paper_s:,.0f} tokens/s, best of "
                      f"{', '.join(f'{x:.1f}' for x in papers[fw])} s; {pr} engine speed-up "
                      f"{paper_s / e2e['wall_s']:.1f}x")
        used = e2e["rss_peak"] - e2e["rss_base"]
        est = e2e["plan_engine_bytes"]
        print(f"(e) {pr} peak RSS above the loaded models: {used / 2**20:.1f} MiB; planner "
              f"estimate {est / 2**20:.1f} MiB ({100 * (used - est) / est:+.1f}%)")
        print("    plan: " + ", ".join(f"{k} {v / 2**20:.1f}" for k, v in e2e["plan"].items())
              + " MiB")
    print(f"took {(time.perf_counter() - t_start) / 60:.1f} min (expected "
          f"~{expected / 60:.1f} min plus setup)")
    print("=" * 72)


if __name__ == "__main__":
    main()
