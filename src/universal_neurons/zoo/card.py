"""The bundled suite's model card (``zoo/bundled/<suite>.md``) from member cards and curves."""

from __future__ import annotations

import json
from pathlib import Path


def load_cards(root: str | Path, suite: str) -> list[dict]:
    """The ``card.json`` of every exported member ``<suite>-x`` under ``root``, in order."""
    paths = sorted(Path(root).glob(f"{suite}-?/card.json"))
    return [json.loads(p.read_text()) for p in paths]


def suite_card_markdown(cards: list[dict], unigram_entropy: float | None = None,
                        curve: list[dict] | None = None, trained_on: str = "") -> str:
    """Render the suite card: architecture, per-seed losses, universality over training."""
    if not cards:
        raise ValueError("no member cards to describe")
    c0 = cards[0]["config"]
    suite = cards[0]["suite"]
    lines = [
        f"# Model card: `{suite}`",
        "",
        f"{len(cards)} GPT-2 models (Hugging Face `GPT2LMHeadModel`) that differ only in their "
        "seed (weight initialisation and order of training windows). Trained on the bundled "
        "corpus (see `data/bundled/NOTICE.txt`) with the bundled byte-level BPE tokenizer."
        + (f" Trained on: {trained_on}." if trained_on else ""),
        "",
        "| setting | value |",
        "| --- | --- |",
        f"| layers | {c0['n_layer']} |",
        f"| d_model / heads | {c0['d_model']} / {c0['n_head']} |",
        f"| neurons per layer (d_mlp) | {c0['d_mlp']} |",
        f"| context | {c0['n_ctx']} |",
        f"| training tokens planned per model | {c0['tokens']:,} |",
        f"| batch | {c0['batch_size']} x {c0['n_ctx']} tokens |",
        f"| optimiser | AdamW lr {c0['lr']}, warm-up {c0['warmup_steps']} steps, cosine to "
        f"{c0['min_lr_ratio']}x, weight decay {c0['weight_decay']}, clip {c0['grad_clip']} |",
        *([f"| learning-rate restarts | at {', '.join(f'{t:,}' for t in c0['restart_tokens'])} "
            f"tokens: warm-up to {c0['restart_lr']}, cosine to {c0['min_lr_ratio']}x |"]
          if c0.get("restart_tokens") else []),
        f"| precision | {'bf16 autocast' if c0['autocast_bf16'] else 'fp32'}; shipped as fp16 |",
        "",
        "## Losses (nats per token)",
        "",
        "| member | seed | tokens | train loss (EMA) | test loss |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in cards:
        lines.append(f"| `{c['name']}` | {c['seed']} | {c['tokens_seen']:,} | "
                     f"{c['train_loss_ema']:.3f} | {c['test_loss']:.3f} |")
    tests = [c["test_loss"] for c in cards]
    spread = (max(tests) - min(tests)) / min(tests) * 100
    lines += ["", f"Test losses agree within {spread:.1f}% (max-min over min)."]
    if unigram_entropy is not None:
        lines.append(f"The corpus's unigram entropy is {unigram_entropy:.3f} nats: every model "
                     "learned far more than token frequencies.")
    if curve:
        lines += ["", "## Universality over training", "",
                  "Excess correlation of every neuron of member a against members b-e at the same "
                  f"number of training tokens (first {curve[0].get('eval_tokens', 0):,} tokens of "
                  "the bundled test split; Haar-rotation baseline). The last row is the shipped "
                  "weights.", "",
                  "| tokens | mean test loss | median excess | share excess > 0.3 | "
                  "share excess > 0.5 | best excess |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in curve:
            lines.append(f"| {row['tokens']:,} | {row.get('test_loss', float('nan')):.3f} | "
                         f"{row['median_excess']:.3f} | {100 * row['share_0.3']:.2f}% | "
                         f"{100 * row['share_0.5']:.2f}% | {row['max_excess']:.3f} |")
    return "\n".join(lines) + "\n"
