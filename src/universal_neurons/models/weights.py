"""TransformerLens-style weights and TransformerLens's default weight processing.

Adapters export a model's weights as :class:`RawWeights` (TransformerLens names and
shapes, stacked over layers, nothing folded). :func:`process_weights` then reproduces
``HookedTransformer.from_pretrained``'s processing (``transformer_lens.weight_processing.
ProcessWeights.process_weights``), in TransformerLens's order:

1. ``fold_ln``: fold each norm's scale (and for LayerNorm its bias) into the linear maps
   that read its output (ln1 -> W_Q/W_K/W_V, ln2 -> W_in/W_gate, ln_final -> W_U); for
   LayerNorm also centre those readers over ``d_model``. RMSNorm folds only the scale.
2. ``center_writing_weights`` (LayerNorm models only): subtract the ``d_model`` mean from
   everything written to the residual stream (W_E, W_pos, W_O, b_O, W_out, b_out).
3. ``center_unembed``: subtract the vocabulary mean from W_U and b_U.
4. ``fold_value_biases``: b_O += sum_head b_V @ W_O, b_V = 0 (then re-centre b_O for LN).

Everything is float32 on the CPU; the model's own parameters are never touched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Normalization = Literal["LN", "RMS"]


@dataclass(frozen=True)
class RawWeights:
    """Unprocessed weights in TransformerLens names and shapes (``L`` = layers).

    K/V are per key-value head (``kv`` = n_key_value_heads, = heads without GQA).
    Missing biases are zeros, as TransformerLens's converters make them.
    """

    normalization: Normalization
    W_E: Tensor  # [d_vocab, d_model]
    W_pos: Tensor | None  # [n_ctx, d_model] | None (rotary)
    ln1_w: Tensor  # [L, d_model]
    ln1_b: Tensor | None  # [L, d_model] | None (RMS)
    W_Q: Tensor  # [L, heads, d_model, d_head]
    W_K: Tensor  # [L, kv, d_model, d_head]
    W_V: Tensor  # [L, kv, d_model, d_head]
    b_Q: Tensor  # [L, heads, d_head]
    b_K: Tensor  # [L, kv, d_head]
    b_V: Tensor  # [L, kv, d_head]
    W_O: Tensor  # [L, heads, d_head, d_model]
    b_O: Tensor  # [L, d_model]
    ln2_w: Tensor  # [L, d_model]
    ln2_b: Tensor | None  # [L, d_model] | None (RMS)
    W_in: Tensor  # [L, d_model, d_mlp]
    b_in: Tensor  # [L, d_mlp]
    W_gate: Tensor | None  # [L, d_model, d_mlp] | None (ungated MLP)
    W_out: Tensor  # [L, d_mlp, d_model]
    b_out: Tensor  # [L, d_model]
    ln_final_w: Tensor  # [d_model]
    ln_final_b: Tensor | None  # [d_model] | None (RMS)
    W_U: Tensor  # [d_model, d_vocab]
    b_U: Tensor  # [d_vocab]


@dataclass(frozen=True)
class ProcessedWeights:
    """Weights after TransformerLens's processing; names and shapes as ``HookedTransformer``.

    ``normalization_type`` is TransformerLens's: ``LNPre``/``RMSPre`` once the norms are
    folded (their ``ln*`` fields are then None), ``LN``/``RMS`` otherwise.
    """

    normalization_type: str
    W_E: Tensor  # [d_vocab, d_model]
    W_pos: Tensor | None  # [n_ctx, d_model]
    W_Q: Tensor  # [layers, heads, d_model, d_head]
    W_K: Tensor  # [layers, heads, d_model, d_head]  (GQA heads expanded, like TL's W_K)
    W_V: Tensor  # [layers, heads, d_model, d_head]
    b_Q: Tensor  # [layers, heads, d_head]
    b_K: Tensor  # [layers, heads, d_head]
    b_V: Tensor  # [layers, heads, d_head]
    W_O: Tensor  # [layers, heads, d_head, d_model]
    b_O: Tensor  # [layers, d_model]
    W_in: Tensor  # [layers, d_model, d_mlp]
    b_in: Tensor  # [layers, d_mlp]
    W_gate: Tensor | None  # [layers, d_model, d_mlp] (gated MLPs only)
    W_out: Tensor  # [layers, d_mlp, d_model]
    b_out: Tensor  # [layers, d_model]
    W_U: Tensor  # [d_model, d_vocab]
    b_U: Tensor  # [d_vocab]
    ln1_w: Tensor | None = None  # [layers, d_model] (unfolded only)
    ln1_b: Tensor | None = None
    ln2_w: Tensor | None = None
    ln2_b: Tensor | None = None
    ln_final_w: Tensor | None = None  # [d_model]
    ln_final_b: Tensor | None = None

    @property
    def n_layers(self) -> int:
        return self.W_in.shape[0]

    @property
    def d_mlp(self) -> int:
        return self.W_in.shape[-1]

    def tensors(self) -> dict[str, Tensor]:
        """The non-None tensors by name (e.g. for ``safetensors.torch.save_file``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), Tensor)}


def _center(x: Tensor, dim: int) -> Tensor:
    return x - x.mean(dim, keepdim=True)


def _expand_kv(x: Tensor, n_heads: int) -> Tensor:
    """Repeat each key/value head ``n_heads // kv`` times along dim 1 (TL's GQA W_K/W_V)."""
    kv = x.shape[1]
    return x if kv == n_heads else torch.repeat_interleave(x, n_heads // kv, dim=1)


def process_weights(raw: RawWeights, fold_ln: bool = True, center_writing_weights: bool = True,
                    center_unembed: bool = True, fold_value_biases: bool = True
                    ) -> ProcessedWeights:
    """TransformerLens's default processing of ``raw`` (see the module docstring).

    Returns new float32 tensors; ``raw`` is not modified.
    """
    w = {f.name: getattr(raw, f.name) for f in dataclasses.fields(raw)}
    w = {k: (v.detach().to(device="cpu", dtype=torch.float32).clone()
             if isinstance(v, Tensor) else v) for k, v in w.items()}
    is_ln = raw.normalization == "LN"
    n_heads = w["W_Q"].shape[1]

    if fold_ln:
        if is_ln:  # LN bias -> reader biases (uses the unscaled weights)
            for q in "QKV":
                w[f"b_{q}"] = w[f"b_{q}"] + (w[f"W_{q}"] * w["ln1_b"][:, None, :, None]).sum(-2)
            w["b_in"] = w["b_in"] + (w["W_in"] * w["ln2_b"][:, :, None]).sum(-2)
            w["b_U"] = w["b_U"] + (w["W_U"] * w["ln_final_b"][:, None]).sum(0)
        for q in "QKV":  # scales -> reader weights
            w[f"W_{q}"] = w[f"W_{q}"] * w["ln1_w"][:, None, :, None]
        w["W_in"] = w["W_in"] * w["ln2_w"][:, :, None]
        if w["W_gate"] is not None:
            w["W_gate"] = w["W_gate"] * w["ln2_w"][:, :, None]
        w["W_U"] = w["W_U"] * w["ln_final_w"][:, None]
        if is_ln:  # LayerNorm output has zero mean: centre the readers over d_model
            for q in "QKV":
                w[f"W_{q}"] = _center(w[f"W_{q}"], -2)
            w["W_in"] = _center(w["W_in"], -2)
            w["W_U"] = _center(w["W_U"], 0)
        for k in ("ln1_w", "ln1_b", "ln2_w", "ln2_b", "ln_final_w", "ln_final_b"):
            w[k] = None

    if center_writing_weights and is_ln:
        w["W_E"] = _center(w["W_E"], -1)
        if w["W_pos"] is not None:
            w["W_pos"] = _center(w["W_pos"], -1)
        w["W_O"] = _center(w["W_O"], -1)
        w["b_O"] = _center(w["b_O"], -1)
        w["W_out"] = _center(w["W_out"], -1)
        w["b_out"] = _center(w["b_out"], -1)

    if center_unembed:
        w["W_U"] = _center(w["W_U"], -1)
        w["b_U"] = w["b_U"] - w["b_U"].mean()

    if fold_value_biases:
        b_V = _expand_kv(w["b_V"], n_heads)  # [L, heads, d_head]
        w["b_O"] = w["b_O"] + torch.einsum("lhd,lhdm->lm", b_V, w["W_O"])
        w["b_V"] = torch.zeros_like(w["b_V"])
        if center_writing_weights and is_ln:
            w["b_O"] = _center(w["b_O"], -1)

    for k in ("W_K", "W_V", "b_K", "b_V"):
        w[k] = _expand_kv(w[k], n_heads)
    norm = raw.normalization + ("Pre" if fold_ln else "")
    del w["normalization"]
    return ProcessedWeights(normalization_type=norm, **w)
