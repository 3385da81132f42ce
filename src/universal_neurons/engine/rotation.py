"""Random bases for the baseline: the same neuron correlated with a rotated partner basis.

A basis ``B: [d, d]`` turns a layer's activations ``y: [n, d]`` into ``y @ B``; its column
``j`` is the direction of rotated neuron ``j``. Kinds:

- ``rotation`` (default): Haar-random orthogonal, QR of a Gaussian matrix with the signs of
  ``R``'s diagonal moved into ``Q`` (Mezzadri 2007).
- ``gaussian-rows``: the paper code's baseline, Gaussian rows normalised to unit norm and
  used as ``y @ G^T`` (not orthogonal).

Each basis is drawn from a NumPy ``Generator`` seeded by ``(seed, crc32(model name),
layer)`` (``(seed, crc32, layer, draw)`` for the extra draws ``draw >= 1`` of
``--rotations K``; draw 0 is the default basis) and orthogonalised by a single-threaded QR, so a model's layer gets the same basis
in every pair and every run with the same seed, bit for bit (given the same torch build).
"""

from __future__ import annotations

import zlib
from typing import Literal

import numpy as np
import torch

Baseline = Literal["rotation", "gaussian-rows", "none"]
BASELINES: tuple[str, ...] = ("rotation", "gaussian-rows", "none")


def basis_seed(seed: int, model: str, layer: int, draw: int = 0) -> list[int]:
    """Entropy for ``np.random.SeedSequence`` of one (seed, model, layer, draw); draw 0
    keeps the three-number entropy of a single baseline."""
    out = [int(seed), zlib.crc32(model.encode("utf-8")), int(layer)]
    return out + [int(draw)] if draw else out


def baseline_basis(kind: str, seed: int, model: str, layer: int, d: int,
                   draw: int = 0) -> torch.Tensor:
    """``Float64[d, d]``: basis ``draw`` of ``model``'s ``layer`` (see module doc)."""
    rng = np.random.default_rng(np.random.SeedSequence(basis_seed(seed, model, layer, draw)))
    g = rng.standard_normal((d, d))
    if kind == "rotation":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # thread-count independent bits; multi-threaded LAPACK QR
        try:  # of a few hundred rows is also 20x slower on a busy machine
            q, r = torch.linalg.qr(torch.from_numpy(g))
        finally:
            torch.set_num_threads(threads)
        signs = torch.sign(torch.diagonal(r))
        signs[signs == 0] = 1.0
        return (q * signs[None, :]).contiguous()
    if kind == "gaussian-rows":
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        return torch.from_numpy(np.ascontiguousarray(g.T))
    raise ValueError(f"baseline must be 'rotation' or 'gaussian-rows', got {kind!r}")


def rotated_variances(cov: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``diag(B^T S B)`` for a layer co-moment ``S: Float64[d, d]`` -> ``Float64[d]``:
    the (unnormalised) variance of each rotated neuron."""
    basis = basis.to(cov)
    return ((cov @ basis) * basis).sum(0)
