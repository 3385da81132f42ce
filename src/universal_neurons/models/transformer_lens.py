"""A TransformerLens ``HookedTransformer`` built offline from a loaded Hugging Face model.

TransformerLens is the field's reference implementation: tests use it as the oracle for
activations and processed weights, and the correlation benchmark runs the paper code's
forward passes through it (``run_with_hooks``), as that code does. Built with
TransformerLens's own config conversion and weight converters, so nothing of ours is
checked against itself; no download (the tokenizer is not attached).
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Any

CONVERTERS = {"gpt2": "convert_gpt2_weights", "gpt_neox": "convert_neox_weights",
              "llama": "convert_llama_weights", "qwen2": "convert_qwen2_weights"}
"""HF ``model_type`` -> TransformerLens weight converter (``transformer_lens.pretrained.
weight_conversions``)."""


def hooked_transformer(hf_model: Any, fold_ln: bool = True, center_writing_weights: bool = True,
                       center_unembed: bool = True, **processing: Any) -> Any:
    """``HookedTransformer`` with ``hf_model``'s weights, processed like
    ``HookedTransformer.from_pretrained`` (its defaults), in eval mode on the CPU.

    Needs a TransformerLens that still has ``HookedTransformer`` (3.x; 4.x removed it).
    """
    try:
        from transformer_lens import HookedTransformer
        from transformer_lens.loading_from_pretrained import get_pretrained_model_config
        from transformer_lens.pretrained import weight_conversions
    except ImportError as err:
        raise ImportError("TransformerLens's HookedTransformer is needed (transformer-lens 3.x; "
                          f"4.x removed it): {err}") from err
    model_type = hf_model.config.model_type
    if model_type not in CONVERTERS:
        raise ValueError(f"no TransformerLens converter for model_type {model_type!r}; "
                         f"known: {sorted(CONVERTERS)}")
    with tempfile.TemporaryDirectory() as cfg_dir:
        hf_model.config.save_pretrained(cfg_dir)  # TL reads config.json from a folder
        cfg = get_pretrained_model_config(cfg_dir, fold_ln=False, device="cpu")
    if model_type == "gpt2":  # TL assumes d_mlp = 4 d_model for GPT-2
        cfg.d_mlp = hf_model.config.n_inner or 4 * cfg.d_model
    cfg.tokenizer_name = None  # no tokenizer download
    with warnings.catch_warnings():  # "HookedTransformer is deprecated" (TL 3.x)
        warnings.simplefilter("ignore", DeprecationWarning)
        tl = HookedTransformer(cfg)
    state = getattr(weight_conversions, CONVERTERS[model_type])(hf_model, cfg)
    tl.load_and_process_state_dict({k: v.detach().clone() for k, v in state.items()},
                                   fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                   center_unembed=center_unembed, **processing)
    return tl.eval()
