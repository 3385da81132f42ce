"""Tiny random HF models (GPT-2, GPT-NeoX) and their TransformerLens twins, built offline.

Imported by the intervention/entropy/attention tests; the tests here check the twins agree.
"""

from __future__ import annotations

import pytest
import torch

from helpers import NEOX_ROTARY_PCT, loaded_model, tl_twin
from universal_neurons.models.loading import LoadedModel

KINDS = ("gpt2", "neox")
VOCAB, N_CTX, BOS = 61, 24, 0
SIZES = {"n_layers": 3, "d_model": 32, "n_heads": 4, "n_kv_heads": 2, "d_mlp": 64,
         "vocab": VOCAB, "n_ctx": N_CTX}
EXTRA = {"neox": {"rotary_pct": NEOX_ROTARY_PCT, "tie_word_embeddings": False}}
"""Settings beyond the sizes, per architecture (as :data:`helpers.TL_CONFIGS` mirrors them)."""


def tiny_model(kind: str = "gpt2", seed: int = 0, n_layers: int = 3) -> LoadedModel:
    """A random 3-layer model (d_model 32, 4 heads, d_mlp 64) with perturbed norm weights."""
    return loaded_model(kind, seed=seed, perturb=0.1, **{**SIZES, "n_layers": n_layers},
                        bos_token_id=BOS, eos_token_id=BOS, **EXTRA.get(kind, {}))


def hooked_transformer(model: LoadedModel):
    """The same weights in a TransformerLens ``HookedTransformer`` (default processing)."""
    return tl_twin(model)


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
