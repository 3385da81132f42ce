"""Export trained suite members as small Hugging Face folders (fp16 safetensors + tokenizer)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def bundled_root() -> Path:
    """Folder of the bundled suites inside the installed package."""
    return Path(__file__).resolve().parent / "bundled"


def export_member(state_path: str | Path, card: dict, tokenizer_dir: str | Path,
                  out_dir: str | Path) -> Path:
    """Write one member as an HF folder with fp16 weights, tokenizer files and its card."""
    import torch

    from .train import TrainConfig, build_model

    cfg = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v
                         for k, v in card["config"].items()})
    tok_files = [Path(tokenizer_dir) / f for f in TOKENIZER_FILES
                 if (Path(tokenizer_dir) / f).exists()]
    state = torch.load(state_path, weights_only=True)["model"]
    model = build_model(cfg, state["transformer.wte.weight"].shape[0], 0, card["seed"])
    model.load_state_dict(state)
    model = model.to(torch.float16)
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
