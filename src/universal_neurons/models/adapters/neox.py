"""GPT-NeoX (``model_type`` ``gpt_neox``): Pythia and the PolyPythias seeds.

HF layout: ``gpt_neox.layers.{l}`` with ``input_layernorm -> attention`` and
``post_attention_layernorm -> mlp`` (in parallel when ``use_parallel_residual``, as in
Pythia; both norms exist either way). ``attention.query_key_value`` is an ``nn.Linear``
whose output is laid out ``(head, qkv, d_head)`` -- interleaved per head, unlike GPT-2's
``(qkv, head, d_head)``. Rotary embeddings act on q/k inside attention, so the weights
need no permutation (TL: ``rotary_adjacent_pairs=False``). ``nn.Linear`` weights are
``[out, in]`` and are transposed into TL's ``[in, out]``.
"""

from __future__ import annotations

import einops
import torch

from universal_neurons.models.adapters.base import (
    ArchitectureAdapter,
    AttentionLayout,
    _f32,
    bias_or_zeros,
)
from universal_neurons.models.weights import RawWeights


class NeoXAdapter(ArchitectureAdapter):
    model_types = ("gpt_neox",)
    normalization = "LN"
    config_fields = {"n_layers": "num_hidden_layers", "d_model": "hidden_size",
                     "n_heads": "num_attention_heads", "d_mlp": "intermediate_size",
                     "d_vocab": "vocab_size", "n_ctx": "max_position_embeddings"}
    layer_path = "gpt_neox.layers.{layer}"
    hook_points = {"pre": ("mlp.dense_h_to_4h", "output"), "post": ("mlp.act", "output")}
    attention_path = "attention"
    attention_layout = AttentionLayout(norm="input_layernorm", qkv="attention.query_key_value",
                                       order="head_qkv", o="attention.dense")
    final_norm_path = "gpt_neox.final_layer_norm"
    transformer_lens_converters = {"gpt_neox": "convert_neox_weights"}

    def _unembed(self):
        # transformers >= 5.14 calls it lm_head; older versions embed_out
        return getattr(self.model, "lm_head", None) or self.model.embed_out

    def raw_weights(self) -> RawWeights:
        H = self.n_heads

        def qkv(i: int):
            def get(b):  # [(h qkv d), m] -> [h, m, d] for q/k/v number i
                w = einops.rearrange(b.attention.query_key_value.weight,
                                     "(h qkv d) m -> qkv h m d", h=H, qkv=3)
                return w[i]
            return get

        def qkv_bias(i: int):
            return lambda b: einops.rearrange(b.attention.query_key_value.bias,
                                              "(h qkv d) -> qkv h d", h=H, qkv=3)[i]

        unembed = self._unembed()
        return RawWeights(
            normalization="LN",
            W_E=_f32(self.model.gpt_neox.embed_in.weight),
            W_pos=None,
            ln1_w=self._stack(lambda b: b.input_layernorm.weight),
            ln1_b=self._stack(lambda b: b.input_layernorm.bias),
            W_Q=self._stack(qkv(0)), W_K=self._stack(qkv(1)), W_V=self._stack(qkv(2)),
            b_Q=self._stack(qkv_bias(0)), b_K=self._stack(qkv_bias(1)),
            b_V=self._stack(qkv_bias(2)),
            W_O=self._stack(lambda b: einops.rearrange(b.attention.dense.weight,
                                                       "m (h d) -> h d m", h=H)),
            b_O=self._stack(lambda b: b.attention.dense.bias),
            ln2_w=self._stack(lambda b: b.post_attention_layernorm.weight),
            ln2_b=self._stack(lambda b: b.post_attention_layernorm.bias),
            W_in=self._stack(lambda b: b.mlp.dense_h_to_4h.weight.T),
            b_in=self._stack(lambda b: b.mlp.dense_h_to_4h.bias),
            W_gate=None,
            W_out=self._stack(lambda b: b.mlp.dense_4h_to_h.weight.T),
            b_out=self._stack(lambda b: b.mlp.dense_4h_to_h.bias),
            ln_final_w=_f32(self.model.gpt_neox.final_layer_norm.weight),
            ln_final_b=_f32(self.model.gpt_neox.final_layer_norm.bias),
            W_U=_f32(unembed.weight).T,
            b_U=bias_or_zeros(unembed, self.d_vocab) if unembed is not None
            else torch.zeros(self.d_vocab),
        )
