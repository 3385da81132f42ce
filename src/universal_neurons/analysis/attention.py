"""Attention-deactivation neurons (Gurnee et al. 2024, §5.3).

Three measurements:

* **Heuristic score** of every (neuron, later head) pair, from weights and one forward pass
  of the BOS token: ``h = w_out · W_Q^h · k_BOS / sqrt(d_head)`` (TransformerLens-processed
  ``W_out``/``W_Q``; ``k_BOS`` = the head's key of BOS at position 0, bias included, where
  rotary is the identity). A large positive h means the neuron, when it fires, pushes the
  head's query towards the BOS key (the head attends to BOS = is switched off). The
  baseline replaces each ``w_out`` by a random direction of the same norm.
* **Path ablation** of one neuron's contribution to ONE head's query: the head's query is
  computed from ``norm(resid - a * w_out)`` while its keys/values and every other head see
  ``norm(resid)`` (see :func:`query_path_ablation`). Measured per token: the change in the
  head's attention to BOS and in the norm of its output, correlated (Pearson, streamed
  over the whole dataset) with the neuron's activation ``a``.
* **BOS value norms**: per head, ``|v_BOS W_O^h|`` against the mean ``|v_t W_O^h|`` of the
  other tokens (paper: 19.4x smaller for the median head).

Values and head outputs follow TransformerLens's processed weights (value biases folded
into ``b_O``): ``v`` excludes the value bias, ``W_O`` is centred. The attention modules are
reached through a small per-architecture table (:data:`LAYOUTS`); GPT-2 and GPT-NeoX.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from universal_neurons.constants import neuron_name
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- module layout


@dataclass(frozen=True)
class QKVLayout:
    """Where one block's attention pieces live (paths relative to the block)."""

    norm: str
    """The norm whose output the attention reads (its input is the residual stream)."""
    qkv: str
    """The fused q/k/v projection (output ``[batch, pos, 3 * heads * d_head]``)."""
    out: str
    """The output projection (input ``z: [batch, pos, heads * d_head]``)."""
    order: Literal["qkv_head", "head_qkv"]
    """Fused output layout: GPT-2 ``(qkv head d)``; GPT-NeoX ``(head qkv d)``."""


LAYOUTS: dict[str, QKVLayout] = {
    "gpt2": QKVLayout("ln_1", "attn.c_attn", "attn.c_proj", "qkv_head"),
    "gpt_neox": QKVLayout("input_layernorm", "attention.query_key_value", "attention.dense",
                          "head_qkv"),
}
"""HF ``model_type`` -> layout. (Candidates for the adapter contract.)"""


class AttentionSites:
    """The HF modules of one layer's attention: ``norm``, ``attn``, ``qkv``, ``out``."""

    def __init__(self, adapter: Any, layer: int):
        model_type = str(getattr(adapter.model.config, "model_type", None))
        layout = LAYOUTS.get(model_type)
        if layout is None:
            raise UserError(f"attention analyses do not support model type {model_type!r} yet; "
                            f"supported: {', '.join(sorted(LAYOUTS))}")
        block = adapter.block(layer)
        self.layer, self.layout = layer, layout
        self.n_heads, self.d_head = adapter.n_heads, adapter.d_head
        self.norm: nn.Module = block.get_submodule(layout.norm)
        self.attn: nn.Module = adapter.attention_module(layer)
        self.qkv: nn.Module = block.get_submodule(layout.qkv)
        self.out: nn.Module = block.get_submodule(layout.out)

    def split(self, fused: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[..., 3 * heads * d_head]`` -> q, k, v, each ``[..., heads, d_head]`` (pre-rotary)."""
        H, d = self.n_heads, self.d_head
        if self.layout.order == "qkv_head":
            x = fused.unflatten(-1, (3, H, d))
            return x[..., 0, :, :], x[..., 1, :, :], x[..., 2, :, :]
        x = fused.unflatten(-1, (H, 3, d))
        return x[..., 0, :], x[..., 1, :], x[..., 2, :]

    def query_columns(self, head: int) -> Tensor:
        """Indices of ``head``'s query in the fused output: ``Long[d_head]``."""
        d = self.d_head
        start = head * d if self.layout.order == "qkv_head" else head * 3 * d
        return torch.arange(start, start + d)

    @torch.no_grad()
    def value_bias(self) -> Tensor:
        """The constant part of every value vector, ``[heads, d_head]``: the projection of
        the norm's bias (zero for RMSNorm) plus the value bias (TL folds it into ``b_O``)."""
        p = next(self.qkv.parameters())
        d_model = p.shape[0] if self.layout.order == "qkv_head" else p.shape[1]
        beta = getattr(self.norm, "bias", None)
        x = beta.detach() if beta is not None else torch.zeros(d_model, dtype=p.dtype,
                                                                 device=p.device)
        return self.split(self.qkv.forward(x[None]))[2][0]


@contextlib.contextmanager
def eager_attention(hf_model: Any) -> Iterator[None]:
    """Switch the model to eager attention (which returns the attention pattern) inside the
    block; the previous implementation is restored on exit."""
    prev = hf_model.config._attn_implementation
    if prev != "eager":
        hf_model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if prev != "eager":
            hf_model.set_attn_implementation(prev)


@contextlib.contextmanager
def query_path_ablation(adapter: Any, layer: int, head: int, delta: Tensor | Callable[[], Tensor]
                        ) -> Iterator[None]:
    """Inside the block, ``head`` of attention ``layer`` reads its query from
    ``norm(resid - delta)``; its keys and values and all other heads still read ``norm(resid)``.

    How: a pre-hook on the layer's attention norm keeps its input ``resid``; a forward hook
    on the fused q/k/v projection recomputes ``qkv(norm(resid - delta))`` (calling the
    modules' ``forward`` directly, so no hook fires twice) and replaces only that head's
    query columns. Rotary (NeoX) is applied afterwards by the attention module, as usual.
    ``delta``: ``Float[batch, pos, d_model]`` (or broadcastable), or a callable returning it
    when the hook fires (for deltas computed earlier in the same forward pass).
    """
    sites = AttentionSites(adapter, layer)
    cols = sites.query_columns(head)
    stash: dict[str, Tensor] = {}

    def keep_resid(_m, args):
        stash["resid"] = args[0]

    def replace_query(_m, _args, out):
        d = delta() if callable(delta) else delta
        q = sites.qkv.forward(sites.norm.forward(stash["resid"] - d))
        out = out.clone()
        idx = cols.to(out.device)
        out[..., idx] = q[..., idx]
        return out

    handles = []
    try:
        handles.append(sites.norm.register_forward_pre_hook(keep_resid))
        handles.append(sites.qkv.register_forward_hook(replace_query))
        yield
    finally:
        for h in handles:
            h.remove()


# ---------------------------------------------------------------- heuristic score


def bos_id(tokenizer: Any) -> int:
    """The BOS id (EOS if there is no BOS), as in :mod:`universal_neurons.data.dataset`."""
    i = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if i is None:
        raise UserError("the tokenizer has neither a BOS nor an EOS token; attention "
                        "analyses need the BOS token every sequence starts with")
    return int(i)


@torch.no_grad()
def bos_keys(model: Any, bos: int | None = None) -> Tensor:
    """Every head's key of BOS at position 0 (bias included; rotary is the identity there).

    Returns ``Float[layers, heads, d_head]`` (float32, CPU).
    """
    adapter = model.adapter
    bos = bos_id(model.tokenizer) if bos is None else bos
    sites = [AttentionSites(adapter, layer) for layer in range(adapter.n_layers)]
    keys: list[Tensor | None] = [None] * adapter.n_layers
    handles = []

    def make(i: int):
        def hook(_m, _args, out):
            keys[i] = sites[i].split(out)[1][0, 0].detach().float().cpu()
        return hook

    device = next(model.hf_model.parameters()).device
    try:
        for i, s in enumerate(sites):
            handles.append(s.qkv.register_forward_hook(make(i)))
        model.hf_model(torch.tensor([[bos]], device=device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(keys)  # type: ignore[arg-type]


def heuristic_scores(W_out: Tensor, W_Q: Tensor, k_bos: Tensor) -> Tensor:
    """``h[l, n, m, h] = W_out[l, n] · W_Q[m, h] · k_bos[m, h] / sqrt(d_head)``.

    ``W_out: [layers, d_mlp, d_model]``, ``W_Q: [layers, heads, d_model, d_head]``,
    ``k_bos: [layers, heads, d_head]`` -> ``Float[layers, d_mlp, layers, heads]``, NaN where
    the head is not after the neuron (``m <= l``).
    """
    W_out, W_Q, k_bos = W_out.float(), W_Q.float(), k_bos.float()
    u = torch.einsum("mhdk,mhk->mhd", W_Q, k_bos) / math.sqrt(W_Q.shape[-1])  # [L, H, D]
    s = torch.einsum("lnd,mhd->lnmh", W_out, u)
    L = W_out.shape[0]
    later = torch.arange(L)[None, :] > torch.arange(L)[:, None]  # [l, m]: m > l
    return s.masked_fill(~later[:, None, :, None], float("nan"))


def random_like_norms(W_out: Tensor, seed: int = 0, center: bool = True) -> Tensor:
    """Random directions with the norms of ``W_out: [layers, d_mlp, d_model]`` (Gaussian,
    centred over ``d_model`` when ``center`` -- as TL centres W_out -- then rescaled)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(W_out.shape, generator=g, dtype=torch.float32)
    if center:
        r = r - r.mean(-1, keepdim=True)
    return r / r.norm(dim=-1, keepdim=True) * W_out.float().norm(dim=-1, keepdim=True)


@dataclass(frozen=True)
class HeadPair:
    """A neuron and a head in a later layer."""

    layer: int
    neuron: int
    head_layer: int
    head: int

    def __post_init__(self) -> None:
        if self.head_layer <= self.layer:
            raise ValueError(f"head layer {self.head_layer} must come after neuron layer "
                             f"{self.layer} in pair {self.name}")

    @property
    def name(self) -> str:
        return f"{neuron_name(self.layer, self.neuron)}->L{self.head_layer}.H{self.head}"

    @classmethod
    def parse(cls, text: str) -> HeadPair:
        """``"L3.17:L5.2"`` or ``"L3.17->L5.H2"`` (neuron, then head layer and head)."""
        import re

        m = re.fullmatch(r"\s*L?(\d+)\.(\d+)\s*(?::|->)\s*L?(\d+)\.H?(\d+)\s*", text)
        if not m:
            raise ValueError(f"bad neuron-head pair {text!r}; write e.g. L3.17:L5.2 "
                             "(neuron L3.17, head 2 of layer 5)")
        return cls(*(int(g) for g in m.groups()))


def top_pairs(scores: Tensor, k: int, neurons: Sequence[tuple[int, int]] | None = None
              ) -> list[HeadPair]:
    """The ``k`` most positive and ``k`` most negative pairs of ``scores: [L, d_mlp, L, H]``
    (restricted to ``neurons`` if given), most extreme first, positive ones first."""
    s = scores
    if neurons is not None:
        keep = torch.zeros(scores.shape[:2], dtype=torch.bool)
        for layer, n in neurons:
            keep[layer, n] = True
        s = s.masked_fill(~keep[:, :, None, None], float("nan"))
    flat = s.reshape(-1)
    valid = ~flat.isnan()
    out: list[HeadPair] = []
    for sign in (1.0, -1.0):
        vals = torch.where(valid, sign * flat, torch.tensor(-math.inf))
        kk = min(k, int(valid.sum()))
        for i in torch.topk(vals, kk).indices.tolist():
            idx = np.unravel_index(i, tuple(scores.shape))
            p = HeadPair(*(int(j) for j in idx))
            if p not in out:
                out.append(p)
    return out


def heuristic_tables(scores: Tensor, baseline: Tensor, W_out_norm: Tensor, k: int = 100,
                     bins: int = 101) -> tuple[Any, Any, dict[str, float]]:
    """Top pairs (``k`` per sign), a histogram of scores vs baseline on shared bins, and
    summary quantiles. ``W_out_norm: [layers, d_mlp]``."""
    import pandas as pd

    real, base = scores[~scores.isnan()].double(), baseline[~baseline.isnan()].double()
    rows = []
    base_std = float(base.std())
    for p in top_pairs(scores, k):
        s = float(scores[p.layer, p.neuron, p.head_layer, p.head])
        rows.append({"pair": p.name, "layer": p.layer, "neuron": p.neuron,
                     "neuron_name": neuron_name(p.layer, p.neuron), "head_layer": p.head_layer,
                     "head": p.head, "score": s, "score_over_baseline_std": s / base_std,
                     "w_out_norm": float(W_out_norm[p.layer, p.neuron])})
    lim = float(torch.cat([real.abs(), base.abs()]).max())
    edges = np.linspace(-lim, lim, bins + 1)
    hist = pd.DataFrame({"bin_lo": edges[:-1], "bin_hi": edges[1:],
                         "count": np.histogram(real.numpy(), edges)[0],
                         "count_baseline": np.histogram(base.numpy(), edges)[0]})
    summary = {"n_pairs": int(real.numel()), "std": float(real.std()), "baseline_std": base_std,
               **{f"q{q:g}": float(torch.quantile(real.float(), q / 100)) for q in (0.1, 1, 50, 99, 99.9)},
               **{f"baseline_q{q:g}": float(torch.quantile(base.float(), q / 100))
                  for q in (0.1, 1, 50, 99, 99.9)}}
    return pd.DataFrame(rows), hist, summary


# ---------------------------------------------------------------- streaming pass


class Pearson:
    """Streaming Pearson correlation of paired samples (float64, Chan et al. merges)."""

    def __init__(self) -> None:
        self.n = 0
        self.mx = self.my = self.sxx = self.syy = self.sxy = 0.0

    def update(self, x: Tensor, y: Tensor) -> None:
        x, y = x.reshape(-1).double(), y.reshape(-1).double()
        nb = x.numel()
        if nb == 0:
            return
        mx, my = float(x.mean()), float(y.mean())
        dx, dy = x - mx, y - my
        sxx, syy, sxy = float(dx @ dx), float(dy @ dy), float(dx @ dy)
        n = self.n + nb
        ex, ey = mx - self.mx, my - self.my
        f = self.n * nb / n
        self.sxx += sxx + ex * ex * f
        self.syy += syy + ey * ey * f
        self.sxy += sxy + ex * ey * f
        self.mx += ex * nb / n
        self.my += ey * nb / n
        self.n = n

    @property
    def corr(self) -> float:
        d = math.sqrt(self.sxx * self.syy)
        return self.sxy / d if d > 0 else float("nan")


@dataclass
class _PairStats:
    act_dattn: Pearson
    act_dnorm: Pearson
    sum_attn: float = 0.0
    sum_dattn: float = 0.0
    sum_dnorm: float = 0.0
    points: list[np.ndarray] = field(default_factory=list)
    n_points: int = 0


class _Stop(Exception):
    pass


@dataclass
class AttentionPassResult:
    """``path_ablation``: one row per pair; ``points``: a sample of per-token (activation,
    change in BOS attention, change in output norm) per pair; ``value_norms``: per head."""

    path_ablation: Any
    points: Any
    value_norms: Any


def attention_pass(model: Any, batches: Iterable[tuple[int, np.ndarray] | np.ndarray],
                   pairs: Sequence[HeadPair], max_points: int = 2000,
                   progress: Callable[[int], None] | None = None,
                   weights: Any = None) -> AttentionPassResult:
    """Stream ``batches`` once (``Int[b, n_ctx]``, BOS at position 0): path-ablate every pair
    and accumulate the BOS value norms of every head.

    Per batch: one forward pass (eager attention) up to the last attention layer, plus one
    call of a head's attention module per pair (its inputs are kept from the clean pass;
    :func:`query_path_ablation` changes only that head's query). Tokens at positions >= 1.
    ``weights``: the adapter's ``processed_weights()`` if already computed.
    """
    import pandas as pd

    adapter, hf = model.adapter, model.hf_model
    device = next(hf.parameters()).device
    dtype = next(hf.parameters()).dtype
    L = adapter.n_layers
    w = adapter.processed_weights() if weights is None else weights
    W_out = w.W_out.to(device=device, dtype=dtype)  # [L, d_mlp, D]
    W_O = w.W_O.to(device=device, dtype=torch.float32)  # [L, H, dh, D]
    gram = torch.einsum("lhdm,lhem->lhde", W_O, W_O)  # [L, H, dh, dh]
    sites = [AttentionSites(adapter, layer) for layer in range(L)]
    v_bias = [s.value_bias() for s in sites]  # [H, dh] each
    stats = {p: _PairStats(Pearson(), Pearson()) for p in pairs}
    neuron_layers = sorted({p.layer for p in pairs})
    head_layers = sorted({p.head_layer for p in pairs})
    bos_sum = torch.zeros(L, adapter.n_heads, dtype=torch.float64)
    other_sum = torch.zeros_like(bos_sum)
    n_bos = n_other = 0

    for batch in batches:
        toks = batch[1] if isinstance(batch, tuple) else batch
        ids = torch.as_tensor(np.asarray(toks, dtype=np.int64), device=device)
        cap = _clean_pass(model, sites, ids, neuron_layers, head_layers, gram, v_bias)
        bos_sum += cap["vnorm"][:, :, 0].sum(1).double().cpu()  # vnorm: [L, b, p, H]
        other_sum += cap["vnorm"][:, :, 1:].sum((1, 2)).double().cpu()
        n_bos += ids.shape[0]
        n_other += ids.shape[0] * (ids.shape[1] - 1)
        for p in pairs:
            _ablate_pair(p, stats[p], cap, sites[p.head_layer], W_out, W_O, v_bias, adapter,
                         max_points)
        if progress is not None:
            progress(int(ids.numel()))

    rows, pts = [], []
    for p in pairs:
        st = stats[p]
        n = st.act_dattn.n
        rows.append({"pair": p.name, "layer": p.layer, "neuron": p.neuron,
                     "neuron_name": neuron_name(p.layer, p.neuron), "head_layer": p.head_layer,
                     "head": p.head, "n_tokens": n, "mean_act": st.act_dattn.mx,
                     "mean_bos_attn": st.sum_attn / max(n, 1),
                     "mean_delta_bos_attn": st.sum_dattn / max(n, 1),
                     "mean_delta_out_norm": st.sum_dnorm / max(n, 1),
                     "corr_act_delta_bos_attn": st.act_dattn.corr,
                     "corr_act_delta_out_norm": st.act_dnorm.corr})
        if st.points:
            a = np.concatenate(st.points)
            pts.append(pd.DataFrame({"pair": p.name, "act": a[:, 0], "delta_bos_attn": a[:, 1],
                                     "delta_out_norm": a[:, 2]}))
    bos_mean = bos_sum / max(n_bos, 1)
    other_mean = other_sum / max(n_other, 1)
    vn = pd.DataFrame({
        "layer": np.repeat(np.arange(L), adapter.n_heads),
        "head": np.tile(np.arange(adapter.n_heads), L),
        "bos_norm": bos_mean.reshape(-1).numpy(), "other_norm_mean": other_mean.reshape(-1).numpy(),
    })
    vn["ratio"] = vn["other_norm_mean"] / vn["bos_norm"]
    points = pd.concat(pts, ignore_index=True) if pts else pd.DataFrame(
        columns=["pair", "act", "delta_bos_attn", "delta_out_norm"])
    return AttentionPassResult(pd.DataFrame(rows), points, vn)


@torch.no_grad()
def _clean_pass(model: Any, sites: list[AttentionSites], ids: Tensor, neuron_layers: list[int],
                head_layers: list[int], gram: Tensor, v_bias: list[Tensor]) -> dict[str, Any]:
    """One eager forward pass to the last attention module, keeping what the pairs need.

    Returns ``acts[l]: [b, p, d_mlp]`` (post), per head layer ``resid``, the attention
    call's ``(args, kwargs)``, ``pattern: [b, H, p]`` (attention to BOS),
    ``z: [b, p, H * dh]``, and
    ``vnorm: [L, b, p, H]`` (= ``|(v - v_bias) W_O|`` per head).
    """
    adapter = model.adapter
    L = len(sites)
    cap: dict[str, Any] = {"acts": {}, "resid": {}, "call": {}, "pattern": {}, "z": {},
                           "vnorm": [None] * L}
    handles = []

    def act_hook(layer):
        def keep(t):
            cap["acts"][layer] = t.detach()
        return keep

    def qkv_hook(layer):
        def hook(_m, _a, out):
            v = sites[layer].split(out)[2].float() - v_bias[layer].float()  # [b, p, H, dh]
            n2 = torch.einsum("bphd,hde,bphe->bph", v, gram[layer], v)
            cap["vnorm"][layer] = n2.clamp(min=0).sqrt()
        return hook

    def attn_pre(layer):
        def hook(_m, args, kwargs):
            cap["call"][layer] = (args, kwargs)
        return hook

    def attn_post(layer):
        def hook(_m, _a, out):
            if layer in head_layers:
                cap["pattern"][layer] = out[1][..., 0]  # attention to BOS: [b, H, p]
            if layer == L - 1:
                raise _Stop
        return hook

    try:
        for layer in neuron_layers:
            module, kind = adapter.post_activation_hook_point(layer)
            f = act_hook(layer)
            handles.append(module.register_forward_hook(lambda _m, _a, o, f=f: f(o))
                           if kind == "output" else
                           module.register_forward_pre_hook(lambda _m, a, f=f: f(a[0])))
        for layer, s in enumerate(sites):
            handles.append(s.qkv.register_forward_hook(qkv_hook(layer)))
            handles.append(s.attn.register_forward_hook(attn_post(layer)))
        for layer in head_layers:
            s = sites[layer]
            handles.append(s.norm.register_forward_pre_hook(
                lambda _m, a, layer=layer: cap["resid"].__setitem__(layer, a[0])))
            handles.append(s.attn.register_forward_pre_hook(attn_pre(layer), with_kwargs=True))
            handles.append(s.out.register_forward_pre_hook(
                lambda _m, a, layer=layer: cap["z"].__setitem__(layer, a[0])))
        with eager_attention(model.hf_model), contextlib.suppress(_Stop):
            model.hf_model(ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    cap["vnorm"] = torch.stack(cap["vnorm"])
    return cap


@torch.no_grad()
def _ablate_pair(p: HeadPair, st: _PairStats, cap: dict[str, Any], s: AttentionSites,
                 W_out: Tensor, W_O: Tensor, v_bias: list[Tensor], adapter: Any,
                 max_points: int) -> None:
    a = cap["acts"][p.layer][..., p.neuron]  # [b, p]
    delta = a[..., None] * W_out[p.layer, p.neuron]  # [b, p, D]
    args, kwargs = cap["call"][p.head_layer]
    resid = cap["resid"][p.head_layer]
    z_new: list[Tensor] = []
    handle = s.out.register_forward_pre_hook(lambda _m, a_: z_new.append(a_[0]))
    try:
        with eager_attention(adapter.model), query_path_ablation(adapter, p.head_layer, p.head, delta):
            new_args = (s.norm(resid), *args[1:]) if args else args
            new_kwargs = kwargs if args else {**kwargs, "hidden_states": s.norm(resid)}
            out = s.attn(*new_args, **new_kwargs)
    finally:
        handle.remove()
    h = p.head
    attn0 = cap["pattern"][p.head_layer][:, h, 1:].float()  # [b, p-1]
    attn1 = out[1][:, h, 1:, 0].float()

    def head_norm(z: Tensor) -> Tensor:  # z: [b, p, H * dh] -> |(z_h - b_v) W_O^h|: [b, p-1]
        zh = z.unflatten(-1, (s.n_heads, s.d_head))[:, 1:, h].float() - v_bias[p.head_layer][h].float()
        return (zh @ W_O[p.head_layer, h]).norm(dim=-1)

    dattn = attn1 - attn0
    dnorm = head_norm(z_new[-1]) - head_norm(cap["z"][p.head_layer])
    act = a[:, 1:].float()
    st.act_dattn.update(act, dattn)
    st.act_dnorm.update(act, dnorm)
    st.sum_attn += float(attn0.double().sum())
    st.sum_dattn += float(dattn.double().sum())
    st.sum_dnorm += float(dnorm.double().sum())
    if st.n_points < max_points:
        take = max_points - st.n_points
        pts = torch.stack([act.reshape(-1), dattn.reshape(-1), dnorm.reshape(-1)], -1)[:take]
        st.points.append(pts.cpu().double().numpy())
        st.n_points += pts.shape[0]


# ---------------------------------------------------------------- the stage


@dataclass(frozen=True)
class AttentionConfig:
    """Settings of the ``attention`` stage (saved in the run manifest)."""

    model: str
    """Model spec (alias, bundled member, HF id, folder)."""
    out: str
    """Run directory."""
    dataset: str | None = None
    """Token dataset folder; None = the bundled test split tokenized for the model."""
    tokens: int = 16_384
    """Tokens streamed for path ablation and value norms (rounded up to whole sequences)."""
    n_ctx: int | None = None
    """Context of the default dataset (default ``min(512, model n_ctx)``)."""
    batch_size: int = 8
    device: str = "cpu"
    pairs: tuple[str, ...] = ()
    """Neuron-head pairs to path-ablate (``L3.17:L5.2``); empty = the top heuristic pairs."""
    neurons: tuple[str, ...] = ()
    """Restrict the automatically chosen pairs to these neurons."""
    top_pairs: int = 5
    """Pairs chosen per sign (most positive and most negative heuristic scores)."""
    table_k: int = 100
    """Pairs per sign listed in ``heuristic_top``."""
    seed: int = 0
    """Seed of the random-direction baseline."""
    max_points: int = 2000
    """Per-token points kept per pair for scatter plots."""
    plots: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(self.pairs))
        object.__setattr__(self, "neurons", tuple(self.neurons))
        for p in self.pairs:
            HeadPair.parse(p)
        if min(self.tokens, self.batch_size, self.table_k) < 1 or self.top_pairs < 0:
            raise ValueError(f"tokens, batch_size and table_k must be >= 1 and top_pairs >= 0, "
                             f"got {self.tokens}, {self.batch_size}, {self.table_k}, "
                             f"{self.top_pairs}")
        if self.max_points < 0:
            raise ValueError(f"max_points must be >= 0, got {self.max_points}")


@dataclass
class AttentionResult:
    """What :func:`run_attention` wrote (tables as DataFrames) and where."""

    heuristic_top: Any
    heuristic_hist: Any
    heuristic_summary: dict[str, float]
    pairs: list[HeadPair]
    passed: AttentionPassResult
    plots: list[Any]
    rundir: Any


def run_attention(config: AttentionConfig) -> AttentionResult:
    """The ``attention`` stage: heuristic scores of every (neuron, later head) pair vs a
    random baseline, path ablation of the chosen pairs and BOS value norms, over one pass.

    Writes to ``RUN/attention/``: ``heuristic_top``, ``heuristic_hist``, ``path_ablation``,
    ``path_ablation_points``, ``bos_value_norms`` (parquet + CSV) and
    ``heuristic_summary.json``; plots ``RUN/plots/attention_{heuristic,path_ablation,
    bos_value_norms}.png``; the ``attention`` stage of ``RUN/manifest.json``.
    """
    import time

    from universal_neurons.analysis.interventions import open_dataset, token_progress
    from universal_neurons.constants import PLOTS_DIR, parse_neuron_name
    from universal_neurons.models.loading import load_model
    from universal_neurons.rundir import RunDir, write_json, write_table

    t0 = time.perf_counter()
    model = load_model(config.model, device=config.device)
    a = model.adapter
    AttentionSites(a, 0)  # unsupported architectures fail before any work
    restrict = [parse_neuron_name(n) for n in config.neurons] or None
    chosen = [HeadPair.parse(p) for p in config.pairs]
    size = (f"{model.name} has {a.n_layers} layers of {a.d_mlp} neurons and "
            f"{a.n_heads} heads per layer")
    for layer, n in restrict or []:
        if not (layer < a.n_layers and n < a.d_mlp):
            raise UserError(f"neuron {neuron_name(layer, n)} does not exist: {size}")
    for p in chosen:
        if not (p.head_layer < a.n_layers and p.neuron < a.d_mlp and p.head < a.n_heads):
            raise UserError(f"pair {p.name} does not exist: {size}")

    w = a.processed_weights()
    k_bos = bos_keys(model)
    scores = heuristic_scores(w.W_out, w.W_Q, k_bos)
    base = heuristic_scores(random_like_norms(w.W_out, config.seed, center=a.normalization == "LN"),
                            w.W_Q, k_bos)
    top, hist, summary = heuristic_tables(scores, base, w.W_out.norm(dim=-1), config.table_k)
    pairs = chosen or top_pairs(scores, config.top_pairs, restrict)
    ds, n_seq = open_dataset(model, config.dataset, config.tokens, config.n_ctx, config.progress)
    with token_progress(n_seq * ds.n_ctx, "path ablation", config.progress) as update:
        passed = attention_pass(model, ds.iter_batches(config.batch_size, 0, n_seq), pairs,
                                config.max_points, update, weights=w)

    run = RunDir(config.out)
    d = run / "attention"
    for df in (top, passed.path_ablation, passed.value_norms):
        df.insert(0, "model", model.name)
    write_table(d / "heuristic_top.parquet", top)
    write_table(d / "heuristic_hist.parquet", hist)
    write_table(d / "path_ablation.parquet", passed.path_ablation)
    write_table(d / "path_ablation_points.parquet", passed.points, csv=False)
    write_table(d / "bos_value_norms.parquet", passed.value_norms)
    summary["median_head_value_norm_ratio"] = float(passed.value_norms["ratio"].median())
    write_json(d / "heuristic_summary.json", summary)
    plots = []
    if config.plots:
        from universal_neurons.report import plots_roles as pr

        pd_ = run / PLOTS_DIR
        plots = [pr.plot_heuristic_hist(hist, pd_ / "attention_heuristic.png", model.name),
                 pr.plot_path_ablation(passed.points, passed.path_ablation,
                                       pd_ / "attention_path_ablation.png", model.name),
                 pr.plot_bos_value_norms(passed.value_norms, pd_ / "attention_bos_value_norms.png",
                                         model.name)]
    run.record_stage(
        "attention", config, model=model.name, pairs=[p.name for p in pairs], summary=summary,
        tokens={"sequences": n_seq, "n_ctx": ds.n_ctx},
        dataset={"path": str(ds.path), "source": ds.meta.get("source"),
                 "tokenizer_fingerprint": ds.fingerprint},
        seconds=round(time.perf_counter() - t0, 2))
    return AttentionResult(top, hist, summary, list(pairs), passed, plots, run.path)
