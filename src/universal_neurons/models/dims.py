"""Model dimensions without weights: enough to plan a run before anything is downloaded.

:func:`model_dims` reads ``config.json`` of a local or bundled model (or one in the local
Hugging Face cache) and knows the published configurations of the registry's aliases
(GPT-2, the Stanford GPT-2 seeds, Pythia and its PolyPythias seeds), so that
``universal-neurons plan --models stanford-gpt2-medium`` works offline.
Nothing here imports torch or transformers, and nothing touches the network.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from universal_neurons.errors import UserError
from universal_neurons.models.registry import resolve_spec


@dataclass(frozen=True)
class ModelDims:
    """The shape of a transformer, as far as planning and cost estimates need it."""

    n_layers: int
    d_model: int
    d_mlp: int
    n_heads: int
    d_vocab: int
    n_ctx: int
    gated: bool = False
    """Gated MLP (Llama-style): three MLP matrices instead of two."""
    tied_embeddings: bool = True

    @property
    def n_params(self) -> int:
        """Parameters, biases and norms left out (within a few percent of the true count)."""
        d, f = self.d_model, self.d_mlp
        block = 4 * d * d + (3 if self.gated else 2) * d * f
        embed = self.d_vocab * d * (1 if self.tied_embeddings else 2)
        return self.n_layers * block + embed + self.n_ctx * d

    @property
    def forward_flops_per_token(self) -> int:
        """Multiply-adds of one forward pass per token, times 2 (matmuls only; attention
        scores at an average context of ``n_ctx / 2``; the unembedding excluded, since the
        engine stops after the last MLP)."""
        d = self.d_model
        per_layer = 2 * (4 * d * d + (3 if self.gated else 2) * d * self.d_mlp)
        attention = 2 * 2 * d * (self.n_ctx // 2)
        return self.n_layers * (per_layer + attention)


GPT2_SIZES = {"small": (12, 768, 12), "medium": (24, 1024, 16), "large": (36, 1280, 20),
              "xl": (48, 1600, 25)}
"""n_layers, d_model, n_heads of OpenAI's GPT-2 sizes (the Stanford seeds share them)."""
PYTHIA_SIZES = {"14m": (6, 128, 4), "31m": (6, 256, 8), "70m": (6, 512, 8),
                "160m": (12, 768, 12), "410m": (24, 1024, 16)}
"""n_layers, d_model, n_heads of the Pythia sizes (d_mlp = 4 d_model, vocab 50304)."""


def _gpt2(size: str) -> ModelDims:
    layers, d, heads = GPT2_SIZES[size]
    return ModelDims(layers, d, 4 * d, heads, 50257, 1024)


def known_dims(name: str) -> ModelDims | None:
    """Published dimensions of an alias (``@revision`` ignored), or None."""
    base = name.split("@")[0]
    m = re.fullmatch(r"stanford-gpt2-(small|medium)-[a-e]", base)
    if m:
        return _gpt2(m.group(1))
    if base in ("gpt2", "distilgpt2"):
        return _gpt2("small") if base == "gpt2" else ModelDims(6, 768, 3072, 12, 50257, 1024)
    m = re.fullmatch(r"gpt2-(medium|large|xl)", base)
    if m:
        return _gpt2(m.group(1))
    m = re.fullmatch(r"pythia-(\d+m)(?:-seed\d+)?", base)
    if m and m.group(1) in PYTHIA_SIZES:
        layers, d, heads = PYTHIA_SIZES[m.group(1)]
        return ModelDims(layers, d, 4 * d, heads, 50304, 2048, tied_embeddings=False)
    return None


def dims_from_config(cfg: dict) -> ModelDims:
    """Dimensions from a Hugging Face ``config.json`` (GPT-2, GPT-NeoX, Llama-style)."""
    if "n_layer" in cfg:  # GPT-2
        d = int(cfg["n_embd"])
        return ModelDims(int(cfg["n_layer"]), d, int(cfg.get("n_inner") or 4 * d),
                         int(cfg["n_head"]), int(cfg["vocab_size"]), int(cfg["n_positions"]))
    try:
        gated = cfg.get("model_type") not in ("gpt_neox",)
        return ModelDims(int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]),
                         int(cfg["intermediate_size"]), int(cfg["num_attention_heads"]),
                         int(cfg["vocab_size"]), int(cfg.get("max_position_embeddings", 2048)),
                         gated=gated, tied_embeddings=bool(cfg.get("tie_word_embeddings", False)))
    except KeyError as e:
        raise UserError(f"config of model type {cfg.get('model_type')!r} has no {e}; "
                        "planning knows GPT-2, GPT-NeoX and Llama-style configs") from None


def model_dims(spec: str) -> ModelDims:
    """Dimensions of one model spec, from a local ``config.json``, the published
    configuration of an alias, or the local Hugging Face cache (never downloads)."""
    r = resolve_spec(spec)
    if r.kind in ("local", "bundled"):
        path = Path(r.location) / "config.json"
        if not path.is_file():
            raise UserError(f"{spec!r}: {path} does not exist; pass a folder written by "
                            "save_pretrained()")
        return dims_from_config(json.loads(path.read_text()))
    known = known_dims(r.spec)
    if known is not None:
        return known
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(r.location, "config.json", revision=r.revision)
    except Exception:
        cached = None
    if isinstance(cached, str):
        return dims_from_config(json.loads(Path(cached).read_text()))
    raise UserError(f"the dimensions of {spec!r} are unknown offline: it is not a known alias "
                    "and its config.json is not in the local Hugging Face cache; pass a "
                    "local folder, or download the config once")
