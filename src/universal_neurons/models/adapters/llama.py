"""Llama-style models (``llama``, ``mistral``, ``qwen2``): RMSNorm, rotary, gated MLP, GQA.

HF layout: ``model.layers.{l}`` with ``input_layernorm -> self_attn`` and
``post_attention_layernorm -> mlp``; the MLP computes
``down_proj(act_fn(gate_proj(x)) * up_proj(x))``. TransformerLens's ``GatedMLP`` names
``gate_proj`` ``W_gate`` and ``up_proj`` ``W_in``; ``hook_pre`` is the gate projection and
``hook_post`` is ``act(gate) * up`` -- the input of ``down_proj``, seen with a forward
pre-hook. K/V have ``num_key_value_heads`` heads (GQA); processed weights repeat them to
``n_heads`` like TL's ``W_K``/``W_V`` properties. Mistral and Qwen2 share the module
names (Qwen2 adds q/k/v biases, read when present).
"""

from __future__ import annotations

import einops

from universal_neurons.models.adapters.base import (
    ArchitectureAdapter,
    AttentionLayout,
    _f32,
    bias_or_zeros,
)
from universal_neurons.models.weights import RawWeights


class LlamaAdapter(ArchitectureAdapter):
    model_types = ("llama", "mistral", "qwen2")
    normalization = "RMS"
    config_fields = {"n_layers": "num_hidden_layers", "d_model": "hidden_size",
                     "n_heads": "num_attention_heads", "d_mlp": "intermediate_size",
                     "d_vocab": "vocab_size", "n_ctx": "max_position_embeddings"}
    layer_path = "model.layers.{layer}"
    hook_points = {"pre": ("mlp.gate_proj", "output"), "post": ("mlp.down_proj", "input")}
    attention_path = "self_attn"
    attention_layout = AttentionLayout(norm="input_layernorm", q="self_attn.q_proj",
                                       k="self_attn.k_proj", v="self_attn.v_proj",
                                       o="self_attn.o_proj")
    final_norm_path = "model.norm"
    transformer_lens_converters = {"llama": "convert_llama_weights",
                                   "qwen2": "convert_qwen2_weights"}

    def _d_head(self) -> int:
        return getattr(self.config, "head_dim", None) or self.d_model // self.n_heads

    def _n_key_value_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.n_heads

    def raw_weights(self) -> RawWeights:
        H, KV, d = self.n_heads, self.n_key_value_heads, self.d_head

        def heads(name: str, n: int):  # Linear [(n d), m] -> [n, m, d]
            return lambda b: einops.rearrange(getattr(b.self_attn, name).weight,
                                              "(n d) m -> n m d", n=n)

        def head_bias(name: str, n: int):
            return lambda b: bias_or_zeros(getattr(b.self_attn, name), n * d).reshape(n, d)

        return RawWeights(
            normalization="RMS",
            W_E=_f32(self.model.model.embed_tokens.weight),
            W_pos=None,
            ln1_w=self._stack(lambda b: b.input_layernorm.weight),
            ln1_b=None,
            W_Q=self._stack(heads("q_proj", H)), W_K=self._stack(heads("k_proj", KV)),
            W_V=self._stack(heads("v_proj", KV)),
            b_Q=self._stack(head_bias("q_proj", H)), b_K=self._stack(head_bias("k_proj", KV)),
            b_V=self._stack(head_bias("v_proj", KV)),
            W_O=self._stack(lambda b: einops.rearrange(b.self_attn.o_proj.weight,
                                                       "m (h d) -> h d m", h=H)),
            b_O=self._stack(lambda b: bias_or_zeros(b.self_attn.o_proj, self.d_model)),
            ln2_w=self._stack(lambda b: b.post_attention_layernorm.weight),
            ln2_b=None,
            W_in=self._stack(lambda b: b.mlp.up_proj.weight.T),
            b_in=self._stack(lambda b: bias_or_zeros(b.mlp.up_proj, self.d_mlp)),
            W_gate=self._stack(lambda b: b.mlp.gate_proj.weight.T),
            W_out=self._stack(lambda b: b.mlp.down_proj.weight.T),
            b_out=self._stack(lambda b: bias_or_zeros(b.mlp.down_proj, self.d_model)),
            ln_final_w=_f32(self.model.model.norm.weight),
            ln_final_b=None,
            W_U=_f32(self.model.lm_head.weight).T,
            b_U=bias_or_zeros(self.model.lm_head, self.d_vocab),
        )
