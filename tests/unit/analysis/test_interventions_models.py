"""Tiny random HF models (GPT-2, GPT-NeoX) and their TransformerLens twins, built offline.

Imported by the intervention/entropy/attention tests; the tests here check the twins agree.
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch

from universal_neurons.models.adapters import adapter_for
from universal_neurons.models.loading import LoadedModel

KINDS = ("gpt2", "neox")
VOCAB, N_CTX, BOS = 61, 24, 0


def tiny_model(kind: str = "gpt2", seed: int = 0, n_layers: int = 3) -> LoadedModel:
    """A random 3-layer model (d_model 32, 4 heads, d_mlp 64) with perturbed LN weights."""
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = GPT2Config(n_layer=n_layers, n_embd=32, n_head=4, n_inner=64, vocab_size=VOCAB,
                         n_positions=N_CTX, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         bos_token_id=BOS, eos_token_id=BOS)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = GPTNeoXConfig(num_hidden_layers=n_layers, hidden_size=32, num_attention_heads=4,
                            intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=N_CTX,
                            rotary_pct=0.5, bos_token_id=BOS, eos_token_id=BOS,
                            hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False)
        model = GPTNeoXForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():  # LN weights/biases away from 1/0, larger biases
            p.add_(0.1 * torch.randn_like(p))
    model.eval().requires_grad_(False)
    tok = types.SimpleNamespace(bos_token_id=BOS, eos_token_id=BOS)
    return LoadedModel(name=f"tiny-{kind}", spec=kind, source="local", location="", revision=None,
                       hf_model=model, tokenizer=tok, adapter=adapter_for(model))


def hooked_transformer(model: LoadedModel):
    """The same weights in a TransformerLens ``HookedTransformer`` (default processing)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import (
        convert_gpt2_weights,
        convert_neox_weights,
    )

    a, hf = model.adapter, model.hf_model
    common = dict(n_layers=a.n_layers, d_model=a.d_model, n_ctx=a.n_ctx, d_head=a.d_head,
                  n_heads=a.n_heads, d_mlp=a.d_mlp, d_vocab=a.d_vocab, normalization_type="LN",
                  device="cpu", default_prepend_bos=False)
    if hf.config.model_type == "gpt2":
        cfg = HookedTransformerConfig(**common, act_fn="gelu_new", eps=hf.config.layer_norm_epsilon,
                                      positional_embedding_type="standard")
        sd = convert_gpt2_weights(hf, cfg)
    else:
        cfg = HookedTransformerConfig(**common, act_fn="gelu", eps=hf.config.layer_norm_eps,
                                      positional_embedding_type="rotary",
                                      rotary_dim=int(a.d_head * 0.5), rotary_adjacent_pairs=False,
                                      parallel_attn_mlp=True, original_architecture="GPTNeoXForCausalLM")
        sd = convert_neox_weights(hf, cfg)
    with warnings.catch_warnings():  # TL 3.x deprecates HookedTransformer for its bridge
        warnings.simplefilter("ignore", DeprecationWarning)
        tl = HookedTransformer(cfg)
    tl.load_and_process_state_dict({k: v.clone() for k, v in sd.items()})
    return tl.eval().requires_grad_(False)


def random_tokens(n_seq: int = 4, n_ctx: int = 16, seed: int = 0) -> torch.Tensor:
    """``Long[n_seq, n_ctx]`` with BOS in column 0."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(1, VOCAB, (n_seq, n_ctx), generator=g)
    t[:, 0] = BOS
    return t


@pytest.mark.parametrize("kind", KINDS)
def test_transformer_lens_twin_matches(kind):
    m = tiny_model(kind)
    tl = hooked_transformer(m)
    ids = random_tokens()
    with torch.no_grad():
        hf_logits = m.hf_model(ids).logits
        tl_logits = tl(ids)
    # center_unembed shifts logits by a per-position constant
    torch.testing.assert_close(torch.log_softmax(tl_logits, -1), torch.log_softmax(hf_logits, -1),
                               atol=1e-4, rtol=1e-4)


WORDS = ("the cat dog sat ran on a mat red blue big small old new fox bird tree house river "
         "stone light dark day night").split()


def saved_model(tmp_path, kind: str = "gpt2", n_ctx: int = 16, n_seq: int = 8):
    """A tiny model + trained byte-level BPE tokenizer saved as an HF folder, and a token
    dataset for it: ``(model folder, dataset folder)``."""
    import json

    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from universal_neurons.data.dataset import build_token_dataset

    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(WORDS, size=int(rng.integers(5, 30)))) for _ in range(60)]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(docs, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    m = tiny_model(kind)
    m.hf_model.resize_token_embeddings(len(tok))
    folder = tmp_path / f"model-{kind}"
    m.hf_model.save_pretrained(folder)
    tok.save_pretrained(folder)
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    ds = build_token_dataset(corpus, tok, tmp_path / "tokens", n_ctx=n_ctx, tokens=n_seq * n_ctx,
                             show_progress=False)
    return folder, ds.path
