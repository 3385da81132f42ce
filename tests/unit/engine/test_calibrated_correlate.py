"""The correlate stage with ``--rotations`` and ``--blocks`` end to end on the tiny suite:
the full sample equals a run without blocks, block 0 equals a run on block 0's tokens, the
interval is the jackknife of the block values, and the run summary carries the share's
interval and the threshold curve."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from universal_neurons.constants import THRESHOLD_CURVE
from universal_neurons.errors import UserError
from universal_neurons.stages.correlate import CorrelateConfig, run_correlate


def config(suite, out, **kw) -> CorrelateConfig:
    kw.setdefault("dataset", suite["dataset"])
    kw.setdefault("rows_per_gemm", 256)
    return CorrelateConfig(models=tuple(suite["models"]), out=str(out), progress=False, **kw)


def _table(res) -> pd.DataFrame:
    return next(iter(res.tables.values()))


def test_blocks_equal_separate_runs_and_give_the_jackknife(tiny_suite, tmp_path):
    blocked = run_correlate(config(tiny_suite, tmp_path / "blocks", blocks=2))
    plain = _table(run_correlate(config(tiny_suite, tmp_path / "plain")))
    # the suite has 48 sequences of 32 tokens: block 0 is the first 24 sequences
    first = _table(run_correlate(config(tiny_suite, tmp_path / "first", max_tokens=24 * 32)))
    t = _table(blocked)
    for col in ("max_corr", "mean_corr", "mean_baseline", "excess_corr"):
        np.testing.assert_allclose(t[col], plain[col], atol=2e-6, rtol=0)  # Chan merge order
    assert list(t["is_universal"]) == list(plain["is_universal"])
    np.testing.assert_allclose(t["excess_corr_block0"], first["excess_corr"], atol=2e-6)
    b0, b1 = t["excess_corr_block0"].to_numpy(), t["excess_corr_block1"].to_numpy()
    # B = 2: leaving out block j leaves block 1 - j; se = |b0 - b1| / 2, t with 1 dof
    half = sst.t.ppf(0.975, 1) * np.abs(b0 - b1) / 2
    np.testing.assert_allclose(t["excess_ci_high"] - t["excess_corr"], half, atol=1e-12)
    np.testing.assert_allclose(t["excess_corr"] - t["excess_ci_low"], half, atol=1e-12)
    both = (b0 > 0.5) & (b1 > 0.5)
    assert list(t["split_half_agreement"]) == list(both)
    manifest = json.loads((tmp_path / "blocks" / "manifest.json").read_text())
    u = next(iter(manifest["stages"]["correlate"]["universal"].values()))
    shares = [(b1 > 0.5).mean(), (b0 > 0.5).mean()]  # leave-one-out shares
    half_share = sst.t.ppf(0.975, 1) * abs(shares[0] - shares[1]) / 2
    assert u["fraction_ci_low"] == pytest.approx(max(0.0, u["fraction"] - half_share))
    assert u["fraction_ci_high"] == pytest.approx(min(1.0, u["fraction"] + half_share))
    curve = pd.read_parquet(tmp_path / "blocks" / THRESHOLD_CURVE)
    assert len(curve) == 17 and curve["share_ci_low"].notna().all()
    at = curve.set_index("threshold")["share"]
    assert at[0.5] == pytest.approx(float((t["excess_corr"] > 0.5).mean()))


def test_rotations_add_p_and_q_values(tiny_suite, tmp_path):
    res = run_correlate(config(tiny_suite, tmp_path / "k", rotations=4))
    t = _table(res)
    live = t["mean_corr"].notna()
    assert set(np.round(t.loc[live, "p_value"] * 5, 9)) <= {1, 2, 3, 4, 5}
    assert (t.loc[live, "q_value"] >= t.loc[live, "p_value"]).all()
    assert (t.loc[live, "baseline_std"] > 0).all()
    assert "n_significant" in next(iter(res.universal.values()))
    assert pd.read_parquet(tmp_path / "k" / THRESHOLD_CURVE)["share_ci_low"].isna().all()


@pytest.mark.parametrize("kw, words", [
    ({"rotations": 0}, "--rotations"), ({"blocks": 0}, "--blocks"),
    ({"rotations": 3, "baseline": "none"}, "needs a baseline"),
    ({"blocks": 2, "checkpoint_every": 100}, "does not checkpoint"),
])
def test_bad_calibration_options_are_one_line_errors(kw, words, tmp_path):
    with pytest.raises(UserError, match=words):
        CorrelateConfig(models=("a", "b"), out=str(tmp_path), **kw)


def test_rotations_resume_and_tile_to_the_same_numbers(tiny_suite, tmp_path, monkeypatch):
    """Several passes (each remaking draws 1..K-1) and a kill in pass 1 give the one-pass
    numbers: checkpoints carry every draw's rotated variances and maxima."""
    from correlate_helpers import tiling_budget

    from helpers import Killed, kill_after

    kw = {"rows_per_gemm": 100, "batch_size": 4, "rotations": 3}
    one = run_correlate(config(tiny_suite, tmp_path / "one", **kw))
    kw.update(max_memory=tiling_budget(one.plan), checkpoint_every=128)
    tiled = run_correlate(config(tiny_suite, tmp_path / "tiled", **kw))
    assert tiled.plan.n_passes >= 2
    for col in ("excess_corr", "mean_baseline", "baseline_std"):
        np.testing.assert_allclose(_table(tiled)[col], _table(one)[col], atol=1e-6, rtol=0)
    out = tmp_path / "killed"
    with monkeypatch.context() as mp:
        kill_after(mp, 7 + -(-48 // tiled.plan.batch_size))  # dies in pass 1
        with pytest.raises(Killed):
            run_correlate(config(tiny_suite, out, **kw))
    resumed = run_correlate(config(tiny_suite, out, **kw))
    pd.testing.assert_frame_equal(_table(resumed), _table(tiled))


def test_more_blocks_than_sequences_is_refused(tiny_suite, tmp_path):
    with pytest.raises(UserError, match="--blocks 49 needs as many sequences"):
        run_correlate(config(tiny_suite, tmp_path / "b", blocks=49))  # 48 sequences
    assert not (tmp_path / "b" / "neurons").exists()
