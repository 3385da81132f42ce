"""Builders for tiny random HF models, tiny tokenizers and TransformerLens oracles.

Nothing here touches the network (conftest.py forces the hub offline for these tests).
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 80  # != d_model: TL's shape heuristics misfold a square W_U (d_vocab == d_model)
ARCHS = ("gpt2", "neox", "llama", "qwen2")


def hf_config(arch: str, vocab: int = VOCAB):
    """A 2-layer, d_model 64 config of ``arch`` (sizes chosen to expose layout mistakes:
    d_mlp != 4 d_model, GQA with 2 key-value heads for 4 query heads)."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    common = {"vocab_size": vocab}
    if arch == "gpt2":  # n_ctx is in real GPT-2 configs and TransformerLens reads it
        return GPT2Config(n_layer=2, n_embd=64, n_head=4, n_inner=96, n_positions=32, n_ctx=32,
                          scale_attn_by_inverse_layer_idx=True, bos_token_id=0, eos_token_id=0,
                          architectures=["GPT2LMHeadModel"], **common)
    if arch == "neox":  # Pythia-style: parallel residual, partial rotary
        return GPTNeoXConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                             intermediate_size=96, max_position_embeddings=32,
                             use_parallel_residual=True, architectures=["GPTNeoXForCausalLM"],
                             **common)
    if arch == "llama":
        return LlamaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=96,
                           max_position_embeddings=32, architectures=["LlamaForCausalLM"],
                           **common)
    if arch == "qwen2":  # llama layout plus q/k/v biases
        return Qwen2Config(num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=96,
                           max_position_embeddings=32, architectures=["Qwen2ForCausalLM"],
                           **common)
    raise KeyError(arch)


def tiny_model(arch: str, vocab: int = VOCAB, seed: int = 0):
    """A random tiny ``*ForCausalLM`` in eval mode; every parameter (norm scales and all
    biases included) is perturbed so that no folding step can pass by accident."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch, vocab)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


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


def save_model_folder(path: Path, arch: str = "gpt2", tokenizer=None, seed: int = 0) -> Path:
    """Write a loadable HF folder (config, safetensors, tokenizer) to ``path``."""
    model = tiny_model(arch, seed=seed)
    model.save_pretrained(path, safe_serialization=True)
    (tokenizer or tiny_tokenizer()).save_pretrained(path)
    return path


def tl_oracle(hf_model, cfg_dir: Path, **processing):
    """A ``HookedTransformer`` built offline from ``hf_model`` with TransformerLens's own
    config conversion and weight converters, processed with ``processing`` flags
    (``cfg_dir`` is unused: kept for the callers' signature)."""
    from universal_neurons.models.transformer_lens import hooked_transformer

    return hooked_transformer(hf_model, **processing)
