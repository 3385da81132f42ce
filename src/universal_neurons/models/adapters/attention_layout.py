"""Where an architecture's attention pieces live, and how per-head q, k, v are read from them.

Each adapter declares an :class:`AttentionLayout` (module paths inside one block, like
TransformerLens's ``model_bridge`` component mappings with their ``qkv``/``q``/``k``/``v``/``o``
sub-modules); :class:`AttentionModules` resolves it for one layer. Code that needs the
attention layout (the attention-deactivation analyses) asks the adapter for these instead of
keeping its own table per ``model_type``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from universal_neurons.models.adapters.base import ArchitectureAdapter

Projection = Literal["q", "k", "v"]
QKVOrder = Literal["qkv_head", "head_qkv"]


@dataclass(frozen=True)
class AttentionLayout:
    """One block's attention as module paths relative to the block.

    Either ``qkv`` (one fused projection, output ``[batch, pos, 3 * heads * d_head]`` laid
    out as ``order`` says) or all of ``q``, ``k``, ``v`` (separate projections; ``k``/``v``
    have ``n_key_value_heads`` heads under grouped-query attention).
    """

    norm: str
    """The norm whose output the attention reads (its input is the residual stream)."""
    o: str
    """The output projection (input ``z: [batch, pos, heads * d_head]``)."""
    qkv: str | None = None
    """The fused q/k/v projection."""
    order: QKVOrder = "qkv_head"
    """Fused output layout: GPT-2 ``(qkv head d)``; GPT-NeoX ``(head qkv d)``."""
    q: str | None = None
    k: str | None = None
    v: str | None = None

    def __post_init__(self) -> None:
        separate = (self.q, self.k, self.v)
        fused_only = self.qkv is not None and separate == (None, None, None)
        if not fused_only and (self.qkv is not None or None in separate):
            raise ValueError(f"an attention layout has either a fused qkv projection or all of "
                             f"q, k, v; got qkv={self.qkv!r}, q/k/v={separate}")

    def projection_path(self, kind: Projection) -> str:
        """The module whose output holds the ``kind`` vectors."""
        path = self.qkv if self.qkv is not None else getattr(self, kind)
        assert path is not None  # checked in __post_init__
        return path


class AttentionModules:
    """The HF modules of one layer's attention: ``norm``, ``attn``, ``out`` and the q/k/v
    projections, with the reading of per-head vectors from the projections' outputs."""

    def __init__(self, adapter: ArchitectureAdapter, layer: int):
        layout = adapter.attention_layout
        if layout is None:
            from universal_neurons.errors import UserError

            raise UserError(f"{type(adapter).__name__} declares no attention layout, so "
                            "attention analyses cannot run on this architecture")
        block = adapter.block(layer)
        self.layer, self.layout = layer, layout
        self.n_heads, self.d_head = adapter.n_heads, adapter.d_head
        self.n_kv_heads, self.d_model = adapter.n_key_value_heads, adapter.d_model
        self.norm: nn.Module = block.get_submodule(layout.norm)
        self.attn: nn.Module = adapter.attention_module(layer)
        self.out: nn.Module = block.get_submodule(layout.o)
        self._projections = {kind: block.get_submodule(layout.projection_path(kind))
                             for kind in ("q", "k", "v")}

    @property
    def fused(self) -> bool:
        return self.layout.qkv is not None

    def projection(self, kind: Projection) -> nn.Module:
        """The module whose output holds the ``kind`` vectors (one module for all three when
        fused). Its output is pre-rotary."""
        return self._projections[kind]

    def heads(self, kind: Projection, output: Tensor) -> Tensor:
        """``projection(kind)``'s output ``[..., features]`` -> ``[..., n_heads, d_head]``;
        grouped key/value heads are repeated to ``n_heads`` (head ``h`` reads key-value head
        ``h // (n_heads // n_kv_heads)``, as HF's ``repeat_kv`` and TL's ``W_K`` do)."""
        H, d = self.n_heads, self.d_head
        i = "qkv".index(kind)
        if self.fused:
            if self.layout.order == "qkv_head":
                return output.unflatten(-1, (3, H, d))[..., i, :, :]
            return output.unflatten(-1, (H, 3, d))[..., :, i, :]
        n = H if kind == "q" else self.n_kv_heads
        x = output.unflatten(-1, (n, d))
        return x if n == H else x.repeat_interleave(H // n, dim=-2)

    def query_columns(self, head: int) -> Tensor:
        """Indices of ``head``'s query in ``projection("q")``'s output: ``Long[d_head]``."""
        d = self.d_head
        start = head * 3 * d if self.fused and self.layout.order == "head_qkv" else head * d
        return torch.arange(start, start + d)

    @torch.no_grad()
    def value_bias(self) -> Tensor:
        """The constant part of every value vector, ``[n_heads, d_head]``: the projection of
        the norm's bias (zero for RMSNorm) plus the value bias (TL folds it into ``b_O``)."""
        proj = self.projection("v")
        p = next(proj.parameters())
        beta = getattr(self.norm, "bias", None)
        x = beta.detach() if beta is not None else torch.zeros(self.d_model, dtype=p.dtype,
                                                                 device=p.device)
        return self.heads("v", proj.forward(x[None]))[0]
