"""Export trained suite members as small Hugging Face folders (fp16 safetensors + tokenizer)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_member_state(path: str | Path) -> dict:
    """Weights of a member from ``final.pt``/``state.pt`` or a training snapshot folder."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_dir():
        state = load_file(str(path / "model.safetensors"))
        state["lm_head.weight"] = state["transformer.wte.weight"]  # tied
        return {k: v.float() for k, v in state.items()}
    return torch.load(path, weights_only=True)["model"]


def export_member(state_path: str | Path, card: dict, tokenizer_dir: str | Path,
                  out_dir: str | Path) -> Path:
    """Write one member as an HF folder with fp16 weights, tokenizer files and its card.

    ``state_path`` is a training checkpoint (``final.pt``) or a snapshot folder.
    """
    import torch

    from .train import TrainConfig, build_model

    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                              for k, v in card["config"].items()}
    fields.setdefault("restart_tokens", ())  # cards written before restarts existed had none
    cfg = TrainConfig(**fields)
    tok_files = [Path(tokenizer_dir) / f for f in TOKENIZER_FILES
                 if (Path(tokenizer_dir) / f).exists()]
    state = load_member_state(state_path)
    model = build_model(cfg, state["transformer.wte.weight"].shape[0], 0, card["seed"])
    model.load_state_dict(state)
    model = model.to(torch.float16)
    model.config.n_ctx = cfg.n_ctx  # read by TransformerLens's config conversion
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    for f in tok_files:
        shutil.copy(f, tmp / f.name)
    (tmp / "card.json").write_text(json.dumps(card, indent=2))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    log.info("exported %s to %s", card["name"], out)
    return out


def snapshot_card(cfg, member_dir: str | Path, tokens: int) -> tuple[dict, Path]:
    """Card and weights folder of a member's training snapshot at ``tokens`` tokens."""
    from dataclasses import asdict

    import torch

    mdir = Path(member_dir)
    snap = mdir / "snapshots" / f"tokens-{tokens}"
    if not (snap / "model.safetensors").exists():
        have = sorted(p.name for p in (mdir / "snapshots").glob("tokens-*"))
        raise FileNotFoundError(f"no snapshot at {tokens} tokens in {mdir}; have {have}")
    state = torch.load(mdir / "state.pt", weights_only=True)
    history = json.loads(state["history"])
    row: dict[str, Any] = next((h for h in history if h["tokens"] == tokens), {})
    name = mdir.name
    index = cfg.member_names().index(name)
    card = {"name": name, "suite": cfg.suite, "seed": cfg.seeds[index], "config": asdict(cfg),
            "tokens_seen": tokens, "train_loss_ema": row.get("train_loss_ema", float("nan")),
            "test_loss": row.get("test_loss", float("nan")),
            "history": [h for h in history if h["tokens"] <= tokens],
            "note": f"snapshot at {tokens} of {cfg.tokens} planned training tokens "
                    "(learning rate not yet decayed)"}
    return card, snap
