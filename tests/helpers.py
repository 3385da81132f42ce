"""The one set of test builders: tiny random models per architecture, tiny tokenizers, and
TransformerLens oracles. Nothing here touches the network.

Architectures are rows of :data:`ARCHS` (canonical sizes -> the HF config's field names, plus
fixed settings), so a test picks one by name and sizes it with keyword arguments::

    tiny_model("llama", n_layers=3, d_model=32)   # random LlamaForCausalLM, eval mode
    loaded_model("neox")                          # the same wrapped as models.loading.LoadedModel
    tl_oracle(hf_model)                           # TL's HookedTransformer from TL's own converters
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

VOCAB = 80  # != d_model: TL's shape heuristics misfold a square W_U (d_vocab == d_model)
BOS = 0


@dataclass(frozen=True)
class Arch:
    """How to build one architecture's tiny config."""

    config_class: str
    """``transformers`` config class name."""
    model_class: str
    """``transformers`` causal-LM class name (also written to ``config.architectures``)."""
    fields: dict[str, tuple[str, ...]]
    """Canonical size -> the HF config field(s) that hold it."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Settings every tiny model of this architecture gets."""


_LLAMA_FIELDS = {"n_layers": ("num_hidden_layers",), "d_model": ("hidden_size",),
                 "n_heads": ("num_attention_heads",), "n_kv_heads": ("num_key_value_heads",),
                 "d_mlp": ("intermediate_size",), "vocab": ("vocab_size",),
                 "n_ctx": ("max_position_embeddings",)}

ARCHS: dict[str, Arch] = {
    # n_ctx is in real GPT-2 configs and TransformerLens reads it; layer-scaled attention as
    # in the Stanford CRFM seeds
    "gpt2": Arch("GPT2Config", "GPT2LMHeadModel",
                 {"n_layers": ("n_layer",), "d_model": ("n_embd",), "n_heads": ("n_head",),
                  "d_mlp": ("n_inner",), "vocab": ("vocab_size",),
                  "n_ctx": ("n_positions", "n_ctx")},
                 {"bos_token_id": BOS, "eos_token_id": BOS,
                  "scale_attn_by_inverse_layer_idx": True}),
    # Pythia-style: parallel residual, partial rotary
    "neox": Arch("GPTNeoXConfig", "GPTNeoXForCausalLM",
                 {"n_layers": ("num_hidden_layers",), "d_model": ("hidden_size",),
                  "n_heads": ("num_attention_heads",), "d_mlp": ("intermediate_size",),
                  "vocab": ("vocab_size",), "n_ctx": ("max_position_embeddings",)},
                 {"use_parallel_residual": True}),
    "llama": Arch("LlamaConfig", "LlamaForCausalLM", _LLAMA_FIELDS),
    # the llama layout plus q/k/v biases
    "qwen2": Arch("Qwen2Config", "Qwen2ForCausalLM", _LLAMA_FIELDS),
}
"""Architecture name -> how to build it (``neox`` = HF ``gpt_neox``)."""

SIZES = {"n_layers": 2, "d_model": 64, "n_heads": 4, "n_kv_heads": 2, "d_mlp": 96,
         "vocab": VOCAB, "n_ctx": 32}
"""Default sizes, chosen to expose layout mistakes: d_mlp != 4 d_model, GQA with 2
key-value heads for 4 query heads, d_vocab != d_model."""


def hf_config(arch: str, **kwargs: Any):
    """A tiny config of ``arch``. Keyword arguments named like :data:`SIZES` set sizes (an
    architecture without the field ignores it, e.g. GPT-2's ``n_kv_heads``); any other
    keyword is passed to the HF config as is."""
    import transformers

    spec = ARCHS[arch]
    sizes = {k: kwargs.pop(k, v) for k, v in SIZES.items()}
    args: dict[str, Any] = {"architectures": [spec.model_class], **spec.fixed}
    for name, value in sizes.items():
        for hf_name in spec.fields.get(name, ()):
            args[hf_name] = value
    args.update(kwargs)
    return getattr(transformers, spec.config_class)(**args)


def tiny_model(arch: str, seed: int = 0, perturb: float = 0.2, **config: Any):
    """A random tiny ``*ForCausalLM`` in eval mode, built after ``torch.manual_seed(seed)``;
    every parameter (norm scales and all biases included) is then moved by ``perturb``
    times Gaussian noise so that no folding step can pass by accident."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch, **config)).eval()
    if perturb:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(perturb * torch.randn_like(p))
    return model


def loaded_model(arch: str, name: str | None = None, tokenizer: Any = None, **kwargs: Any):
    """:func:`tiny_model` as a ``LoadedModel`` (``requires_grad_(False)``, the adapter chosen
    by the registry). Without ``tokenizer`` a stand-in with BOS = EOS = 0 is attached."""
    import types

    from universal_neurons.models.adapters import adapter_for
    from universal_neurons.models.loading import LoadedModel

    model = tiny_model(arch, **kwargs).requires_grad_(False)
    tok = tokenizer or types.SimpleNamespace(bos_token_id=BOS, eos_token_id=BOS)
    name = name or f"tiny-{arch}"
    return LoadedModel(name=name, spec=arch, source="local", location="", revision=None,
                       hf_model=model, tokenizer=tok, adapter=adapter_for(model, name))


def tiny_tokenizer(words: tuple[str, ...] = (), vocab: int = VOCAB):
    """A word-level fast tokenizer with ``vocab`` entries (id 0 = ``<|endoftext|>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = ["<|endoftext|>", *words]
    names += [f"w{i}" for i in range(vocab - len(names))]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(names)},
                                     unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def save_model_folder(path: Path, arch: str = "gpt2", tokenizer=None, seed: int = 0,
                      **config: Any) -> Path:
    """Write a loadable HF folder (config, safetensors, tokenizer) to ``path``."""
    model = tiny_model(arch, seed=seed, **config)
    model.save_pretrained(path, safe_serialization=True)
    (tokenizer or tiny_tokenizer()).save_pretrained(path)
    return path


def tl_oracle(hf_model, **processing: Any):
    """A ``HookedTransformer`` built offline from ``hf_model`` with TransformerLens's own
    config conversion and weight converters, processed with ``processing`` flags (TL's
    defaults otherwise), in eval mode and without gradients."""
    from universal_neurons.models.transformer_lens import hooked_transformer

    return hooked_transformer(hf_model, **processing).requires_grad_(False)


def repeat_kv(t: torch.Tensor, n_heads: int, dim: int = -2) -> torch.Tensor:
    """Grouped-query key/value heads repeated to ``n_heads`` along ``dim`` (head ``h`` uses
    key-value head ``h // (n_heads // n_kv)``, as HF's ``repeat_kv`` and TL's ``W_K`` do)."""
    return t.repeat_interleave(n_heads // t.shape[dim], dim=dim)


TL_CONFIGS: dict[str, tuple[str, Any]] = {
    "gpt2": ("convert_gpt2_weights", lambda hf, a: dict(
        act_fn="gelu_new", eps=hf.config.layer_norm_epsilon,
        positional_embedding_type="standard",
        scale_attn_by_inverse_layer_idx=hf.config.scale_attn_by_inverse_layer_idx)),
    "gpt_neox": ("convert_neox_weights", lambda hf, a: dict(
        act_fn="gelu", eps=hf.config.layer_norm_eps, positional_embedding_type="rotary",
        rotary_dim=int(a.d_head * NEOX_ROTARY_PCT), rotary_adjacent_pairs=False,
        parallel_attn_mlp=True, original_architecture="GPTNeoXForCausalLM")),
}
"""HF ``model_type`` -> (TL weight converter, TL config settings from ``(hf_model, adapter)``)
for :func:`tl_twin`'s explicit ``HookedTransformerConfig``."""
NEOX_ROTARY_PCT = 0.5
"""``rotary_pct`` of the NeoX models :func:`tl_twin` mirrors explicitly."""


def tl_twin(model):
    """The weights of a ``LoadedModel`` in a ``HookedTransformer`` (TL's default processing).

    For the model types in :data:`TL_CONFIGS` the TL config is written out here from the
    adapter's sizes (so TL's config conversion is not trusted either); the others go through
    :func:`tl_oracle`.
    """
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained import weight_conversions

    a, hf = model.adapter, model.hf_model
    if hf.config.model_type not in TL_CONFIGS:
        return tl_oracle(hf)
    converter, settings = TL_CONFIGS[hf.config.model_type]
    cfg = HookedTransformerConfig(n_layers=a.n_layers, d_model=a.d_model, n_ctx=a.n_ctx,
                                  d_head=a.d_head, n_heads=a.n_heads, d_mlp=a.d_mlp,
                                  d_vocab=a.d_vocab, normalization_type="LN", device="cpu",
                                  default_prepend_bos=False, **settings(hf, a))
    sd = getattr(weight_conversions, converter)(hf, cfg)
    with warnings.catch_warnings():  # TL 3.x deprecates HookedTransformer for its bridge
        warnings.simplefilter("ignore", DeprecationWarning)
        tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict({k: v.clone() for k, v in sd.items()})
    return tl.eval().requires_grad_(False)


class Killed(Exception):
    """A simulated kill of the process in the middle of a correlate pass."""


def kill_after(monkeypatch, n_updates: int) -> None:
    """Make ``CoMoments.update`` raise :class:`Killed` after ``n_updates`` calls."""
    from universal_neurons.engine.moments import CoMoments

    real, calls = CoMoments.update, {"n": 0}

    def update(self, batch):
        calls["n"] += 1
        if calls["n"] > n_updates:
            raise Killed
        real(self, batch)

    monkeypatch.setattr(CoMoments, "update", update)
