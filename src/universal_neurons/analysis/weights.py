"""Weight statistics of every neuron, from TransformerLens-processed weights (paper §4.2).

Input is a :class:`~universal_neurons.models.weights.ProcessedWeights` (TL's default
processing: fold_ln, center_writing_weights, center_unembed); it is only read. Per neuron
``i`` of layer ``l`` with input direction ``w_in = W_in[l, :, i]`` and output direction
``w_out = W_out[l, i, :]``:

- ``w_in_norm``, ``w_out_norm``, ``input_bias = b_in[l, i]``, ``in_out_sim = cos(w_in, w_out)``,
  ``l2_penalty = |w_in|² + |w_out|²``;
- vocabulary composition: the moments over the vocabulary of ``cos(W_U[:, v], w_out)``
  (``vocab_mean``, ``vocab_var`` (ddof=0), ``vocab_skew``, ``vocab_kurt``; biased
  estimators, kurtosis *not* excess, so a random direction gives ≈ 3), with the top/bottom-k
  tokens; and the top/bottom-k tokens of ``cos(W_E[v], w_in)``;
- neuron-to-neuron composition: the top/bottom-k ``cos(w_out, w_in')`` over the neurons of
  later layers (ids are flat ``layer * d_mlp + neuron``);
- attention composition with every head ``h`` of layer ``l'`` (Elhage et al. 2021 scores
  for a vector): ``X ∈ {Q, K, V}`` for ``l' > l``: ``|w_outᵀ W_X[l', h]| / (|w_out| |W_X[l', h]|_F)``;
  ``O`` for ``l' <= l``: ``|W_O[l', h] w_in| / (|W_O[l', h]|_F |w_in|)``; NaN elsewhere.

Gated MLPs (LLaMA-style): the neuron's input direction is the **gate** column, TL's
``W_gate[l, :, i]``, whose dot product is the pre-activation (``hook_pre``) that goes
through the nonlinearity; TL's ``W_in`` there is the linear "up" branch and is not used.
TL's gated MLP has no gate bias (its ``b_in`` is added after the product), so
``input_bias`` is 0 for gated models.

Norms, ``in_out_sim``, ``l2_penalty`` and ``vocab_mean`` (= ``w_out_hat . mean_v(W_U_hat[:, v])``)
are float64. The cosine matrix products run in ``matmul_dtype``, float32 by default, in tiles
of rows x ``VOCAB_TILE`` columns written into one reused buffer; per tile, the top/bottom-k
candidates and the central sums about the exact mean in float32 (torch's cascade sums, error
<= 2e-7 of the sum of |terms|), added over the tiles in float64. Measured against float64 (tests and a
GPT-2-small-shaped model, docs/scale.md): cosines within 1.3e-7 absolute, ``vocab_var`` and
``vocab_kurt`` within 1e-5 relative (measured 2e-7 / 5e-7), ``vocab_skew`` within 1e-6
absolute (measured 2.5e-7); near-ties in the top-k lists may swap order.
``matmul_dtype=torch.float64`` is exact to rounding (about 3x the time on CPUs).
The default computes only what the neuron table and the report read (the per-neuron columns
and the ``vocab_*`` token lists); ``compositions=True`` adds the rest, about three times the
arithmetic.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from universal_neurons.constants import WEIGHT_TOKENS_FILE, WEIGHTS_FILE

NEURON_COLUMNS = ("w_in_norm", "input_bias", "w_out_norm", "in_out_sim", "l2_penalty",
                  "vocab_mean", "vocab_var", "vocab_skew", "vocab_kurt")
TOKEN_LISTS = ("vocab_top", "vocab_bottom", "embed_top", "embed_bottom")


@dataclass
class WeightStats:
    """Per-neuron weight statistics (``arrays[c]`` is ``[layers, d_mlp]`` for
    ``c in NEURON_COLUMNS``) plus top-k lists ``[layers, d_mlp, k]`` and attention
    composition ``attn_{q,k,v,o}_comp [layers, d_mlp, layers, heads]``."""

    arrays: dict[str, np.ndarray]

    def frame(self):
        """One row per neuron: ``layer, neuron`` and :data:`NEURON_COLUMNS`."""
        import pandas as pd

        n_layers, d_mlp = self.arrays["w_in_norm"].shape
        layer, neuron = np.divmod(np.arange(n_layers * d_mlp), d_mlp)
        return pd.DataFrame({"layer": layer, "neuron": neuron,
                             **{c: self.arrays[c].reshape(-1) for c in NEURON_COLUMNS}})

    def token_frame(self, tokenizer: Any):
        """Long table of the top/bottom-k tokens: ``layer, neuron, list, rank, token_id,
        token`` (decoded string), ``cos``; ``list`` in :data:`TOKEN_LISTS` (those computed)."""
        import pandas as pd

        parts = []
        for name in (n for n in TOKEN_LISTS if f"{n}_ids" in self.arrays):
            ids, cos = self.arrays[f"{name}_ids"], self.arrays[f"{name}_cos"]
            layer, neuron, rank = (a.ravel() for a in np.indices(ids.shape))
            parts.append(pd.DataFrame({"layer": layer, "neuron": neuron, "list": name,
                                       "rank": rank, "token_id": ids.ravel(),
                                       "cos": cos.ravel()}))
        df = pd.concat(parts, ignore_index=True)
        uniq = np.unique(df.token_id.to_numpy())
        text = {int(t): tokenizer.decode([int(t)]) for t in uniq}
        df["token"] = df.token_id.map(text)
        return df

    def save(self, directory: str | Path, tokenizer: Any = None, meta: dict | None = None) -> None:
        """``directory/weights.safetensors`` (+ ``weight_tokens.parquet`` with a tokenizer)."""
        from safetensors.numpy import save_file

        from universal_neurons.rundir import atomic_path, write_table

        d = Path(directory)
        with atomic_path(d / WEIGHTS_FILE) as tmp:
            save_file({k: np.ascontiguousarray(v) for k, v in self.arrays.items()}, str(tmp),
                      metadata={"meta": json.dumps(meta or {})})
        if tokenizer is not None:
            write_table(d / WEIGHT_TOKENS_FILE, self.token_frame(tokenizer), csv=False)

    @classmethod
    def load(cls, directory: str | Path) -> WeightStats:
        from safetensors.numpy import load_file

        return cls(load_file(str(Path(directory) / WEIGHTS_FILE)))


def input_weights(pw: Any) -> tuple[Tensor, Tensor]:
    """``(W [L, d_model, d_mlp], b [L, d_mlp])``: the pre-activation's input directions and
    biases (the gate for gated MLPs, see the module docstring)."""
    gate = getattr(pw, "W_gate", None)
    if gate is not None:
        return gate, torch.zeros_like(pw.b_in)
    return pw.W_in, pw.b_in


def compute_weight_stats(pw: Any, top_k: int = 10, device: str | torch.device = "cpu",
                         chunk_elements: int = 1 << 22,
                         matmul_dtype: torch.dtype = torch.float32,
                         compositions: bool = False) -> WeightStats:
    """The statistics of the module docstring for every neuron of ``pw``.

    Always: :data:`NEURON_COLUMNS` and the ``vocab_{top,bottom}_{ids,cos}`` lists.
    ``compositions=True`` adds the ``embed_*`` token lists and the neuron and attention
    compositions (about three times the arithmetic of the rest; nothing in the report
    reads them).
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if matmul_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"matmul_dtype must be float32 or float64, got {matmul_dtype}")
    dev = torch.device(device)

    def f64(t: Tensor) -> Tensor:
        return t.detach().to(device=dev, dtype=torch.float64)

    W_in, b_in = (f64(t) for t in input_weights(pw))
    W_out = f64(pw.W_out)  # [L, d_mlp, d_model]
    n_layers, d_model, d_mlp = W_in.shape
    w_in = W_in.transpose(1, 2).reshape(-1, d_model)  # [N, d_model]
    w_out = W_out.reshape(-1, d_model)  # [N, d_model]
    del W_in, W_out
    in_norm, out_norm = w_in.norm(dim=1), w_out.norm(dim=1)
    w_in_hat, w_out_hat = w_in / in_norm[:, None], w_out / out_norm[:, None]
    del w_in, w_out
    shape = (n_layers, d_mlp)
    arrays: dict[str, Tensor] = {
        "w_in_norm": in_norm, "input_bias": b_in.reshape(-1), "w_out_norm": out_norm,
        "in_out_sim": (w_in_hat * w_out_hat).sum(1), "l2_penalty": in_norm**2 + out_norm**2}

    W_U = f64(pw.W_U)  # [d_model, d_vocab]
    W_U_hat = W_U / W_U.norm(dim=0)
    del W_U
    # exact float64 mean over the vocabulary: mean_v cos(u_v, w) = w . mean_v(u_v)
    vocab_mean = w_out_hat @ W_U_hat.mean(1)
    w_out_mm = w_out_hat.to(matmul_dtype)
    vocab = _top_bottom(w_out_mm, W_U_hat.to(matmul_dtype), top_k, chunk_elements,
                        mean=vocab_mean)
    del W_U_hat
    arrays.update({f"vocab_{k}": v for k, v in vocab.items()})
    if compositions:
        w_in_mm = w_in_hat.to(matmul_dtype)
        W_E = f64(pw.W_E)  # [d_vocab, d_model]
        W_E_hat = (W_E / W_E.norm(dim=1, keepdim=True)).T.to(matmul_dtype)
        del W_E
        emb = _top_bottom(w_in_mm, W_E_hat, top_k, chunk_elements)
        del W_E_hat
        arrays.update({f"embed_{k}": v for k, v in emb.items()})
        arrays.update(_neuron_composition(w_in_mm, w_out_mm, n_layers, top_k, chunk_elements))
        arrays.update(_attention_composition(pw, w_in_mm, w_out_mm, n_layers, dev,
                                             chunk_elements))
    out = {}
    for k, v in arrays.items():
        v = v.cpu()
        if k.startswith("attn_") or k.endswith("_cos"):
            v = v.float()
        elif k.endswith("_ids"):
            v = v.int()  # token / neuron ids fit int32
        out[k] = v.numpy().reshape(*shape, *v.shape[1:])
    return WeightStats(out)


def _rows(n_cols: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(n_cols, 1))


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b``; on the CPU through numpy's BLAS (OpenBLAS), which runs these float32
    products ~1.6x faster than torch's MKL on AMD CPUs (measured: docs/scale.md)."""
    if a.device.type == "cpu" and b.device.type == "cpu":
        return torch.from_numpy(np.matmul(a.numpy(), b.numpy()))
    return a @ b


def _mm_into(a: Tensor, b: Tensor, out: Tensor) -> None:
    """``out = a @ b`` (``out`` contiguous), on the CPU through numpy's BLAS as :func:`_mm`;
    ``b`` may be a column slice (the BLAS reads it with its row stride)."""
    if out.device.type == "cpu":
        np.matmul(a.numpy(), b.numpy(), out=out.numpy())
    else:
        torch.mm(a, b, out=out)


def _topk_both(x: Tensor, k: int, block: int | None = None) -> dict[str, Tensor]:
    """Per row of ``x [rows, V]``: ``{top,bottom}_{ids,cos}``, the ``k`` largest and smallest
    values in order (as ``torch.topk``).

    Two stages: the max and min of each of ``V // block`` groups of ``block`` columns
    (group ``g`` = columns ``g, g + V // block, ...``: the reductions run over the outer
    axis, vectorised), then ``torch.topk`` over the columns of the ``k`` groups with the
    most extreme values only (the k largest values of a row lie in the k groups with the
    largest maxima). About 4x faster than ``torch.topk`` over whole rows on CPUs.
    """
    rows, V = x.shape
    if block is None:  # fewest values looked at twice: V / block group extremes + k * block
        block = max(8, 1 << round(math.log2(math.sqrt(V / k))))
    nb = V // block
    if nb <= 2 * k:
        out = {}
        for name, largest in (("top", True), ("bottom", False)):
            t = x.topk(k, dim=1, largest=largest)
            out[f"{name}_ids"], out[f"{name}_cos"] = t.indices, t.values
        return out
    groups = x[:, :nb * block].unflatten(1, (block, nb))  # [rows, block, nb] view
    offs = torch.arange(block, device=x.device) * nb
    tail = torch.arange(nb * block, V, device=x.device).expand(rows, -1)
    out = {}
    for name, largest in (("top", True), ("bottom", False)):
        ext = groups.amax(1) if largest else groups.amin(1)  # [rows, nb]
        g = ext.topk(k, dim=1, largest=largest, sorted=False).indices  # [rows, k]
        cols = torch.cat([(g[:, :, None] + offs).flatten(1), tail], 1)
        t = x.gather(1, cols).topk(k, dim=1, largest=largest)
        out[f"{name}_ids"], out[f"{name}_cos"] = cols.gather(1, t.indices), t.values
    return out


VOCAB_TILE = 4096
"""Columns of one product tile: the tile and its temporaries stay in cache for the passes
that follow the product (top-k, central sums); ``chunk_elements`` sets its rows."""


def _top_bottom(a_hat: Tensor, b_hat: Tensor, k: int, chunk_elements: int,
                mean: Tensor | None = None, moments: bool = False) -> dict[str, Tensor]:
    """Per row of ``cos = a_hat [N, d] @ b_hat [d, V]``: ``{top,bottom}_{ids,cos}`` (k each)
    and, given the rows' exact float64 ``mean`` over the ``V`` columns (or with ``moments``,
    which computes it), ``mean, var, skew, kurt`` over them (central sums about that mean,
    in the dtype of the product, per tile, added in float64).

    The product runs in tiles of ``rows x VOCAB_TILE`` columns written into one reused
    buffer (no fresh pages per tile); each tile's top/bottom-k are merged at the end."""
    if moments and mean is None:
        mean = a_hat.double() @ b_hat.double().mean(1)
    N, V = a_hat.shape[0], b_hat.shape[1]
    k = min(k, V)
    tile = min(V, VOCAB_TILE)
    step = min(N, _rows(tile, chunk_elements))
    buf = torch.empty(2, step * tile, dtype=a_hat.dtype, device=a_hat.device)
    out: dict[str, list[Tensor]] = {}
    for s in range(0, N, step):
        rows = a_hat[s:s + step]
        mu = None if mean is None else mean[s:s + step]
        parts = _tiles(rows, b_hat, k, tile, buf, mu)
        for name, part in parts.items():
            out.setdefault(name, []).append(part)
    return {n: torch.cat(v) for n, v in out.items()}


def _tiles(rows: Tensor, b_hat: Tensor, k: int, tile: int, buf: Tensor,
           mu: Tensor | None) -> dict[str, Tensor]:
    """:func:`_top_bottom` of ``rows [r, d]``, tile by tile of ``b_hat``'s columns."""
    r, V = rows.shape[0], b_hat.shape[1]
    cand: dict[str, list[Tensor]] = {}
    sums = torch.zeros(3, r, dtype=torch.float64, device=rows.device)
    mu_c = None if mu is None else mu.to(rows.dtype)[:, None]
    for v0 in range(0, V, tile):
        w = min(tile, V - v0)
        cos, d2 = buf[0, :r * w].view(r, w), buf[1, :r * w].view(r, w)
        _mm_into(rows, b_hat[:, v0:v0 + w], cos)
        for name, t in _topk_both(cos, min(k, w)).items():
            cand.setdefault(name, []).append(t + v0 if name.endswith("_ids") else t)
        if mu_c is not None:
            # torch's cascade sums: error <= 2e-7 of the sum of |terms| in float32
            d = cos.sub_(mu_c)  # cos is not needed any more
            torch.mul(d, d, out=d2)
            sums[0] += d2.sum(1).double()
            sums[1] += torch.mul(d2, d, out=d).sum(1).double()
            sums[2] += d2.square_().sum(1).double()
    out = {}
    for name, largest in (("top", True), ("bottom", False)):
        vals, ids = torch.cat(cand[f"{name}_cos"], 1), torch.cat(cand[f"{name}_ids"], 1)
        best, pos = vals.topk(k, dim=1, largest=largest)
        out[f"{name}_ids"], out[f"{name}_cos"] = ids.gather(1, pos), best
    if mu is not None:
        var, m3, m4 = (sums / V).unbind(0)
        out.update(mean=mu, var=var, skew=m3 / var**1.5, kurt=m4 / var**2)
    return out


def _neuron_composition(w_in_hat: Tensor, w_out_hat: Tensor, n_layers: int, k: int,
                        chunk_elements: int) -> dict[str, Tensor]:
    """Top/bottom-k ``cos(w_out, w_in')`` over neurons of later layers (-1 / NaN if none)."""
    n, d_mlp = w_in_hat.shape[0], w_in_hat.shape[0] // n_layers
    ids = torch.full((n, k), -1, dtype=torch.int64, device=w_in_hat.device)
    out = {"neuron_top_ids": ids, "neuron_bottom_ids": ids.clone(),
           "neuron_top_cos": torch.full((n, k), torch.nan, dtype=torch.float64,
                                        device=w_in_hat.device)}
    out["neuron_bottom_cos"] = out["neuron_top_cos"].clone()
    for layer in range(n_layers - 1):
        rows, start = slice(layer * d_mlp, (layer + 1) * d_mlp), (layer + 1) * d_mlp
        tb = _top_bottom(w_out_hat[rows], w_in_hat[start:].T.contiguous(), k, chunk_elements)
        kk = tb["top_ids"].shape[1]
        for name in ("top", "bottom"):
            out[f"neuron_{name}_ids"][rows, :kk] = tb[f"{name}_ids"] + start
            out[f"neuron_{name}_cos"][rows, :kk] = tb[f"{name}_cos"].to(torch.float64)
    return out


def _head_norms(a: Tensor, flat: Tensor, d_head: int, chunk_elements: int) -> Tensor:
    """``|a @ W_h|`` for every head ``h``: ``a [n, d]``, ``flat [d, heads * d_head]``."""
    step = _rows(flat.shape[1], chunk_elements)
    return torch.cat([_mm(a[s:s + step], flat).view(-1, flat.shape[1] // d_head, d_head)
                      .norm(dim=2) for s in range(0, a.shape[0], step)])


def _attention_composition(pw: Any, w_in_hat: Tensor, w_out_hat: Tensor, n_layers: int,
                           dev: torch.device, chunk_elements: int) -> dict[str, Tensor]:
    """``attn_{q,k,v,o}_comp [N, layers, heads]`` (see the module docstring); only the
    causal (non-NaN) entries are computed."""
    d_mlp = w_in_hat.shape[0] // n_layers
    out = {}
    for x in "QKVO":
        W = getattr(pw, f"W_{x}").detach().to(device=dev, dtype=w_out_hat.dtype)
        if x == "O":  # [L, H, d_head, d_model] -> [d_model, L*H*d_head]
            L, H, d_head, _ = W.shape
            flat = W.flatten(0, 2).T.contiguous()
        else:  # [L, H, d_model, d_head] -> [d_model, L*H*d_head]
            L, H, _, d_head = W.shape
            flat = W.permute(2, 0, 1, 3).flatten(1).contiguous()
        frob = W.flatten(2).norm(dim=2)  # [L, H]
        comp = torch.full((w_in_hat.shape[0], L, H), torch.nan, dtype=W.dtype, device=dev)
        per_layer = H * d_head
        for layer in range(n_layers):
            rows = slice(layer * d_mlp, (layer + 1) * d_mlp)
            # Q/K/V read what the neuron wrote (later layers); O writes what it reads (<= l)
            tgt = slice(layer + 1, L) if x != "O" else slice(0, layer + 1)
            if tgt.start >= tgt.stop:
                continue
            src = w_out_hat[rows] if x != "O" else w_in_hat[rows]
            cols = flat[:, tgt.start * per_layer:tgt.stop * per_layer]
            comp[rows, tgt] = (_head_norms(src, cols, d_head, chunk_elements)
                               .view(-1, tgt.stop - tgt.start, H) / frob[tgt])
        out[f"attn_{x.lower()}_comp"] = comp
    return out
