"""Which GEMM precisions a device runs natively, and the precision a run actually uses.

A bf16 GEMM is fast only where the hardware has bf16 units: CUDA GPUs of compute capability
>= 8.0 (tensor cores; TF32 too), and CPUs with AVX512-BF16 or AMX (oneDNN). Elsewhere
PyTorch emulates it, ~100x slower than fp32 (docs/engine.md, "Precision"). The inputs of
that decision are a :class:`DeviceCaps`, detected once per process by :func:`detect_caps`
and injectable in tests; :func:`resolve_precision` turns a requested ``--precision`` (or
``auto``) into the precision that runs, with the reason.

``torch.backends.cpu.get_cpu_capability()`` names only PyTorch's kernel dispatch level
(``DEFAULT``, ``AVX2``, ``AVX512`` on x86; never a bf16 level), so the CPU's bf16 support
is read from its feature flags (``/proc/cpuinfo``, and ``torch.cpu``'s cpuinfo queries) and
confirmed by a short timed matmul: flags say what the CPU has, the probe what this build of
PyTorch makes of it.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import torch

from universal_neurons.engine.moments import PRECISIONS, Precision, correlation_error_bound
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)

PrecisionChoice = Literal["auto", "fp32", "tf32", "bf16"]
CHOICES: tuple[str, ...] = ("auto", *PRECISIONS)
FASTEST_FIRST: tuple[str, ...] = ("bf16", "tf32", "fp32")
"""Speed order where a precision is native (bf16 tensor cores/AMX > TF32 > fp32)."""
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "amx_tile", "bf16"})
"""CPU feature flags that promise bf16 GEMM units (x86 AVX512-BF16 and AMX; Arm ``bf16``)."""
MIN_CUDA_CAPABILITY = (8, 0)
"""bf16 tensor cores and TF32 start with Ampere (sm_80)."""
MIN_PROBE_SPEEDUP = 0.5
"""bf16 counts as native on a CPU when its probe matmul takes at most 2x the fp32 time
(emulated bf16 takes 10-200x; native is ~1-10x *faster*)."""


@dataclass(frozen=True)
class DeviceCaps:
    """What decides which GEMM precisions a device runs natively (all fields injectable)."""

    device_type: str
    """``cpu``, ``cuda`` (anything else is treated as fp32-only)."""
    cpu_capability: str = ""
    """``torch.backends.cpu.get_cpu_capability()``, e.g. ``AVX2`` (reported, not decisive)."""
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    """The flags of :data:`CPU_BF16_FLAGS` the CPU has."""
    cuda_capability: tuple[int, int] | None = None
    """``torch.cuda.get_device_capability()`` on CUDA."""
    bf16_speedup: float | None = None
    """fp32 time / bf16 time of the probe matmul (CPU with bf16 flags; None: not probed)."""

    def describe(self) -> str:
        if self.device_type == "cuda":
            cc = self.cuda_capability
            return f"cuda (compute capability {_cc(cc)})"
        if self.device_type != "cpu":
            return self.device_type
        flags = ", ".join(sorted(self.cpu_flags)) or "no bf16 flags"
        probe = ("" if self.bf16_speedup is None
                 else f", bf16 probe {self.bf16_speedup:.2g}x fp32 speed")
        return f"cpu ({self.cpu_capability or 'unknown'}, {flags}{probe})"


@dataclass(frozen=True)
class ResolvedPrecision:
    """The precision a run uses, and why (recorded in the manifest)."""

    requested: str
    precision: Precision
    reason: str
    error_bound: float
    """:func:`~universal_neurons.engine.moments.correlation_error_bound` of ``precision``."""
    device: str

    def to_dict(self) -> dict[str, object]:
        return {"requested": self.requested, "used": self.precision, "reason": self.reason,
                "error_bound": self.error_bound, "device": self.device}

    def record(self, sums: str, rows_per_gemm: int, n_tokens: int) -> dict[str, object]:
        """:meth:`to_dict` plus the co-moment ``sums`` and the run's whole error bound
        (``bound_with_sums``: the plan's rows per GEMM, ``n_tokens`` kept tokens)."""
        dev = "cuda" if self.device.startswith("cuda") else "cpu"
        bound = correlation_error_bound(self.precision, rows_per_gemm, dev, sums, n_tokens)
        return {**self.to_dict(), "sums": sums, "bound_with_sums": bound}


def native_reason(precision: str, caps: DeviceCaps) -> str | None:
    """None when ``precision`` runs natively (at full speed) on ``caps``, else why not."""
    if precision == "fp32":
        return None
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if caps.device_type == "cuda":
        cc = caps.cuda_capability
        if cc is not None and cc >= MIN_CUDA_CAPABILITY:
            return None
        have = _cc(cc)
        return (f"{precision} needs CUDA compute capability >= 8.0 (this GPU: {have}); "
                "it would run emulated or as fp32")
    if caps.device_type != "cpu":
        return f"{precision} is not known to be native on {caps.device_type}"
    if precision == "tf32":
        return "CPUs have no TF32 (it runs as fp32)"
    if not caps.cpu_flags & CPU_BF16_FLAGS:
        return (f"this CPU ({caps.cpu_capability or 'unknown'}) has no avx512_bf16/amx_bf16: "
                "bf16 GEMMs are emulated, ~100x slower than fp32")
    if caps.bf16_speedup is not None and caps.bf16_speedup < MIN_PROBE_SPEEDUP:
        return (f"bf16 GEMMs measured {1 / caps.bf16_speedup:.0f}x slower than fp32 on this "
                f"CPU despite {', '.join(sorted(caps.cpu_flags & CPU_BF16_FLAGS))}")
    return None


def native_precisions(caps: DeviceCaps) -> tuple[str, ...]:
    """The precisions that run natively on ``caps``, fastest first (fp32 always last)."""
    return tuple(p for p in FASTEST_FIRST if native_reason(p, caps) is None)


def resolve_precision(requested: str, caps: DeviceCaps, *, strict: bool = False,
                      rows_per_gemm: int = 4096,
                      tolerance: float | None = None) -> ResolvedPrecision:
    """The precision to run for ``--precision requested`` on ``caps``.

    ``auto``: the fastest native precision whose worst-case correlation error bound is at
    most ``tolerance`` (default: the fp32 bound, so ``auto`` is fp32 unless the caller opts
    in to a looser tolerance). An explicit precision that is not native falls back to fp32
    with a warning, or raises :class:`UserError` when ``strict``."""
    if requested not in CHOICES:
        raise UserError(f"--precision must be one of {', '.join(CHOICES)}, got {requested!r}")
    dev = caps.device_type

    def bound(p: str) -> float:
        return correlation_error_bound(p, rows_per_gemm, dev)

    if requested == "auto":
        tol = bound("fp32") if tolerance is None else tolerance
        if tol < bound("fp32"):
            raise UserError(f"--precision-tolerance {tol:.3g} is below the fp32 error bound "
                            f"{bound('fp32'):.2g} at {rows_per_gemm} rows per GEMM: use a "
                            "larger tolerance or a smaller --rows-per-gemm")
        fits = [p for p in native_precisions(caps) if bound(p) <= tol]
        chosen = cast(Precision, fits[0])  # fp32 is native and within tol
        skipped = [f"{p} (bound {bound(p):.2g})" for p in native_precisions(caps)
                   if p not in fits]
        reason = (f"auto: fastest native precision on {caps.describe()} with error bound "
                  f"<= {tol:.2g}" + (f"; over it: {', '.join(skipped)}" if skipped else ""))
        log.info("precision %s (%s)", chosen, reason)
        return ResolvedPrecision(requested, chosen, reason, bound(chosen), caps.describe())
    why = native_reason(requested, caps)
    if why is None:
        return ResolvedPrecision(requested, cast(Precision, requested),
                                 f"native on {caps.describe()}",
                                 bound(requested), caps.describe())
    if strict:
        raise UserError(f"--precision {requested} is not native here: {why}; use --precision "
                        "fp32 (or auto), or drop --precision-strict to fall back to fp32")
    log.warning("--precision %s: %s; using fp32 (--precision-strict refuses instead)",
                requested, why)
    return ResolvedPrecision(requested, "fp32", f"fallback: {why}", bound("fp32"),
                             caps.describe())


# ---- detection ------------------------------------------------------------------------------
def detect_caps(device: str | torch.device = "cpu") -> DeviceCaps:
    """This process's :class:`DeviceCaps` for ``device`` (detected and probed once)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else (
            torch.cuda.current_device() if torch.cuda.is_available() else 0)
        return _detect_cuda(index)
    if dev.type == "cpu":
        return _detect_cpu()
    return DeviceCaps(dev.type)


@functools.cache
def _detect_cuda(index: int) -> DeviceCaps:
    cc = torch.cuda.get_device_capability(index) if torch.cuda.is_available() else None
    return DeviceCaps("cuda", cuda_capability=None if cc is None else (int(cc[0]), int(cc[1])))


@functools.cache
def _detect_cpu() -> DeviceCaps:
    flags = cpu_bf16_flags()
    speedup = probe_bf16_speedup() if flags else None
    caps = DeviceCaps("cpu", torch.backends.cpu.get_cpu_capability(), flags,
                      bf16_speedup=speedup)
    log.debug("GEMM capabilities: %s", caps.describe())
    return caps


def cpu_bf16_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The :data:`CPU_BF16_FLAGS` of this CPU, from ``/proc/cpuinfo`` (or the text given)
    and PyTorch's own cpuinfo queries."""
    found: set[str] = set()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
        for name, flag in (("_is_avx512_bf16_supported", "avx512_bf16"),
                           ("_is_amx_tile_supported", "amx_tile")):
            query = getattr(torch.cpu, name, None)
            if query is not None and query():
                found.add(flag)
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found.update(CPU_BF16_FLAGS & set(value.split()))
    return frozenset(found)


def probe_bf16_speedup(n: int = 256, reps: int = 5) -> float:
    """fp32 time / bf16 time of an ``n x n`` matmul (best of ``reps`` after a warm-up).

    A few milliseconds where bf16 is native; stops after the warm-up when bf16 is
    obviously emulated (over 20x the fp32 time)."""
    def best(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
        t = math.inf
        for _ in range(k):
            t0 = time.perf_counter()
            torch.mm(a, b)
            t = min(t, time.perf_counter() - t0)
        return t

    a, b = torch.randn(n, n), torch.randn(n, n)
    t32 = best(a, b, 1 + reps)
    a16, b16 = a.to(torch.bfloat16), b.to(torch.bfloat16)
    t16 = best(a16, b16, 1)  # warm-up (oneDNN primitive creation), also a first reading
    if t16 < 20 * t32:
        t16 = min(t16, best(a16, b16, reps))
    return t32 / t16


def _cc(cc: tuple[int, int] | None) -> str:
    return "unknown" if cc is None else f"{cc[0]}.{cc[1]}"
