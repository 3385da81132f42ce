"""The GPU path, checked in one command (not a test): on a CUDA machine, in a few minutes,

(a) ``correlate`` on the bundled suite in fp32, tf32 and bf16 (``--precision-strict``),
    each compared with numpy float64 correlations of the same activations: the largest
    |error| of every reference neuron's best correlation with each partner, against the
    bound of ``docs/engine.md`` (``moments.correlation_error_bound``);
(b) the scale benchmark's correlate stage at GPT-2-small shape (five random seeds) for
    ``--scale-tokens`` tokens: tokens/s, and the accumulate step against this GPU's bf16
    matmul peak measured here;
(c) the paper code's way (one job per pair and baseline, float64 sums on the CPU) on the
    same GPU and the same tokens as (a), and the speed ratio of ours (bf16) to it.

    bash benchmarks/gpu_check.sh                          # on a CUDA machine
    bash benchmarks/gpu_check.sh --device cpu --quick     # a dry run anywhere

Writes the figures as JSON to ``--json`` (default ``gpu_check.json`` in ``--work``).
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def activations(specs: list[str], dataset, n_seq: int) -> dict[str, np.ndarray]:
    """Every model's kept-token activations ``[n_kept, L * d]`` (float32, computed on CPU)."""
    from universal_neurons.data.tokens import keep_mask
    from universal_neurons.models.loading import load_model

    tokens = np.asarray(dataset.tokens[:n_seq], dtype=np.int64)
    out = {}
    for spec in specs:
        m = load_model(spec)
        keep = torch.from_numpy(keep_mask(tokens, m.tokenizer))
        rows = []
        for s in range(0, n_seq, 16):
            with torch.inference_mode():
                ids = torch.from_numpy(tokens[s:s + 16])
                rows.append(m.adapter.capture_rows(ids, keep[s:s + 16],
                                                   attention_mask=torch.ones_like(ids))
                            ["post"].numpy())
        out[m.name] = np.concatenate(rows)
    return out


def max_corr64(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Float64 ``max_j rho(x_i, y_j)`` (NaN for constant columns)."""
    x = x.astype(np.float64) - x.mean(0, dtype=np.float64)
    y = y.astype(np.float64) - y.mean(0, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = (x.T @ y) / np.outer(np.sqrt((x * x).sum(0)), np.sqrt((y * y).sum(0)))
    c[~np.isfinite(c)] = -np.inf
    m = c.max(1)
    m[~np.isfinite(m)] = np.nan
    return m


def check_precisions(specs, ds, n_seq, device, work: Path, rows: int) -> dict:
    """(a): each precision's per-partner best correlations against float64."""
    import pandas as pd

    from universal_neurons.engine.moments import correlation_error_bound
    from universal_neurons.stages.correlate import CorrelateConfig, run_correlate

    acts = activations(specs, ds, n_seq)
    names = list(acts)
    oracle = {p: max_corr64(acts[names[0]], acts[p]) for p in names[1:]}
    out = {}
    for precision in ("fp32", "tf32", "bf16"):
        t = time.perf_counter()
        try:
            res = run_correlate(CorrelateConfig(
                models=tuple(specs), out=str(work / f"check-{precision}"), dataset=str(ds.path),
                device=device, precision=precision, precision_strict=True,
                rows_per_gemm=rows, progress=False, restart=True))
        except Exception as e:  # e.g. bf16 not native on this device: say so, go on
            out[precision] = {"skipped": f"{type(e).__name__}: {e}"}
            print(f"(a) {precision}: skipped ({e})")
            continue
        wall = time.perf_counter() - t - res.timings.get("load_s", 0.0)  # as (c): no loads
        table = pd.read_parquet(res.rundir / "neurons" / f"{names[0]}.parquet")
        err = max(float(np.nanmax(np.abs(table[f"{p}_corr"].to_numpy() - oracle[p])))
                  for p in names[1:])
        bound = correlation_error_bound(precision, rows, torch.device(device).type)
        out[precision] = {"max_abs_error": err, "bound": bound, "ok": err <= bound,
                          "wall_s": wall, "kept_tokens": res.n_kept}  # without model loads
        print(f"(a) {precision}: max |error| {err:.2e} vs bound {bound:.2e} "
              f"{'OK' if err <= bound else 'OVER THE BOUND'}; {wall:.1f} s")
    return out


def scale(device: str, tokens: str, work: Path, precision: str) -> dict:
    """(b): the scale benchmark's correlate stage at GPT-2-small shape."""
    skip = ["weights", "properties", "explain", "families", "entropy", "attention", "report"]
    cmd = [sys.executable, str(HERE / "bench_scale.py"), "--work", str(work / "scale"),
           "--tokens", tokens, "--device", device, "--precision", precision,
           "--skip", *skip]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    print(proc.stdout[-4000:])
    if proc.returncode:
        print(proc.stderr[-3000:])
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t,
            "report": proc.stdout[-4000:]}


def paper_ratio(specs, ds, n_seq, device, ours_s: float) -> dict:
    """(c): the paper code's way on the same device and tokens, against ours."""
    from bench_correlate import paper_way

    paper_s = paper_way(specs, ds, n_seq, batch_size=32, forward="tl", device=device)
    ratio = paper_s / ours_s
    print(f"(c) paper code's way {paper_s:.1f} s vs ours {ours_s:.1f} s: {ratio:.1f}x")
    return {"paper_s": paper_s, "ours_s": ours_s, "ratio": ratio}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="small token counts (a dry run)")
    p.add_argument("--tokens", default=None, help="tokens for (a) and (c) (default 16k)")
    p.add_argument("--scale-tokens", default=None, help="tokens for (b) (default 64k)")
    p.add_argument("--skip", nargs="*", default=[], choices=("a", "b", "c"))
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "gpu_check"))
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from bench_correlate import MEMBERS, bundled_ready, dataset_for, random_suite

    from universal_neurons.data.dataset import parse_count

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tokens = parse_count(args.tokens or ("2k" if args.quick else "16k"))
    scale_tokens = args.scale_tokens or ("512" if args.quick else "64k")
    specs = MEMBERS if bundled_ready() else random_suite(work)
    ds = dataset_for(specs[0], work, tokens)
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    info = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
            "torch": torch.__version__}
    print(f"gpu_check on {info['device']} (torch {info['torch']}), {tokens:,} tokens for (a)/(c)")
    fig: dict = {"info": info}
    rows = 4096
    if "a" not in args.skip:
        fig["a"] = check_precisions(specs, ds, ds.n_seq, args.device, work, rows)
    if "b" not in args.skip:
        prec = "bf16" if dev.type == "cuda" else "fp32"
        fig["b"] = scale(args.device, scale_tokens, work, prec)
    if "c" not in args.skip:
        a = fig.get("a", {})
        ours = next((a[k]["wall_s"] for k in ("bf16", "tf32", "fp32")
                     if k in a and "wall_s" in a[k]), None)
        if ours is None:
            print("(c) skipped: needs a correlate time from (a)")
        else:
            fig["c"] = paper_ratio(specs, ds, ds.n_seq, args.device, ours)
    fig["total_s"] = time.perf_counter() - t0
    out = Path(args.json or work / "gpu_check.json")
    out.write_text(json.dumps(fig, indent=2, default=str))
    print(f"gpu_check finished in {fig['total_s'] / 60:.1f} min; figures in {out}")
    bad = [k for k, v in fig.get("a", {}).items() if v.get("ok") is False]
    if bad:
        sys.exit(f"over the documented error bound: {bad}")


if __name__ == "__main__":
    main()
