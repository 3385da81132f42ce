"""GPT-2 (``model_type`` ``gpt2``): OpenAI GPT-2, the Stanford CRFM seeds, the bundled suite.

HF layout: ``transformer.h.{l}`` blocks with ``ln_1 -> attn -> ln_2 -> mlp``; attention's
``c_attn`` and the MLP's ``c_fc``/``c_proj`` are ``Conv1D`` with weights ``[in, out]``
(already TransformerLens's orientation). ``c_attn`` outputs ``concat(q, k, v)``, each
``(head d_head)``. The unembedding is tied to ``wte`` and has no bias.
"""

from __future__ import annotations

import einops
import torch
from torch import Tensor, nn

from universal_neurons.models.adapters.base import (
    ArchitectureAdapter,
    AttentionLayout,
    _f32,
    get_module,
)
from universal_neurons.models.weights import RawWeights


class GPT2Adapter(ArchitectureAdapter):
    model_types = ("gpt2",)
    normalization = "LN"
    config_fields = {"n_layers": "n_layer", "d_model": "n_embd", "n_heads": "n_head",
                     "d_mlp": "n_inner", "d_vocab": "vocab_size", "n_ctx": "n_positions"}
    layer_path = "transformer.h.{layer}"
    hook_points = {"pre": ("mlp.c_fc", "output"), "post": ("mlp.act", "output")}
    attention_path = "attn"
    attention_layout = AttentionLayout(norm="ln_1", qkv="attn.c_attn", order="qkv_head",
                                       o="attn.c_proj")
    final_norm_path = "transformer.ln_f"
    transformer_lens_converters = {"gpt2": "convert_gpt2_weights"}

    def fuse_activations(self) -> int:
        """Replace ``gelu_new`` (five elementwise kernels in HF) by PyTorch's fused
        tanh-approximate GELU: the same formula, within 2e-6 of HF's version (float32
        rounding), about a quarter of a CPU forward pass faster. The hook point (``mlp.act``) is unchanged."""
        if getattr(self.config, "activation_function", None) != "gelu_new":
            return 0
        for layer in range(self.n_layers):
            mlp = get_module(self.block(layer), "mlp")
            mlp.act = FusedGELUTanh()
        return self.n_layers

    def _d_mlp(self) -> int:
        # n_inner=None means 4 * n_embd. (TransformerLens's config conversion always uses
        # 4 * n_embd and so mis-sizes models with a custom n_inner, like the bundled suite.)
        return self.config.n_inner or 4 * self.d_model

    def raw_weights(self) -> RawWeights:
        H, D = self.n_heads, self.d_model

        def qkv(i: int):
            def get(b):  # c_attn.weight: [d_model, 3 * d_model] -> [heads, d_model, d_head]
                w = b.attn.c_attn.weight[:, i * D:(i + 1) * D]
                return einops.rearrange(w, "m (h d) -> h m d", h=H)
            return get

        def qkv_bias(i: int):
            return lambda b: b.attn.c_attn.bias[i * D:(i + 1) * D].reshape(H, -1)

        tr = self.model.transformer
        W_E = _f32(tr.wte.weight)
        return RawWeights(
            normalization="LN",
            W_E=W_E,
            W_pos=_f32(tr.wpe.weight),
            ln1_w=self._stack(lambda b: b.ln_1.weight),
            ln1_b=self._stack(lambda b: b.ln_1.bias),
            W_Q=self._stack(qkv(0)), W_K=self._stack(qkv(1)), W_V=self._stack(qkv(2)),
            b_Q=self._stack(qkv_bias(0)), b_K=self._stack(qkv_bias(1)),
            b_V=self._stack(qkv_bias(2)),
            W_O=self._stack(lambda b: einops.rearrange(b.attn.c_proj.weight,
                                                       "(h d) m -> h d m", h=H)),
            b_O=self._stack(lambda b: b.attn.c_proj.bias),
            ln2_w=self._stack(lambda b: b.ln_2.weight),
            ln2_b=self._stack(lambda b: b.ln_2.bias),
            W_in=self._stack(lambda b: b.mlp.c_fc.weight),
            b_in=self._stack(lambda b: b.mlp.c_fc.bias),
            W_gate=None,
            W_out=self._stack(lambda b: b.mlp.c_proj.weight),
            b_out=self._stack(lambda b: b.mlp.c_proj.bias),
            ln_final_w=_f32(tr.ln_f.weight),
            ln_final_b=_f32(tr.ln_f.bias),
            W_U=_f32(self.model.lm_head.weight).T,
            b_U=(_f32(self.model.lm_head.bias) if getattr(self.model.lm_head, "bias", None)
                 is not None else torch.zeros(W_E.shape[0])),
        )


class FusedGELUTanh(nn.Module):
    """``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` (GPT-2's ``gelu_new``) as one kernel."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.gelu(x, approximate="tanh")
