"""``universal-neurons tokenize``: turn a text corpus into a memory-mapped token dataset."""

from __future__ import annotations

import argparse

from universal_neurons.commands._args import count as _count

NAME = "tokenize"
HELP = "tokenize a corpus into windows of n_ctx tokens (BOS first) for later stages"
EOT = "<|endoftext|>"
DESCRIPTION = """\
Tokenize a corpus into a token dataset folder (tokens.npy + meta.json): documents are
shuffled (--seed), joined with EOS and cut into windows of n_ctx tokens, BOS first.

SOURCE is one of
  bundled:test | bundled:train       the packaged corpus
  FILE                               .txt (one document; see --split-docs), .jsonl/.ndjson
                                     (optionally .gz/.xz; field --text-field), .parquet
  FOLDER                             a save_to_disk dataset (FOLDER@SPLIT picks a split),
                                     or every supported file below it
  hf:NAME[:CONFIG][@SPLIT]           a Hugging Face hub dataset, streamed (needs a network)

examples:
  universal-neurons tokenize bundled:test --model tiny-gpt2-a --out data/bundled-test
  universal-neurons tokenize pile-test.jsonl.xz --model stanford-gpt2-small-a \\
      --tokens 100M --out data/pile-100M
"""




def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SOURCE", help="corpus to tokenize (see above)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", metavar="M", help="use this model's tokenizer (alias, HF id or folder)")
    who.add_argument("--tokenizer", metavar="PATH",
                     help="a tokenizer folder, tokenizer.json file or HF id")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write the dataset to")
    p.add_argument("--n-ctx", type=int, default=512, help="tokens per window, BOS included (default 512)")
    p.add_argument("--tokens", type=_count, default=None, metavar="N",
                   help="total tokens to keep, e.g. 1M or 100M (default: the whole corpus)")
    p.add_argument("--seed", type=int, default=0, help="seed of the document shuffle (default 0)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the source's document order")
    p.add_argument("--text-field", default="text", help="JSON field / column holding the text")
    p.add_argument("--split-docs", metavar="DELIM", default=None,
                   help="split each text into documents on DELIM (\\n and \\t escapes allowed)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")


def load_tokenizer(path: str):
    """A tokenizer from a folder, a ``tokenizer.json`` file or a hub id.

    A bare ``tokenizer.json`` does not say which token is BOS/EOS: ``<|endoftext|>`` is
    taken for both when present.
    """
    from pathlib import Path

    from universal_neurons.errors import UserError

    p = Path(path)
    try:
        if p.is_file() and not (p.parent / "tokenizer_config.json").exists():
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast(tokenizer_file=str(p))
            if EOT in tok.get_vocab():  # GPT-2 convention, as its tokenizer_config.json says
                tok.bos_token = tok.eos_token = tok.unk_token = EOT
            return tok
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(p.parent if p.is_file() else path))
    except Exception as e:
        raise UserError(f"cannot load tokenizer {path!r} ({type(e).__name__}: "
                        f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}); pass a "
                        "tokenizer folder or tokenizer.json, or use --model") from None


def _model_tokenizer(spec: str):
    from universal_neurons.models import loading

    if hasattr(loading, "load_tokenizer"):
        return loading.load_tokenizer(spec)
    return loading.load_model(spec).tokenizer


def run(args: argparse.Namespace) -> int:
    from universal_neurons.data.dataset import build_token_dataset

    tokenizer = _model_tokenizer(args.model) if args.model else load_tokenizer(args.tokenizer)
    delim = args.split_docs.replace("\\n", "\n").replace("\\t", "\t") if args.split_docs else None
    ds = build_token_dataset(
        args.source, tokenizer, args.out, n_ctx=args.n_ctx, tokens=args.tokens, seed=args.seed,
        shuffle_docs=not args.no_shuffle, show_progress=not args.quiet,
        text_field=args.text_field, split_docs=delim,
        tokenizer_name=args.model or args.tokenizer, overwrite=args.overwrite)
    print(f"{ds.path}: {ds.n_seq:,} sequences x {ds.n_ctx} = {ds.n_tokens:,} tokens "
          f"({ds.tokens.dtype}) from {ds.meta['source']}, tokenizer {ds.meta['tokenizer']} "
          f"[{ds.fingerprint[:12]}]")
    return 0
