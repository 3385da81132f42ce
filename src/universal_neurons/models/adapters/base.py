"""The architecture adapter contract and the hook-based activation capture.

An adapter wraps one Hugging Face causal LM and exposes what the rest of the package
needs in TransformerLens's terms: sizes, where the MLP neurons' pre/post-activations can
be seen (plain forward hooks on HF modules), the processed weights, and the modules an
intervention patches. Subclasses are small and declarative: module paths, config field
names and one ``raw_weights`` method; they are registered by HF ``config.model_type``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from universal_neurons.models.adapters.attention_layout import AttentionLayout, AttentionModules
from universal_neurons.models.weights import Normalization, ProcessedWeights, RawWeights

log = logging.getLogger(__name__)

Site = Literal["pre", "post"]
HookKind = Literal["output", "input"]
SITES: tuple[Site, ...] = ("pre", "post")
"""Capture sites in forward order: ``pre`` = ``blocks.{l}.mlp.hook_pre``, ``post`` = ``hook_post``."""


class _StopForward(Exception):
    """Raised by the last hook to end the forward pass once the last MLP has been seen."""


def get_module(root: nn.Module, path: str) -> nn.Module:
    """``get_module(model, 'transformer.h.3.mlp')`` (dotted path, list indices allowed)."""
    return root.get_submodule(path)


class ArchitectureAdapter:
    """One HF architecture seen through TransformerLens's names.

    Class attributes a subclass declares (module paths are relative to the HF model; in
    ``*_path`` templates ``{layer}`` is replaced by the layer index):
    """

    model_types: ClassVar[tuple[str, ...]] = ()
    """HF ``config.model_type`` values this adapter handles."""
    normalization: ClassVar[Normalization] = "LN"
    config_fields: ClassVar[dict[str, str]] = {}
    """TL size name -> HF config attribute (n_layers, d_model, d_mlp, n_heads, d_vocab, n_ctx)."""
    layer_path: ClassVar[str] = ""
    """Template of one transformer block, e.g. ``transformer.h.{layer}``."""
    hook_points: ClassVar[dict[str, tuple[str, HookKind]]] = {}
    """Site -> (module path inside the block, ``output`` | ``input``)."""
    attention_path: ClassVar[str] = ""
    """Attention module inside the block."""
    attention_layout: ClassVar[AttentionLayout | None] = None
    """Norm, q/k/v (fused or separate) and output projections of the attention, inside the
    block (what the attention analyses read and patch)."""
    final_norm_path: ClassVar[str] = ""
    """Final norm, relative to the model."""
    transformer_lens_converters: ClassVar[dict[str, str]] = {}
    """HF ``model_type`` -> TransformerLens weight converter (a function name in
    ``transformer_lens.pretrained.weight_conversions``), for the TransformerLens oracle."""

    def __init__(self, hf_model: nn.Module):
        self.model: Any = hf_model  # a transformers *ForCausalLM (attributes vary by arch)
        self.config: Any = hf_model.config
        cfg = self.config
        self.n_layers: int = int(getattr(cfg, self.config_fields["n_layers"]))
        self.d_model: int = int(getattr(cfg, self.config_fields["d_model"]))
        self.n_heads: int = int(getattr(cfg, self.config_fields["n_heads"]))
        self.d_mlp: int = self._d_mlp()
        self.d_head: int = self._d_head()
        self.n_key_value_heads: int = self._n_key_value_heads()
        self.d_vocab: int = int(getattr(cfg, self.config_fields["d_vocab"]))
        self.n_ctx: int = int(getattr(cfg, self.config_fields["n_ctx"]))
        self._check_hook_modules()

    # ---- sizes (overridable where configs differ) -------------------------------------
    def _d_mlp(self) -> int:
        return int(getattr(self.config, self.config_fields["d_mlp"]))

    def _d_head(self) -> int:
        return self.d_model // self.n_heads

    def _n_key_value_heads(self) -> int:
        return self.n_heads

    # ---- modules ----------------------------------------------------------------------
    def block(self, layer: int) -> nn.Module:
        """The HF transformer block of ``layer``."""
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"layer {layer} out of range [0, {self.n_layers})")
        return get_module(self.model, self.layer_path.format(layer=layer))

    def _hook_point(self, site: str, layer: int) -> tuple[nn.Module, HookKind]:
        path, kind = self.hook_points[site]
        return get_module(self.block(layer), path), kind

    def post_activation_hook_point(self, layer: int) -> tuple[nn.Module, HookKind]:
        """Where a forward hook (``output``) or pre-hook (``input``) sees/changes the
        neuron post-activations ``[batch, pos, d_mlp]`` of ``layer`` (TL ``hook_post``)."""
        return self._hook_point("post", layer)

    def pre_activation_hook_point(self, layer: int) -> tuple[nn.Module, HookKind]:
        """Like :meth:`post_activation_hook_point` for the pre-activations (TL ``hook_pre``)."""
        return self._hook_point("pre", layer)

    def final_norm_module(self) -> nn.Module:
        """The final LayerNorm/RMSNorm before the unembedding."""
        return get_module(self.model, self.final_norm_path)

    def attention_module(self, layer: int) -> nn.Module:
        """The attention module of ``layer`` (its output is added to the residual stream)."""
        return get_module(self.block(layer), self.attention_path)

    def attention_modules(self, layer: int) -> AttentionModules:
        """The attention's norm, projections and output modules of ``layer``, with the
        reading of per-head q/k/v (see :class:`AttentionLayout`)."""
        return AttentionModules(self, layer)

    def _check_hook_modules(self) -> None:
        for site in self.hook_points:
            mods = [self._hook_point(site, layer)[0] for layer in range(self.n_layers)]
            if len({id(m) for m in mods}) != len(mods):  # a shared module would fire per layer
                raise ValueError(f"{type(self).__name__}: the {site} hook module is shared "
                                 "between layers; hooks there cannot tell layers apart")

    # ---- activations ------------------------------------------------------------------
    def fuse_activations(self) -> int:
        """Swap activation modules that run as several elementwise kernels for fused ones
        that compute the same function to float32 rounding; returns how many were swapped.
        The base adapter has none; architectures override (GPT-2's ``gelu_new``)."""
        return 0

    def _check_sites(self, sites: Sequence[str]) -> tuple[str, ...]:
        sites = tuple(dict.fromkeys(sites))
        bad = [s for s in sites if s not in SITES]
        if bad or not sites:
            raise ValueError(f"sites must be a non-empty subset of {SITES}, got {sites}")
        return sites

    def _run_hooked(self, input_ids: Tensor, sites: tuple[str, ...], stop_after_last_mlp: bool,
                    attention_mask: Tensor | None, sink: Any) -> None:
        """Forward ``input_ids`` with hooks calling ``sink(site, layer, t: [b, pos, d_mlp])``
        at every site; the last one ends the pass when ``stop_after_last_mlp``. Hooks are
        always removed, also on errors."""
        last_site = max(sites, key=SITES.index)  # fires last in the last layer
        handles = []

        def make_hook(site: str, layer: int, kind: HookKind):
            stop = stop_after_last_mlp and layer == self.n_layers - 1 and site == last_site

            def keep(t: Tensor) -> None:
                sink(site, layer, t.detach())
                if stop:
                    raise _StopForward

            if kind == "output":
                return lambda _m, _args, out: keep(out)
            return lambda _m, args: keep(args[0])

        device = next(self.model.parameters()).device
        input_ids = input_ids.to(device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        try:
            for layer in range(self.n_layers):
                for site in sites:
                    module, kind = self._hook_point(site, layer)
                    hook = make_hook(site, layer, kind)
                    handles.append(module.register_forward_hook(hook) if kind == "output"
                                   else module.register_forward_pre_hook(hook))
            try:
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            except _StopForward:
                pass
        finally:
            for h in handles:
                h.remove()

    @torch.no_grad()
    def capture(self, input_ids: Tensor, sites: Sequence[str] = ("post",),
                stop_after_last_mlp: bool = True, attention_mask: Tensor | None = None
                ) -> dict[str, Tensor]:
        """Run the model on ``input_ids: Long[batch, pos]`` and return the MLP neurons'
        activations ``{site: Float[layers, batch, pos, d_mlp]}`` (model dtype and device;
        the inputs are moved to the model's device).

        ``sites`` is a subset of ``("pre", "post")``. With ``stop_after_last_mlp`` the
        forward pass ends as soon as the last layer's activations are captured (no final
        norm or unembedding). Hooks are always removed, also on errors.
        """
        sites = self._check_sites(sites)
        store: dict[str, list[Tensor | None]] = {s: [None] * self.n_layers for s in sites}

        def sink(site: str, layer: int, t: Tensor) -> None:
            store[site][layer] = t

        self._run_hooked(input_ids, sites, stop_after_last_mlp, attention_mask, sink)
        self._check_fired(sites, {(s, i) for s in sites for i, t in enumerate(store[s])
                                  if t is not None})
        return {s: torch.stack(store[s]) for s in sites}  # type: ignore[arg-type]

    @torch.no_grad()
    def capture_rows(self, input_ids: Tensor, keep: Tensor | None = None,
                     sites: Sequence[str] = ("post",), attention_mask: Tensor | None = None,
                     buffers: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """The kept tokens' activations as rows: ``input_ids: Long[b, pos]``, ``keep:
        Bool[b, pos]`` (None keeps all) -> ``{site: Float32[n_kept, layers * d_mlp]}`` with
        neuron index ``layer * d_mlp + j``, on the model's device.

        Equal to ``capture`` rearranged, but each layer's kept rows are copied straight into
        the output as its hook fires (no ``[layers, b, pos, d]`` stack, no permuted copy),
        and the forward pass stops after the last MLP. With ``buffers`` (site -> tensor,
        filled and grown here), the rows are written into those tensors and returned as
        views of them: a stream reuses the same memory for every batch instead of
        faulting in fresh pages, and each result is valid until the next call.
        """
        sites = self._check_sites(sites)
        device = next(self.model.parameters()).device
        d = self.d_mlp
        idx = None
        n_rows = input_ids.numel()
        if keep is not None:
            flat_keep = keep.reshape(-1).to(device)
            if not bool(flat_keep.all()):
                idx = flat_keep.nonzero().squeeze(1)
                n_rows = int(idx.numel())
        width = self.n_layers * d
        out = {}
        for s in sites:
            buf = None if buffers is None else buffers.get(s)
            if buf is None or buf.shape[0] < n_rows or buf.shape[1] != width \
                    or buf.device != device:
                buf = torch.empty(n_rows, width, dtype=torch.float32, device=device)
                if buffers is not None:
                    buffers[s] = buf
            out[s] = buf[:n_rows]
        seen: set[tuple[str, int]] = set()

        def sink(site: str, layer: int, t: Tensor) -> None:
            rows = t.reshape(-1, d)
            if idx is not None:
                rows = rows.index_select(0, idx)
            out[site][:, layer * d:(layer + 1) * d].copy_(rows)
            seen.add((site, layer))

        self._run_hooked(input_ids, sites, True, attention_mask, sink)
        self._check_fired(sites, seen)
        return out

    def _check_fired(self, sites: tuple[str, ...], seen: set[tuple[str, int]]) -> None:
        missing = [(s, i) for s in sites for i in range(self.n_layers) if (s, i) not in seen]
        if missing:
            raise RuntimeError(f"{type(self).__name__}: hooks did not fire for {missing[:4]}")

    # ---- weights ----------------------------------------------------------------------
    def raw_weights(self) -> RawWeights:
        """The model's weights in TL names/shapes, unprocessed (subclasses implement)."""
        raise NotImplementedError

    def processed_weights(self, fold_ln: bool = True, center_writing_weights: bool = True,
                          center_unembed: bool = True, fold_value_biases: bool = True
                          ) -> ProcessedWeights:
        """TransformerLens's default weight processing (float32, CPU); the model is untouched.

        ``fold_value_biases`` is on by default, as in ``HookedTransformer.from_pretrained``.
        """
        with torch.no_grad():
            raw = self.raw_weights()
        from universal_neurons.models.weights import process_weights

        return process_weights(raw, fold_ln=fold_ln, center_writing_weights=center_writing_weights,
                               center_unembed=center_unembed, fold_value_biases=fold_value_biases)

    # ---- helpers for subclasses -------------------------------------------------------
    def _stack(self, fn: Any) -> Tensor:
        """``torch.stack([fn(block(l)) for l in layers])`` as detached float32 CPU tensors."""
        return torch.stack([_f32(fn(self.block(layer))) for layer in range(self.n_layers)])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(layers={self.n_layers}, d_model={self.d_model}, "
                f"d_mlp={self.d_mlp}, heads={self.n_heads}, d_head={self.d_head}, "
                f"d_vocab={self.d_vocab}, n_ctx={self.n_ctx})")


def _f32(t: Tensor) -> Tensor:
    return t.detach().to(device="cpu", dtype=torch.float32)


def bias_or_zeros(linear: nn.Module, n: int) -> Tensor:
    """A linear layer's bias as float32, or zeros ``[n]`` if it has none."""
    b = getattr(linear, "bias", None)
    return _f32(b) if b is not None else torch.zeros(n)


__all__ = ["ArchitectureAdapter", "AttentionLayout", "AttentionModules", "ProcessedWeights", "RawWeights", "SITES", "bias_or_zeros",
           "get_module"]
