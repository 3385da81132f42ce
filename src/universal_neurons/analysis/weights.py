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

All arithmetic is float64 (on ``device``), vectorised over neurons in row chunks. For
speed on CPUs, ``matmul_dtype=torch.float32`` does the cosine matrix products in float32
(norms and vocabulary moments stay float64; cosines then carry ~1e-7 absolute error and
near-ties in the top-k lists may swap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from universal_neurons.analysis.neuron_table import WEIGHT_TOKENS_FILE, WEIGHTS_FILE

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
        token`` (decoded string), ``cos``; ``list`` in :data:`TOKEN_LISTS`."""
        import pandas as pd

        parts = []
        for name in TOKEN_LISTS:
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
                         chunk_elements: int = 1 << 24,
                         matmul_dtype: torch.dtype = torch.float64) -> WeightStats:
    """All statistics of the module docstring for every neuron of ``pw``."""
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
    in_norm, out_norm = w_in.norm(dim=1), w_out.norm(dim=1)
    w_in_hat, w_out_hat = w_in / in_norm[:, None], w_out / out_norm[:, None]
    shape = (n_layers, d_mlp)
    arrays: dict[str, Tensor] = {
        "w_in_norm": in_norm, "input_bias": b_in.reshape(-1), "w_out_norm": out_norm,
        "in_out_sim": (w_in_hat * w_out_hat).sum(1), "l2_penalty": in_norm**2 + out_norm**2}

    w_in_hat, w_out_hat = w_in_hat.to(matmul_dtype), w_out_hat.to(matmul_dtype)
    W_U = f64(pw.W_U)  # [d_model, d_vocab]
    W_U_hat = (W_U / W_U.norm(dim=0)).to(matmul_dtype)
    vocab = _top_bottom(w_out_hat, W_U_hat, top_k, chunk_elements, moments=True)
    arrays.update({f"vocab_{k}": v for k, v in vocab.items()})
    W_E = f64(pw.W_E)  # [d_vocab, d_model]
    W_E_hat = (W_E / W_E.norm(dim=1, keepdim=True)).T.to(matmul_dtype)
    emb = _top_bottom(w_in_hat, W_E_hat, top_k, chunk_elements)
    arrays.update({f"embed_{k}": v for k, v in emb.items()})
    arrays.update(_neuron_composition(w_in_hat, w_out_hat, n_layers, top_k, chunk_elements))
    arrays.update(_attention_composition(pw, w_in_hat, w_out_hat, n_layers, dev, chunk_elements))
    out = {}
    for k, v in arrays.items():
        v = v.cpu()
        if k.startswith("attn_") or k.endswith("_cos"):
            v = v.float()
        out[k] = v.numpy().reshape(*shape, *v.shape[1:])
    return WeightStats(out)


def _rows(n_cols: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(n_cols, 1))


def _top_bottom(a_hat: Tensor, b_hat: Tensor, k: int, chunk_elements: int,
                moments: bool = False) -> dict[str, Tensor]:
    """Per row of ``cos = a_hat [N, d] @ b_hat [d, V]``: ``{top,bottom}_{ids,cos}`` (k each)
    and, with ``moments``, ``mean, var, skew, kurt`` over the ``V`` columns."""
    k = min(k, b_hat.shape[1])
    out: dict[str, list[Tensor]] = {}
    step = _rows(b_hat.shape[1], chunk_elements)
    for s in range(0, a_hat.shape[0], step):
        cos = a_hat[s:s + step] @ b_hat  # [rows, V]
        parts: dict[str, Tensor] = {}
        for name, largest in (("top", True), ("bottom", False)):
            top = cos.topk(k, dim=1, largest=largest)
            parts[f"{name}_ids"], parts[f"{name}_cos"] = top.indices, top.values
        if moments:
            c = cos.double()
            mean = c.mean(1)
            d = c - mean[:, None]
            d2 = d * d
            var = d2.mean(1)
            parts.update(mean=mean, var=var, skew=(d2 * d).mean(1) / var**1.5,
                         kurt=(d2 * d2).mean(1) / var**2)
        for name, part in parts.items():
            out.setdefault(name, []).append(part)
    return {n: torch.cat(v) for n, v in out.items()}


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
        tb = _top_bottom(w_out_hat[rows], w_in_hat[start:].T, k, chunk_elements)
        kk = tb["top_ids"].shape[1]
        for name in ("top", "bottom"):
            out[f"neuron_{name}_ids"][rows, :kk] = tb[f"{name}_ids"] + start
            out[f"neuron_{name}_cos"][rows, :kk] = tb[f"{name}_cos"]
    return out


def _attention_composition(pw: Any, w_in_hat: Tensor, w_out_hat: Tensor, n_layers: int,
                           dev: torch.device, chunk_elements: int) -> dict[str, Tensor]:
    """``attn_{q,k,v,o}_comp [N, layers, heads]`` (see the module docstring)."""
    d_mlp = w_in_hat.shape[0] // n_layers
    src_layer = torch.arange(w_in_hat.shape[0], device=dev) // d_mlp  # [N]
    tgt_layer = torch.arange(n_layers, device=dev)
    out = {}
    for x in "QKV":
        W = getattr(pw, f"W_{x}").detach().to(device=dev, dtype=w_out_hat.dtype)  # [L, H, d, e]
        L, H, d_model, d_head = W.shape
        frob = W.flatten(2).norm(dim=2)  # [L, H]
        flat = W.permute(2, 0, 1, 3).reshape(d_model, -1)  # [d_model, L*H*d_head]
        step = _rows(flat.shape[1], chunk_elements)
        comp = torch.cat([(w_out_hat[s:s + step] @ flat).view(-1, L, H, d_head).norm(dim=3)
                          for s in range(0, w_out_hat.shape[0], step)]) / frob
        causal = tgt_layer[None, :] > src_layer[:, None]  # reads what the neuron wrote
        out[f"attn_{x.lower()}_comp"] = comp.masked_fill(~causal[:, :, None], torch.nan)
    W_O = pw.W_O.detach().to(device=dev, dtype=w_in_hat.dtype)  # [L, H, d_head, d_model]
    L, H, d_head, d_model = W_O.shape
    frob = W_O.flatten(2).norm(dim=2)
    flat = W_O.reshape(-1, d_model).T  # [d_model, L*H*d_head]
    step = _rows(flat.shape[1], chunk_elements)
    comp = torch.cat([(w_in_hat[s:s + step] @ flat).view(-1, L, H, d_head).norm(dim=3)
                      for s in range(0, w_in_hat.shape[0], step)]) / frob
    causal = tgt_layer[None, :] <= src_layer[:, None]  # heads the neuron reads from
    out["attn_o_comp"] = comp.masked_fill(~causal[:, :, None], torch.nan)
    return out
