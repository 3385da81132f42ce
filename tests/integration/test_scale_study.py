"""The whole study on two GPT-2-small-shaped random models (12 layers x 3,072 neurons) on a
few hundred tokens: every stage writes its outputs, and the neuron table has a row per
neuron. Slow (595 s on a 2-core CPU), so it runs only with
``UN_SCALE_TESTS=1``; ``benchmarks/bench_scale.py`` is the full check with timings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    os.environ.get("UN_SCALE_TESTS") != "1",
    reason="GPT-2-small-shape study takes ~10 min; set UN_SCALE_TESTS=1 to run it")]

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))


def test_whole_study_at_gpt2_small_shape(tmp_path):
    import pandas as pd
    from bench_scale import build_suite

    from universal_neurons.cli import main
    from universal_neurons.outputs import STAGE_OUTPUTS, missing_outputs

    specs = build_suite(tmp_path / "models", "small", seeds=range(2))
    run = tmp_path / "run"
    assert main(["run", "--models", *specs, "--out", str(run), "--tokens", "256",
                 "--explain-tokens", "512", "--intervention-tokens", "128", "--quiet"]) == 0
    for stage in STAGE_OUTPUTS:
        assert missing_outputs(run, stage) == [], stage
    table = pd.read_parquet(run / "neurons" / "gpt2-small-a.parquet")
    assert len(table) == 12 * 3072 and table["max_corr"].notna().mean() > 0.99
