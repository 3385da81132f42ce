"""Architecture adapters, chosen by the HF ``config.model_type`` through ``ADAPTERS``.

Adding an architecture = one small module declaring module paths and a ``raw_weights``
method, plus one entry in the tuple below.
"""

from __future__ import annotations

from torch import nn

from universal_neurons.errors import UserError
from universal_neurons.models.adapters.base import ArchitectureAdapter
from universal_neurons.models.adapters.gpt2 import GPT2Adapter
from universal_neurons.models.adapters.llama import LlamaAdapter
from universal_neurons.models.adapters.neox import NeoXAdapter

ADAPTERS: dict[str, type[ArchitectureAdapter]] = {
    model_type: cls
    for cls in (GPT2Adapter, NeoXAdapter, LlamaAdapter)
    for model_type in cls.model_types
}
"""HF ``model_type`` -> adapter class."""


def adapter_for(hf_model: nn.Module, name: str | None = None) -> ArchitectureAdapter:
    """The adapter for ``hf_model`` (a ``*ForCausalLM``), by its ``config.model_type``."""
    model_type = str(getattr(hf_model.config, "model_type", None))
    cls = ADAPTERS.get(model_type)
    if cls is None:
        who = f"model {name!r}" if name else "the model"
        raise UserError(f"{who} has architecture {model_type!r}, which is not supported; "
                        f"supported model types: {', '.join(sorted(ADAPTERS))}")
    return cls(hf_model)


__all__ = ["ADAPTERS", "ArchitectureAdapter", "GPT2Adapter", "LlamaAdapter", "NeoXAdapter",
           "adapter_for"]
