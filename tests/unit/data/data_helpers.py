"""Helpers for the data-layer tests: documents, a tiny tokenizer, an oracle tokenization."""

from __future__ import annotations

import numpy as np

EOT = "<|endoftext|>"
WORDS = ("the cat dog sat ran on a mat rug red blue big small old new quick slow fox bird "
         "tree house river stone light dark day night").split()


def make_documents(n: int = 40, seed: int = 0) -> list[str]:
    """Documents of varied length with single and double newlines."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        lines = []
        for _ in range(int(rng.integers(1, 5))):
            words = rng.choice(WORDS, size=int(rng.integers(3, 12)))
            lines.append(" ".join(words).capitalize() + ".")
        sep = "\n\n" if i % 3 == 0 else "\n"
        docs.append(f"Doc {i}. " + sep.join(lines))
    return docs


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE, ``<|endoftext|>`` = id 0 = BOS/EOS/pad/unk; returns (HF fast, raw)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=EOT, eos_token=EOT,
                                   unk_token=EOT, pad_token=EOT)
    return fast, raw


def oracle_stream(raw, docs: list[str], eos: int = 0) -> np.ndarray:
    """Documents tokenized one by one, joined with EOS."""
    out: list[int] = []
    for i, d in enumerate(docs):
        if i:
            out.append(eos)
        out.extend(raw.encode(d).ids)
    return np.array(out, dtype=np.int64)
