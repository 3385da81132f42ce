"""Precision resolution: native bf16/tf32 per device (mocked capabilities), fallback, strict
refusal, ``auto``, and what a correlate run records."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from helpers import Killed, kill_after
from universal_neurons.engine import precision as prec
from universal_neurons.engine.moments import correlation_error_bound
from universal_neurons.engine.precision import (
    DeviceCaps,
    cpu_bf16_flags,
    native_precisions,
    native_reason,
    resolve_precision,
)
from universal_neurons.errors import UserError
from universal_neurons.stages.correlate import CorrelateConfig, run_correlate

AVX2 = DeviceCaps("cpu", "AVX2")
AVX512_BF16 = DeviceCaps("cpu", "AVX512", frozenset({"avx512_bf16"}), bf16_speedup=1.6)
AMX = DeviceCaps("cpu", "AVX512", frozenset({"avx512_bf16", "amx_bf16", "amx_tile"}),
                 bf16_speedup=9.0)
BF16_FLAGS_BUT_SLOW = DeviceCaps("cpu", "AVX512", frozenset({"avx512_bf16"}), bf16_speedup=0.02)
V100 = DeviceCaps("cuda", cuda_capability=(7, 0))
A100 = DeviceCaps("cuda", cuda_capability=(8, 0))


@pytest.mark.parametrize(("caps", "native"), [
    (AVX2, ("fp32",)),
    (AVX512_BF16, ("bf16", "fp32")),
    (AMX, ("bf16", "fp32")),
    (BF16_FLAGS_BUT_SLOW, ("fp32",)),
    (DeviceCaps("cpu", "AVX512", frozenset({"amx_bf16"})), ("bf16", "fp32")),  # not probed
    (V100, ("fp32",)),
    (A100, ("bf16", "tf32", "fp32")),
    (DeviceCaps("cuda", cuda_capability=(9, 0)), ("bf16", "tf32", "fp32")),
    (DeviceCaps("mps"), ("fp32",)),
])
def test_native_precisions_per_device(caps, native):
    assert native_precisions(caps) == native


def test_reasons_name_what_is_missing():
    assert "avx512_bf16" in native_reason("bf16", AVX2) and "AVX2" in native_reason("bf16", AVX2)
    assert "TF32" in native_reason("tf32", AMX)
    assert "7.0" in native_reason("bf16", V100) and "8.0" in native_reason("tf32", V100)
    assert "50x slower" in native_reason("bf16", BF16_FLAGS_BUT_SLOW)


@pytest.mark.parametrize(("caps", "requested", "used"), [
    (AVX2, "bf16", "fp32"), (AVX2, "tf32", "fp32"), (AVX2, "fp32", "fp32"),
    (AMX, "bf16", "bf16"), (AVX512_BF16, "bf16", "bf16"), (AMX, "tf32", "fp32"),
    (V100, "bf16", "fp32"), (V100, "tf32", "fp32"), (A100, "bf16", "bf16"),
    (A100, "tf32", "tf32"),
])
def test_explicit_precision_runs_natively_or_falls_back_to_fp32(caps, requested, used, caplog):
    with caplog.at_level(logging.WARNING, logger=prec.__name__):
        r = resolve_precision(requested, caps)
    assert r.precision == used and r.requested == requested
    assert r.error_bound == correlation_error_bound(used, 4096, caps.device_type)
    fell_back = used != requested
    assert r.reason.startswith("fallback") == fell_back
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    if fell_back:
        assert len(warnings) == 1 and "\n" not in warnings[0]
        assert warnings[0].startswith(f"--precision {requested}: ") and "using fp32" in warnings[0]
    else:
        assert not warnings


@pytest.mark.parametrize(("caps", "requested"), [(AVX2, "bf16"), (V100, "tf32"), (AMX, "tf32")])
def test_strict_refuses_a_precision_that_is_not_native(caps, requested):
    with pytest.raises(UserError, match=rf"--precision {requested} is not native.*"
                                        r"--precision fp32.*--precision-strict"):
        resolve_precision(requested, caps, strict=True)
    assert resolve_precision("fp32", caps, strict=True).precision == "fp32"


@pytest.mark.parametrize(("caps", "tolerance", "used"), [
    (AVX2, None, "fp32"), (AVX2, 0.05, "fp32"),  # bf16 is never picked where it is emulated
    (AMX, None, "fp32"), (AMX, 0.05, "bf16"), (AMX, 0.01, "fp32"),  # CPU bf16 bound 2.4e-2
    (BF16_FLAGS_BUT_SLOW, 0.05, "fp32"),
    (V100, 0.05, "fp32"),
    (A100, None, "fp32"), (A100, 0.005, "tf32"), (A100, 0.02, "bf16"),  # tf32 2.4e-3, bf16 1.6e-2
])
def test_auto_picks_the_fastest_native_precision_within_the_tolerance(caps, tolerance, used):
    r = resolve_precision("auto", caps, tolerance=tolerance)
    assert r.precision == used and r.requested == "auto" and r.reason.startswith("auto")
    tol = tolerance or correlation_error_bound("fp32", 4096, caps.device_type)
    assert r.error_bound <= tol


def test_auto_tolerance_below_the_fp32_bound_is_refused():
    with pytest.raises(UserError, match="--precision-tolerance 1e-06 is below the fp32 error "
                                        "bound"):
        resolve_precision("auto", AVX2, tolerance=1e-6)
    # fewer rows per GEMM lower the fp32 bound
    assert resolve_precision("auto", AVX2, tolerance=1e-4, rows_per_gemm=256).precision == "fp32"


def test_cpu_flags_from_cpuinfo_text():
    x86 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert cpu_bf16_flags(x86) == {"avx512_bf16", "amx_bf16", "amx_tile"}
    assert cpu_bf16_flags("flags\t\t: fpu sse avx avx2 fma\n") == frozenset()
    assert cpu_bf16_flags("Features\t: fp asimd sve bf16 i8mm\n") == {"bf16"}


def test_detected_caps_are_cached_and_consistent():
    caps = prec.detect_caps("cpu")
    assert prec.detect_caps(torch.device("cpu")) is caps
    assert caps.cpu_capability == torch.backends.cpu.get_cpu_capability()
    if not caps.cpu_flags:  # e.g. this project's AMD AVX2 machines
        assert caps.bf16_speedup is None and native_precisions(caps) == ("fp32",)
    assert prec.probe_bf16_speedup(n=32, reps=1) > 0


def test_config_validates_precision_options():
    with pytest.raises(UserError, match="--precision must be one of auto, fp32, tf32, bf16, "
                                        "got 'fp16'"):
        CorrelateConfig(models=("a", "b"), out="x", precision="fp16")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="--precision-tolerance must be a positive"):
        CorrelateConfig(models=("a", "b"), out="x", precision_tolerance=0.0)
    assert CorrelateConfig(models=("a", "b"), out="x").precision == "auto"


# ---- a tiny correlate run ------------------------------------------------------------------
def config(suite, out, **kw) -> CorrelateConfig:
    return CorrelateConfig(models=tuple(suite["models"]), out=str(out), dataset=suite["dataset"],
                           progress=False, **kw)





@pytest.fixture
def on_avx2(monkeypatch):
    monkeypatch.setattr(prec, "detect_caps", lambda device="cpu": AVX2)


def test_manifest_records_the_precision_used(tiny_suite, tmp_path, on_avx2, caplog):
    with caplog.at_level(logging.WARNING, logger=prec.__name__):
        run_correlate(config(tiny_suite, tmp_path, precision="bf16", rows_per_gemm=256))
    assert any("using fp32" in r.getMessage() for r in caplog.records)
    stage = json.loads((tmp_path / "manifest.json").read_text())["stages"]["correlate"]
    assert stage["config"]["precision"] == "fp32"
    assert stage["precision"]["requested"] == "bf16" and stage["precision"]["used"] == "fp32"
    assert stage["precision"]["reason"].startswith("fallback") and "AVX2" in \
        stage["precision"]["reason"]
    assert stage["precision"]["error_bound"] == correlation_error_bound("fp32", 256)


def test_strict_refusal_writes_nothing(tiny_suite, tmp_path, on_avx2):
    out = tmp_path / "strict"
    with pytest.raises(UserError, match="--precision bf16 is not native"):
        run_correlate(config(tiny_suite, out, precision="bf16", precision_strict=True))
    assert not (out / "manifest.json").exists() and not (out / "neurons").exists()


def test_a_run_made_with_auto_resumes_as_the_precision_it_resolved_to(tiny_suite, tmp_path,
                                                                      monkeypatch, on_avx2,
                                                                      caplog):
    kw = {"batch_size": 4, "checkpoint_every": 128}
    with monkeypatch.context() as mp:
        kill_after(mp, 5)
        with pytest.raises(Killed):
            run_correlate(config(tiny_suite, tmp_path, precision="auto", **kw))
    # the checkpoint says fp32: an explicit fp32 (or bf16 falling back to it) continues it
    with caplog.at_level(logging.INFO, logger="universal_neurons.engine.correlate_pass"):
        res = run_correlate(config(tiny_suite, tmp_path, precision="fp32", **kw))
    assert any(r.getMessage().startswith("resuming from") for r in caplog.records)
    assert res.n_kept > 0
    stage = json.loads((tmp_path / "manifest.json").read_text())["stages"]["correlate"]
    assert stage["precision"]["requested"] == "fp32"


def test_cli_defaults_to_auto_and_passes_the_precision_flags():
    import argparse

    from universal_neurons.commands import correlate as cmd

    p = argparse.ArgumentParser()
    cmd.add_arguments(p)
    a = p.parse_args(["--models", "m1", "m2", "--out", "o"])
    assert (a.precision, a.precision_strict, a.precision_tolerance) == ("auto", False, None)
    a = p.parse_args(["--models", "m1", "m2", "--out", "o", "--precision", "bf16",
                      "--precision-strict", "--precision-tolerance", "0.03"])
    assert (a.precision, a.precision_strict, a.precision_tolerance) == ("bf16", True, 0.03)
