"""A TransformerLens ``HookedTransformer`` built offline from a loaded Hugging Face model.

TransformerLens is the field's reference implementation: tests use it as the oracle for
activations and processed weights, and the correlation benchmark runs the paper code's
forward passes through it (``run_with_hooks``), as that code does. Built with
TransformerLens's own config conversion and weight converters, so nothing of ours is
checked against itself; no download (the tokenizer is not attached). Which converter fits
a model is declared by its architecture adapter (``transformer_lens_converters``).
"""

from __future__ import annotations

import tempfile
import warnings
from typing import Any


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
    from universal_neurons.models.adapters import ADAPTERS, adapter_for

    adapter = adapter_for(hf_model)
    model_type = hf_model.config.model_type
    converter = adapter.transformer_lens_converters.get(model_type)
    if converter is None:
        known = sorted(t for cls in ADAPTERS.values() for t in cls.transformer_lens_converters)
        raise ValueError(f"no TransformerLens converter for model_type {model_type!r}; "
                         f"known: {known}")
    with tempfile.TemporaryDirectory() as cfg_dir:
        hf_model.config.save_pretrained(cfg_dir)  # TL reads config.json from a folder
        cfg = get_pretrained_model_config(cfg_dir, fold_ln=False, device="cpu")
    cfg.d_mlp = adapter.d_mlp  # TL assumes d_mlp = 4 d_model for GPT-2 (n_inner ignored)
    cfg.tokenizer_name = None  # no tokenizer download
    with warnings.catch_warnings():  # "HookedTransformer is deprecated" (TL 3.x)
        warnings.simplefilter("ignore", DeprecationWarning)
        tl = HookedTransformer(cfg)
    state = getattr(weight_conversions, converter)(hf_model, cfg)
    tl.load_and_process_state_dict({k: v.detach().clone() for k, v in state.items()},
                                   fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                                   center_unembed=center_unembed, **processing)
    return tl.eval()
