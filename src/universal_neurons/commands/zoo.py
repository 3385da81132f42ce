"""``universal-neurons zoo``: build the bundled corpus, tokenizer and model suite."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

NAME = "zoo"
HELP = "build the bundled corpus, tokenizer and small model suite (trained from several seeds)"
DESCRIPTION = """\
Re-create the bundled study material from scratch, offline:

  universal-neurons zoo corpus                 # Debian texts -> data/bundled/corpus-*.jsonl.xz
  universal-neurons zoo tokenizer --work W     # byte-level BPE on the train split
  universal-neurons zoo train --work W         # five seeds, resumable, one process each
  universal-neurons zoo export --work W        # fp16 HF folders into zoo/bundled/
  universal-neurons zoo curve --work W         # universality per training snapshot + suite card
                                               # (the trajectory stage; its run in W/curve)
  universal-neurons zoo build --work W         # corpus, tokenizer, train, export in order

Same seeds on the same machine give the same weights. See docs/zoo.md.
"""

DEFAULT_WORK = "~/.cache/universal-neurons/zoo-tiny-gpt2"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from universal_neurons.zoo.train import TrainConfig

    d = TrainConfig()
    p.add_argument("action", choices=["corpus", "tokenizer", "train", "export", "curve", "build"])
    p.add_argument("--work", default=DEFAULT_WORK,
                   help="working folder for tokenizer, token streams, checkpoints "
                   f"(default {DEFAULT_WORK})")
    p.add_argument("--corpus-dir", default=None,
                   help="corpus folder (default: the package's data/bundled)")
    p.add_argument("--out", default=None,
                   help="export: destination of the member folders (default: the package's "
                   "zoo/bundled/<suite>-x)")
    p.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary size")
    p.add_argument("--suite", default=d.suite, help="suite name; members are <suite>-a, -b, ...")
    p.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds))
    p.add_argument("--layers", type=int, default=d.n_layer)
    p.add_argument("--d-model", type=int, default=d.d_model)
    p.add_argument("--d-mlp", type=int, default=d.d_mlp)
    p.add_argument("--heads", type=int, default=d.n_head)
    p.add_argument("--n-ctx", type=int, default=d.n_ctx)
    p.add_argument("--tokens", type=int, default=d.tokens, help="training tokens per member")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--restart-at", type=int, nargs="*", default=None,
                   metavar="TOKENS", help="restart the learning-rate schedule (warm-up + "
                   "cosine) at these token counts (default: the recipe's restarts below --tokens, "
                   f"{', '.join(map(str, d.restart_tokens)) or 'none'}; none if given without "
                   "values); a longer run continues a shorter one")
    p.add_argument("--restart-lr", type=float, default=d.restart_lr,
                   help="peak learning rate after a restart")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    p.add_argument("--snapshot", type=int, default=None, metavar="TOKENS",
                   help="export: take the training snapshot at this many tokens instead of "
                   "the final weights")
    p.add_argument("--trained-on", default="",
                   help="curve: the machine that trained the suite, for the card")
    p.add_argument("--curve-tokens", type=int, default=100_000,
                   help="curve: test tokens correlated per snapshot (default 100k)")
    p.add_argument("--jobs", type=int, default=None,
                   help="member processes at once (default: one per seed)")


def _config(args: argparse.Namespace):
    from universal_neurons.zoo.train import TrainConfig

    restarts = args.restart_at
    if restarts is None:  # the recipe's restarts that fall inside this run
        restarts = [t for t in TrainConfig.restart_tokens if t < args.tokens]
    return TrainConfig(suite=args.suite, seeds=tuple(args.seeds), n_layer=args.layers,
                       d_model=args.d_model, d_mlp=args.d_mlp, n_head=args.heads,
                       n_ctx=args.n_ctx, tokens=args.tokens, batch_size=args.batch_size,
                       lr=args.lr, compile=not args.no_compile,
                       restart_tokens=tuple(restarts), restart_lr=args.restart_lr)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from universal_neurons.data.bundled import bundled_corpus_path
    from universal_neurons.models.registry import bundled_root
    from universal_neurons.zoo.card import load_cards, suite_card_markdown
    from universal_neurons.zoo.corpus import build_corpus, read_corpus
    from universal_neurons.zoo.curve import universality_curve
    from universal_neurons.zoo.export import export_member, snapshot_card
    from universal_neurons.zoo.tokenizer import train_tokenizer
    from universal_neurons.zoo.train import train_suite

    work = Path(args.work).expanduser()
    corpus_dir = (Path(args.corpus_dir) if args.corpus_dir
                  else bundled_corpus_path("train").parent)
    steps = ["corpus", "tokenizer", "train", "export"] if args.action == "build" else [args.action]
    cfg = _config(args)
    for step in steps:
        if step == "corpus":
            counts = build_corpus(corpus_dir)
            print(f"corpus written to {corpus_dir}: " + json.dumps(counts))
        elif step == "tokenizer":
            texts = [r["text"] for r in read_corpus(corpus_dir / "corpus-train.jsonl.xz")]
            tok = train_tokenizer(texts, work / "tokenizer", args.vocab_size)
            print(f"tokenizer with {len(tok)} tokens written to {work / 'tokenizer'}")
        elif step == "train":
            cards = train_suite(cfg, work, corpus_dir, jobs=args.jobs,
                                show_progress=not args.quiet)
            for c in cards:
                print(f"{c['name']}: {c['tokens_seen']:,} tokens, train loss "
                      f"{c['train_loss_ema']:.3f}, test loss {c['test_loss']:.3f}")
        elif step == "export":
            out_root = Path(args.out) if args.out else bundled_root()
            for name in cfg.member_names():
                mdir = work / "members" / name
                if args.snapshot is not None:
                    card, source = snapshot_card(cfg, mdir, args.snapshot)
                else:
                    if not (mdir / "card.json").exists():
                        raise FileNotFoundError(f"{name} has not finished training in {mdir}; "
                                                "run `universal-neurons zoo train` first")
                    card, source = json.loads((mdir / "card.json").read_text()), mdir / "final.pt"
                export_member(source, card, work / "tokenizer", out_root / name)
                print(f"exported {name} to {out_root / name}")
        elif step == "curve":
            rows = universality_curve(cfg, work, max_tokens=args.curve_tokens,
                                      progress=not args.quiet)
            (work / "curve.json").write_text(json.dumps(rows, indent=2))
            out_root = Path(args.out) if args.out else bundled_root()
            cards = load_cards(out_root, cfg.suite)
            tr = np.load(work / "train_tokens.npy", mmap_mode="r")
            p = np.bincount(tr, minlength=len(json.loads((work / "tokenizer" / "tokenizer.json")
                                                         .read_text())["model"]["vocab"]))
            p = p[p > 0] / p.sum()
            text = suite_card_markdown(cards, float(-(p * np.log(p)).sum()), rows,
                                       trained_on=args.trained_on)
            (out_root / f"{cfg.suite}.md").write_text(text)
            print(text)
    return 0
