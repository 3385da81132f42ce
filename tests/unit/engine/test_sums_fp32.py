"""Float32 co-moment sums (``--sums fp32``): half the memory, correlations within the bound
``correlation_error_bound(..., sums="fp32", n_tokens)`` of numpy float64, exact merges and
resume, and the planner's passes (GPT-2 medium x 5 in three passes on 80 GB)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from correlate_helpers import brute_force_table, captured, corr64, synthetic

from helpers import Killed, kill_after
from universal_neurons.engine.layout import CrossBlock, ModelShape
from universal_neurons.engine.moments import CoMoments, correlation_error_bound
from universal_neurons.engine.planner import plan_correlation
from universal_neurons.errors import UserError
from universal_neurons.stages.correlate import CorrelateConfig, run_correlate

SHAPES = [ModelShape("a", 2, 24), ModelShape("b", 2, 24)]
BLOCK = CrossBlock(0, 0, 2, 1, 2)  # a (both layers) against b


def moments(z: np.ndarray, sums: str, rows: int, chunks: int = 7) -> CoMoments:
    m = CoMoments(SHAPES, [BLOCK], rows_per_gemm=rows, sums=sums)
    for part in np.array_split(z, chunks):
        m.update_rows(torch.from_numpy(part))
    return m.finalize()


def correlations(m: CoMoments) -> np.ndarray:
    """``[48, 48]`` correlations of a against b from the moments, in float64."""
    var = torch.cat([c.diagonal(dim1=1, dim2=2).reshape(-1) for c in m.cov]).double()
    cross = m.cross[0].double()
    return (cross / torch.outer(var[:48].sqrt(), var[48:].sqrt())).numpy()


@pytest.fixture(scope="module")
def z() -> np.ndarray:
    return synthetic(30_000, [48, 48], seed=3)  # offsets far from zero, heavy tails


def test_fp32_sums_are_float32_and_within_their_bound(z):
    rows = 128  # 235 flushes: many float32 roundings of the running sums
    m32 = moments(z, "fp32", rows)
    assert m32.cross[0].dtype == torch.float32 and m32.cov[0].dtype == torch.float32
    assert m32.mean.dtype == torch.float64
    exact = corr64(z[:, :48], z[:, 48:])
    err32 = np.abs(correlations(m32) - exact).max()
    bound = correlation_error_bound("fp32", rows, "cpu", "fp32", len(z))
    assert bound > correlation_error_bound("fp32", rows, "cpu")  # the sums' term is counted
    assert err32 <= bound, (err32, bound)
    # and fp64 sums stay within the GEMM-only bound
    err64 = np.abs(correlations(moments(z, "fp64", rows)) - exact).max()
    assert err64 <= correlation_error_bound("fp32", rows, "cpu"), err64
    assert err32 > err64  # the float32 roundings are there (~6e-7 against ~4e-8 here)


def test_fp32_bound_grows_with_flushes():
    b = [correlation_error_bound("fp32", 1024, "cpu", "fp32", n) for n in (1, 10**6, 10**8)]
    assert b[0] < b[1] < b[2]
    flushes = -(-10**8 // 1024)
    gemm = correlation_error_bound("fp32", 1024, "cpu")
    e = gemm / (2 + gemm)  # invert 2e / (1 - e)
    e += flushes * 2.0**-24
    assert b[2] == pytest.approx(2 * e / (1 - e), rel=1e-12)
    assert correlation_error_bound("fp32", 1024, "cpu", "fp64", 10**8) == gemm


def test_fp32_merge_equals_one_stream(z):
    half = len(z) // 2
    one = moments(z, "fp32", 256)
    a, b = moments(z[:half], "fp32", 256), moments(z[half:], "fp32", 256)
    a.merge(b)
    assert a.n == one.n and a.cross[0].dtype == torch.float32
    bound = correlation_error_bound("fp32", 256, "cpu", "fp32", len(z))
    np.testing.assert_allclose(correlations(a), correlations(one), atol=2 * bound, rtol=0)
    with pytest.raises(ValueError, match="sums"):
        a.merge(moments(z[:100], "fp64", 256))


def test_fp32_state_round_trip_and_mismatch(z):
    m = CoMoments(SHAPES, [BLOCK], rows_per_gemm=256, sums="fp32")
    m.update_rows(torch.from_numpy(z[:1000]))
    state = m.state_dict()
    back = CoMoments(SHAPES, [BLOCK], rows_per_gemm=256, sums="fp32")
    back.load_state_dict(state)
    for x in (m, back):
        x.update_rows(torch.from_numpy(z[1000:3000]))
        x.finalize()
    torch.testing.assert_close(back.cross[0], m.cross[0], rtol=0, atol=0)  # same operations
    with pytest.raises(ValueError, match="fp32 sums, this run fp64"):
        CoMoments(SHAPES, [BLOCK], rows_per_gemm=256).load_state_dict(state)


def test_planner_halves_the_cross_bytes_and_plans_medium_in_three_passes():
    small = [ModelShape(f"s{i}", 12, 3072) for i in range(5)]
    p64 = plan_correlation(small, "reference", 2**40)
    p32 = plan_correlation(small, "reference", 2**40, sums="fp32")
    assert p32.bytes["cross"] * 2 == p64.bytes["cross"]
    assert p32.bytes["layer_cov"] < p64.bytes["layer_cov"] and p32.sums == "fp32"
    # GPT-2 medium x 5 on one 80 GB GPU (10^9 bytes), bf16 GEMMs, as `plan` sizes it
    from universal_neurons.engine.planner import forward_bytes
    from universal_neurons.models.dims import ModelDims

    medium = [ModelShape(f"m{i}", 24, 4096) for i in range(5)]
    dims = [ModelDims(n_layers=24, d_model=1024, d_mlp=4096, n_heads=16, n_ctx=1024,
                      d_vocab=50257)] * 5
    kw = dict(model_bytes=sum(d.n_params * 4 for d in dims),
              forward_bytes=forward_bytes(dims, 8 * 512),
              batch_size=8, bf16_copy=True, device_type="cuda")
    budget = 80 * 10**9
    assert plan_correlation(medium, "reference", budget, **kw).n_passes > 3
    p = plan_correlation(medium, "reference", budget, sums="fp32", **kw)
    assert p.n_passes <= 3 and p.total_bytes <= budget


def test_correlate_stage_with_fp32_sums(tiny_suite, tmp_path):
    cfg = CorrelateConfig(models=tuple(tiny_suite["models"]), out=str(tmp_path),
                          dataset=tiny_suite["dataset"], progress=False, rows_per_gemm=100,
                          sums="fp32")
    res = run_correlate(cfg)
    acts = captured(tiny_suite)
    want = brute_force_table(acts, {n: (2, 64) for n in acts}, "ma", ["mb", "mc"])
    bound = correlation_error_bound("fp32", 100, "cpu", "fp32", res.n_kept)
    for col in ("max_corr", "mean_corr", "mean_baseline", "excess_corr"):
        np.testing.assert_allclose(res.tables["ma"][col], want[col], atol=bound, rtol=0)
    manifest = json.loads((tmp_path / "manifest.json").read_text())["stages"]["correlate"]
    assert manifest["precision"]["sums"] == "fp32"
    assert manifest["precision"]["bound_with_sums"] == pytest.approx(bound)
    assert manifest["plan"]["sums"] == "fp32"


def test_fp32_resume_and_refusal(tiny_suite, tmp_path, monkeypatch):
    kw = dict(models=tuple(tiny_suite["models"]), dataset=tiny_suite["dataset"],
              progress=False, batch_size=4, checkpoint_every=128, rows_per_gemm=100)
    straight = run_correlate(CorrelateConfig(out=str(tmp_path / "a"), sums="fp32", **kw))
    with monkeypatch.context() as mp:
        kill_after(mp, 6)
        with pytest.raises(Killed):
            run_correlate(CorrelateConfig(out=str(tmp_path / "b"), sums="fp32", **kw))
    with pytest.raises(UserError, match="another configuration.*sums"):
        run_correlate(CorrelateConfig(out=str(tmp_path / "b"), **kw))
    resumed = run_correlate(CorrelateConfig(out=str(tmp_path / "b"), sums="fp32", **kw))
    for c in ("excess_corr", "max_corr", "mean_baseline"):
        np.testing.assert_array_equal(resumed.tables["ma"][c], straight.tables["ma"][c])


def test_bad_sums_is_one_line():
    with pytest.raises(UserError, match="--sums must be fp64 or fp32"):
        CorrelateConfig(models=("a", "b"), out="x", sums="fp16")
