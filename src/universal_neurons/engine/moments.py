"""Streaming first and second moments of every model's neurons, exact at 100M tokens.

:class:`CoMoments` buffers the activations of all models side by side in one float32
matrix ``Z: [rows, sum N_m]``. When ``rows_per_gemm`` rows are in, it *flushes*:

1. centre in float32 by the batch mean (a float32 GEMV ``1^T Z / n``), then correct the
   mean by a second GEMV of the centred rows: ``mu_b`` in float64;
2. Chan et al.'s pairwise update folded into the GEMM: one extra row
   ``sqrt(w) * (mu_b - mean)`` with ``w = n * n_b / (n + n_b)``, so that
   ``Z^T Z`` is the batch co-moment *plus* the merge correction;
3. GEMMs (float32, or bf16/tf32 inputs with float32 accumulation; on CPU the bf16 product
   is rounded to bf16 once per GEMM) for every cross block
   ``Z[:, rows]^T Z[:, partners]`` and, on the first pass, every model's within-layer
   ``Z_l^T Z_l``; each product is added to a float64 accumulator.

The accumulators hold *sums* of centred products (co-moments ``M``): covariance is
``M / n``, correlation ``M_xy / sqrt(M_xx M_yy)``. They are float64 by default; with
``sums="fp32"`` they are float32 (half the memory; the GEMM adds into them in place), at
the cost of one float32 rounding per flush (:func:`correlation_error_bound`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.layout import CrossBlock, Layout, ModelShape

Precision = Literal["fp32", "tf32", "bf16"]
PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")
Sums = Literal["fp64", "fp32"]
SUMS: tuple[str, ...] = ("fp64", "fp32")
SUM_DTYPES = {"fp64": torch.float64, "fp32": torch.float32}
"""Dtype of the co-moment sums (``--sums``)."""
UNIT_ROUNDOFF = {"fp32": 2.0**-24, "tf32": 2.0**-11, "bf16": 2.0**-8}
"""Unit roundoff ``2^-p`` of one GEMM input, ``p`` the significand bits (24, 11, 8)."""


def correlation_error_bound(precision: str, rows_per_gemm: int = 4096,
                            device_type: str = "cpu", sums: str = "fp64",
                            n_tokens: int = 0) -> float:
    """Worst-case ``|rho - rho_exact|`` from GEMM rounding (docs/engine.md, "Precision").

    Rounding each centred input to ``u`` relative error perturbs the cross and the variance
    sums by at most ``(2u + u^2)`` of ``sqrt(M_xx M_yy)`` (Cauchy-Schwarz), hence
    ``|d rho| <= 2 e / (1 - e)`` with ``e = 2u + u^2``. Float32 accumulation inside one GEMM
    adds ``e = (rows_per_gemm + 1) * 2^-24`` (a worst case; typical errors are ~1e-7).
    CPU bf16 GEMMs round each product to bf16 once: ``e += u`` (Cauchy-Schwarz over GEMMs).
    Float32 sums (``sums="fp32"``) round the running sum once per flush, each time by at
    most ``2^-24`` of a partial sum, itself at most ``sqrt(M_xx M_yy)`` of the whole
    stream: ``e += F * 2^-24`` with ``F = ceil(n_tokens / rows_per_gemm)`` flushes (a worst
    case; random roundings give ~``sqrt(F) * 2^-24``). Float64 sums add ~``F * 2^-53``,
    below the GEMM term at any token count.
    """
    u = UNIT_ROUNDOFF[precision]
    e = 2 * u + u * u + (rows_per_gemm + 1) * 2.0**-24
    if precision == "bf16" and device_type == "cpu":
        e += u
    if sums == "fp32":
        e += math.ceil(max(n_tokens, 1) / rows_per_gemm) * 2.0**-24
    return 2 * e / (1 - e)


class CoMoments:
    """Means, within-layer co-moments and cross-block co-moments over a token stream.

    Implements the :class:`~universal_neurons.engine.accumulator.Accumulator` protocol.
    ``layer_cov`` turns the per-model within-layer co-moments ``[L, d, d]`` on (needed
    once per run for variances and the rotation baseline); ``blocks`` lists the cross
    co-moments ``[T, N_partners]`` to accumulate. ``gemm_rows`` caps the rows of one
    cross GEMM output (``gemm_rows * N_partners`` scratch elements). ``sums``: dtype of
    the within-layer and cross co-moments (the means stay float64).
    """

    def __init__(self, shapes: Sequence[ModelShape], blocks: Sequence[CrossBlock] = (), *,
                 site: str = "post", layer_cov: bool = True, rows_per_gemm: int = 4096,
                 gemm_rows: int | None = None, precision: Precision = "fp32",
                 device: str | torch.device = "cpu", sums: Sums = "fp64"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        if sums not in SUMS:
            raise ValueError(f"sums must be one of {SUMS}, got {sums!r}")
        if rows_per_gemm < 1:
            raise ValueError(f"rows_per_gemm must be positive, got {rows_per_gemm}")
        self.layout = Layout(shapes)
        self.blocks = tuple(blocks)
        self.sites = (site,)
        self.site = site
        self.precision = precision
        self.device = torch.device(device)
        self.rows_per_gemm = rows_per_gemm
        self.gemm_rows = gemm_rows
        self.sums = sums
        f64, dev, acc = torch.float64, self.device, SUM_DTYPES[sums]
        self.n = 0
        self.mean = torch.zeros(self.layout.total, dtype=f64, device=dev)  # [N_total]
        self.cov: list[torch.Tensor] | None = (
            [torch.zeros(s.n_layers, s.d_mlp, s.d_mlp, dtype=acc, device=dev) for s in shapes]
            if layer_cov else None)  # per model [L, d, d]
        self.cross = [torch.zeros(_rows(self.layout, b), _cols(self.layout, b), dtype=acc,
                                  device=dev) for b in self.blocks]  # per block [T, N_partners]
        # +1 row for the Chan correction; allocated lazily (not needed to load or merge)
        self._buf: torch.Tensor | None = None  # [rows_per_gemm + 1, N_total] float32
        self._scratch: tuple[torch.Tensor, torch.Tensor] | None = None  # CPU GEMM outputs
        self._fill = 0

    # ---- streaming ------------------------------------------------------------------
    def update(self, batch: ActivationBatch) -> None:
        acts = [batch.acts[s.name][self.site] for s in self.layout.shapes]  # [n, N_m] each
        n = batch.n
        for a, s in zip(acts, self.layout.shapes):
            if a.shape != (n, s.n_neurons):
                raise ValueError(f"model {s.name!r}: activations {tuple(a.shape)}, expected "
                                 f"({n}, {s.n_neurons})")

        def write(dst: torch.Tensor, lo: int, hi: int) -> None:
            for m, a in enumerate(acts):
                dst[:, self.layout.cols(m)].copy_(a[lo:hi], non_blocking=True)

        self._feed(n, write)

    def update_rows(self, z: torch.Tensor) -> None:
        """Feed raw rows ``z: Float[n, N_total]`` (all models side by side)."""
        self._feed(z.shape[0], lambda dst, lo, hi: dst.copy_(z[lo:hi]))

    def _feed(self, n: int, write) -> None:
        """Copy ``n`` rows into the buffer through ``write(dst, lo, hi)``, flushing when full."""
        start = 0
        while start < n:
            take = min(n - start, self.rows_per_gemm - self._fill)
            write(self._buffer()[self._fill:self._fill + take], start, start + take)
            self._fill += take
            start += take
            if self._fill == self.rows_per_gemm:
                self.flush()

    def flush(self) -> None:
        """Fold the buffered rows into the moments (no-op if the buffer is empty)."""
        nb = self._fill
        if nb == 0:
            return
        buf = self._buffer()
        z = buf[:nb]  # [nb, N_total]
        ones = torch.ones(1, nb, dtype=torch.float32, device=self.device)
        shift = torch.mm(ones, z)[0].div_(nb)  # float32 GEMV: ~1e-6 |mean| accurate
        z.sub_(shift)
        # batch mean = shift + mean of the centred rows (summed at the scale of the std)
        mu_b = shift.to(torch.float64) + torch.mm(ones, z)[0].to(torch.float64) / nb
        # the batch co-moment is about `shift`, off from mu_b by ~1e-6 |mean|: an error of
        # ~1e-12 (mean/std)^2 relative, below float32 GEMM rounding (docs/engine.md)
        rows = nb
        if self.n > 0:  # Chan merge folded into the GEMM as one extra row
            w = self.n * nb / (self.n + nb)
            buf[nb].copy_((mu_b - self.mean) * math.sqrt(w))
            rows = nb + 1
        zz = buf[:rows]
        with _matmul_precision(self.precision, self.device):
            zg = _gemm_input(zz, self.precision)
            if self.cov is not None:
                for m, s in enumerate(self.layout.shapes):
                    for layer in range(s.n_layers):
                        zl = zg[:, self.layout.layer_cols(m, layer)]  # [rows, d]
                        self._accumulate(self.cov[m][layer], zl, zl)
            for block, acc in zip(self.blocks, self.cross):
                x = zg[:, self.layout.block_rows(block)]  # [rows, T]
                y = zg[:, self.layout.block_cols(block)]  # [rows, N_y]
                step = self.gemm_rows or x.shape[1]
                for r0 in range(0, x.shape[1], step):
                    self._accumulate(acc[r0:r0 + step], x[:, r0:r0 + step], y)
        self.mean.add_((mu_b - self.mean) * (nb / (self.n + nb)))
        self.n += nb
        self._fill = 0

    def _accumulate(self, acc: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """``acc += x^T y``: a float32-output GEMM, added into ``acc``.

        A float32 ``acc`` with float32 inputs takes the product in place (``addmm_``, no
        scratch). Otherwise, on CPU the product goes to reused scratch buffers and is cast by
        ``copy_`` before a same-dtype add (a mixed-dtype ``add_`` is ~5x slower there). bf16
        inputs on CPU (oneDNN/AMX) accumulate in float32 but return a bf16 product: the one
        extra rounding that :func:`correlation_error_bound` adds for CPU bf16."""
        if acc.dtype == x.dtype:
            acc.addmm_(x.t(), y)
            return
        if self.device.type != "cpu":
            if x.dtype == torch.bfloat16:
                acc.add_(torch.mm(x.t(), y, out_dtype=torch.float32))
            else:
                acc.add_(torch.mm(x.t(), y))
            return
        n = x.shape[1] * y.shape[1]
        if (self._scratch is None or self._scratch[0].numel() < n
                or self._scratch[0].dtype != x.dtype):
            self._scratch = (torch.empty(n, dtype=x.dtype), torch.empty(n, dtype=acc.dtype))
        p32 = self._scratch[0][:n].view(x.shape[1], y.shape[1])
        p64 = self._scratch[1][:n].view(x.shape[1], y.shape[1])
        torch.mm(x.t(), y, out=p32)
        p64.copy_(p32)
        acc.add_(p64)

    def _buffer(self) -> torch.Tensor:
        if self._buf is None:
            self._buf = torch.empty(self.rows_per_gemm + 1, self.layout.total,
                                    dtype=torch.float32, device=self.device)
        return self._buf

    def release_buffer(self) -> None:
        """Flush and free the row buffer and scratch space (e.g. before finalising)."""
        self.flush()
        self._buf = None
        self._scratch = None

    # ---- merging ----------------------------------------------------------------------
    def merge(self, other: CoMoments) -> None:
        """Chan merge of moments over a disjoint token set (same shapes and blocks)."""
        self._check_compatible(other)
        self.flush()
        other.flush()
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean = other.n, other.mean.clone()
            self.cov = None if other.cov is None else [c.clone() for c in other.cov]
            self.cross = [c.clone() for c in other.cross]
            return
        n = self.n + other.n
        w = self.n * other.n / n
        delta = other.mean - self.mean  # [N_total]
        if self.cov is not None and other.cov is not None:
            for m, s in enumerate(self.layout.shapes):
                for layer in range(s.n_layers):
                    dl = delta[self.layout.layer_cols(m, layer)].to(self.cov[m].dtype)
                    self.cov[m][layer].add_(other.cov[m][layer]).addr_(dl, dl, alpha=w)
        for block, acc, oth in zip(self.blocks, self.cross, other.cross):
            acc.add_(oth).addr_(delta[self.layout.block_rows(block)].to(acc.dtype),
                                delta[self.layout.block_cols(block)].to(acc.dtype), alpha=w)
        self.mean.add_(delta * (other.n / n))
        self.n = n

    def _check_compatible(self, other: CoMoments) -> None:
        if (other.layout.shapes != self.layout.shapes or other.blocks != self.blocks
                or (other.cov is None) != (self.cov is None) or other.sums != self.sums):
            raise ValueError("cannot merge CoMoments of different models, blocks, layer_cov "
                             "or sums")

    # ---- results ----------------------------------------------------------------------
    def finalize(self) -> CoMoments:
        self.flush()
        return self

    def iter_tensors(self) -> Iterator[torch.Tensor]:
        """Every accumulator (for collective merges)."""
        yield self.mean
        if self.cov is not None:
            yield from self.cov
        yield from self.cross

    # ---- checkpoints -----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        buf = (self._buf[:self._fill].cpu().clone() if self._buf is not None and self._fill
               else torch.zeros(0, self.layout.total))
        return {
            "shapes": [[s.name, s.n_layers, s.d_mlp] for s in self.layout.shapes],
            "blocks": [b.to_list() for b in self.blocks],
            "n": self.n, "mean": self.mean.cpu(), "sums": self.sums,
            "cov": None if self.cov is None else [c.cpu() for c in self.cov],
            "cross": [c.cpu() for c in self.cross],
            "buffer": buf,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shapes = [[s.name, s.n_layers, s.d_mlp] for s in self.layout.shapes]
        blocks = [b.to_list() for b in self.blocks]
        if [list(x) for x in state["shapes"]] != shapes or [list(x) for x in state["blocks"]] != blocks:
            raise ValueError("checkpointed moments are for other models or blocks")
        if (state["cov"] is None) != (self.cov is None):
            raise ValueError("checkpointed moments differ in layer_cov")
        if state.get("sums", "fp64") != self.sums:
            raise ValueError(f"checkpointed moments have {state.get('sums', 'fp64')} sums, "
                             f"this run {self.sums}")
        acc = SUM_DTYPES[self.sums]
        self.n = int(state["n"])
        self.mean = state["mean"].to(self.device, torch.float64)
        if self.cov is not None:
            self.cov = [c.to(self.device, acc) for c in state["cov"]]
        self.cross = [c.to(self.device, acc) for c in state["cross"]]
        buf = state["buffer"]
        self._fill = 0
        if buf.shape[0]:
            self.update_rows(buf.to(self.device))


def _rows(layout: Layout, b: CrossBlock) -> int:
    s = layout.block_rows(b)
    return s.stop - s.start


def _cols(layout: Layout, b: CrossBlock) -> int:
    s = layout.block_cols(b)
    return s.stop - s.start


def _gemm_input(z: torch.Tensor, precision: str) -> torch.Tensor:
    """The GEMM operand: ``z`` itself, or a bf16 copy of it."""
    if precision != "bf16":
        return z
    return z.to(torch.bfloat16)


@contextlib.contextmanager
def _matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """TF32 tensor-core GEMMs on CUDA for ``tf32``; IEEE float32 otherwise."""
    if device.type != "cuda":
        yield
        return
    m = torch.backends.cuda.matmul
    if hasattr(m, "fp32_precision"):  # torch >= 2.9
        old = m.fp32_precision
        m.fp32_precision = "tf32" if precision == "tf32" else "ieee"
        try:
            yield
        finally:
            m.fp32_precision = old
        return
    old_flag = m.allow_tf32
    m.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        m.allow_tf32 = old_flag
