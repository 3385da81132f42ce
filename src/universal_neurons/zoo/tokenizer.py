"""Train a GPT-2 style byte-level BPE tokenizer on the bundled corpus."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 4096):
    """Train byte-level BPE with ``<|endoftext|>`` (id 0) as BOS/EOS/pad; save HF files.

    Returns the ``PreTrainedTokenizerFast``. ``AutoTokenizer.from_pretrained(out_dir)``
    loads it back.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if not 512 <= vocab_size <= 65535:
        raise ValueError(f"vocab_size={vocab_size} must lie in [512, 65535]")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT, pad_token=EOT,
        model_max_length=1024,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    log.info("tokenizer with %d tokens saved to %s", len(fast), out)
    return fast
