"""`benchmarks/gpu_check.sh --device cpu` runs end to end: the GPU check script is ready for a
machine with a GPU, and its float64 comparison holds on the CPU path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_on_cpu(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--device", "cpu", "--quick",
         "--tokens", "1k", "--skip", "b", "c", "--work", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=900, check=False,
        env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    fig = json.loads(out.read_text())
    fp32 = fig["a"]["fp32"]
    assert fp32["ok"] and 0 <= fp32["max_abs_error"] <= 1e-4 < fp32["bound"]
    for p in ("tf32", "bf16"):  # CPUs have no TF32; bf16 only with AVX512-BF16/AMX
        assert "skipped" in fig["a"][p] or fig["a"][p]["ok"], fig["a"][p]
    assert "tf32 is not native" in fig["a"]["tf32"]["skipped"]
