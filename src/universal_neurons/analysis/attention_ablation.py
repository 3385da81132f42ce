"""Path ablation of attention-deactivation neurons and BOS value norms (Gurnee et al.
2024, §5.3), in one streaming pass.

* **Path ablation** of one neuron's contribution to ONE head's query: the head's query is
  computed from ``norm(resid - a * w_out)`` while its keys/values and every other head see
  ``norm(resid)`` (see :func:`query_path_ablation`). Measured per token: the change in the
  head's attention to BOS and in the norm of its output, correlated (Pearson, streamed
  over the whole dataset) with the neuron's activation ``a``.

  The output-norm change follows the paper (``attention_deactivation.py``: ``hook_z``
  norms at ``after_pos=64 .. ctx_len=256``; ``bos_signal_neurons.ipynb`` plots it as
  "attention out norm change (%)"): ``measure="head_pct"`` (default) is
  ``100 · (|z_h'| − |z_h|) / |z_h|`` with ``z_h`` the head's mixed values in head space
  (TransformerLens ``hook_z``: value bias folded out), at ``positions=(64, 256)``. The
  script itself stores and correlates the absolute head-space change ``|z_h'| − |z_h|``:
  ``measure="head_abs"``. The notebook's "Fractional Norm Diff" is computed in code that
  is not published; its denominator is taken here to be the clean ``|z_h|``.
  ``measure="model_abs"`` is the absolute change of ``|z_h W_O^h|`` in model space (what
  the head adds to the residual stream), and ``positions=(1, None)`` every position after
  BOS: an earlier version's only measure, kept as an option because it is what the head
  writes; it is not the paper's.
* **BOS value norms**: per head, ``|v_BOS W_O^h|`` against the mean ``|v_t W_O^h|`` of the
  other tokens (paper: 19.4x smaller for the median head).

Values and head outputs follow TransformerLens's processed weights (value biases folded
into ``b_O``): ``v`` excludes the value bias, ``W_O`` is centred. The attention modules
come from the adapter (:meth:`~universal_neurons.models.adapters.base.ArchitectureAdapter.
attention_modules`), so every architecture with an adapter is supported.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from universal_neurons.analysis.attention_heuristic import HeadPair
from universal_neurons.constants import neuron_name
from universal_neurons.models.adapters.attention_layout import AttentionModules


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
    on the query projection (fused q/k/v or separate q, as the adapter's attention layout
    says) recomputes it from ``norm(resid - delta)`` (calling the modules' ``forward``
    directly, so no hook fires twice) and replaces only that head's query columns. Rotary
    (NeoX, Llama) is applied afterwards by the attention module, as usual.
    ``delta``: ``Float[batch, pos, d_model]`` (or broadcastable), or a callable returning it
    when the hook fires (for deltas computed earlier in the same forward pass).
    """
    sites = adapter.attention_modules(layer)
    q_proj = sites.projection("q")
    cols = sites.query_columns(head)
    stash: dict[str, Tensor] = {}

    def keep_resid(_m, args):
        stash["resid"] = args[0]

    def replace_query(_m, _args, out):
        d = delta() if callable(delta) else delta
        q = q_proj.forward(sites.norm.forward(stash["resid"] - d))
        out = out.clone()
        idx = cols.to(out.device)
        out[..., idx] = q[..., idx]
        return out

    handles = []
    try:
        handles.append(sites.norm.register_forward_pre_hook(keep_resid))
        handles.append(q_proj.register_forward_hook(replace_query))
        yield
    finally:
        for h in handles:
            h.remove()


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


NormMeasure = Literal["head_pct", "head_abs", "model_abs"]
PAPER_POSITIONS = (64, 256)


def attention_pass(model: Any, batches: Iterable[tuple[int, np.ndarray] | np.ndarray],
                   pairs: Sequence[HeadPair], max_points: int = 2000,
                   progress: Callable[[int], None] | None = None,
                   weights: Any = None, measure: NormMeasure = "head_pct",
                   positions: tuple[int, int | None] = PAPER_POSITIONS) -> AttentionPassResult:
    """Stream ``batches`` once (``Int[b, n_ctx]``, BOS at position 0): path-ablate every pair
    and accumulate the BOS value norms of every head.

    Per batch: one forward pass (eager attention) up to the last attention layer, plus one
    call of a head's attention module per pair (its inputs are kept from the clean pass;
    :func:`query_path_ablation` changes only that head's query). Measured at positions
    ``positions[0] <= t < positions[1]`` (None: to the end; the start is at least 1);
    ``measure``: see the module doc. ``weights``: the adapter's ``processed_weights()`` if
    already computed.
    """
    if measure not in ("head_pct", "head_abs", "model_abs"):
        raise ValueError(f"measure must be 'head_pct', 'head_abs' or 'model_abs', got {measure!r}")
    lo, hi = max(1, int(positions[0])), positions[1]
    if hi is not None and hi <= lo:
        raise ValueError(f"positions must be (start, end) with end > start >= 1, got {positions}")
    adapter, hf = model.adapter, model.hf_model
    device = next(hf.parameters()).device
    dtype = next(hf.parameters()).dtype
    L = adapter.n_layers
    w = adapter.processed_weights() if weights is None else weights
    W_out = w.W_out.to(device=device, dtype=dtype)  # [L, d_mlp, D]
    W_O = w.W_O.to(device=device, dtype=torch.float32)  # [L, H, dh, D]
    gram = torch.einsum("lhdm,lhem->lhde", W_O, W_O)  # [L, H, dh, dh]
    sites = [adapter.attention_modules(layer) for layer in range(L)]
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
        if ids.shape[1] <= lo:
            raise ValueError(f"sequences of {ids.shape[1]} tokens have no position >= {lo}; "
                             "use longer sequences or measure from an earlier position")
        cap = _clean_pass(model, sites, ids, neuron_layers, head_layers, gram, v_bias)
        bos_sum += cap["vnorm"][:, :, 0].sum(1).double().cpu()  # vnorm: [L, b, p, H]
        other_sum += cap["vnorm"][:, :, 1:].sum((1, 2)).double().cpu()
        n_bos += ids.shape[0]
        n_other += ids.shape[0] * (ids.shape[1] - 1)
        for p in pairs:
            _ablate_pair(p, stats[p], cap, sites[p.head_layer], W_out, W_O, v_bias, adapter,
                         max_points, measure, slice(lo, hi))
        if progress is not None:
            progress(int(ids.numel()))

    table, points = _pair_tables(pairs, stats, measure, f"{lo}-{'end' if hi is None else hi - 1}")
    return AttentionPassResult(table, points, _value_norm_table(bos_sum / max(n_bos, 1),
                                                                other_sum / max(n_other, 1)))


def _pair_tables(pairs: Sequence[HeadPair], stats: dict[HeadPair, _PairStats], measure: str,
                 positions: str) -> tuple[Any, Any]:
    """The path-ablation table (one row per pair) and its per-token points."""
    import pandas as pd

    rows, pts = [], []
    for p in pairs:
        st = stats[p]
        n = st.act_dattn.n
        rows.append({"pair": p.name, "layer": p.layer, "neuron": p.neuron,
                     "neuron_name": neuron_name(p.layer, p.neuron), "head_layer": p.head_layer,
                     "head": p.head, "n_tokens": n, "norm_measure": measure,
                     "positions": positions, "mean_act": st.act_dattn.mx,
                     "mean_bos_attn": st.sum_attn / max(n, 1),
                     "mean_delta_bos_attn": st.sum_dattn / max(n, 1),
                     "mean_delta_out_norm": st.sum_dnorm / max(n, 1),
                     "corr_act_delta_bos_attn": st.act_dattn.corr,
                     "corr_act_delta_out_norm": st.act_dnorm.corr})
        if st.points:
            a = np.concatenate(st.points)
            pts.append(pd.DataFrame({"pair": p.name, "act": a[:, 0], "delta_bos_attn": a[:, 1],
                                     "delta_out_norm": a[:, 2]}))
    points = pd.concat(pts, ignore_index=True) if pts else pd.DataFrame(
        columns=["pair", "act", "delta_bos_attn", "delta_out_norm"])
    return pd.DataFrame(rows), points


def _value_norm_table(bos_mean: Tensor, other_mean: Tensor) -> Any:
    """``layer, head, bos_norm, other_norm_mean, ratio`` from ``[L, H]`` mean value norms."""
    import pandas as pd

    n_layers, n_heads = bos_mean.shape
    vn = pd.DataFrame({
        "layer": np.repeat(np.arange(n_layers), n_heads),
        "head": np.tile(np.arange(n_heads), n_layers),
        "bos_norm": bos_mean.reshape(-1).numpy(), "other_norm_mean": other_mean.reshape(-1).numpy(),
    })
    vn["ratio"] = vn["other_norm_mean"] / vn["bos_norm"]
    return vn


@torch.no_grad()
def _clean_pass(model: Any, sites: list[AttentionModules], ids: Tensor, neuron_layers: list[int],
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
            v = sites[layer].heads("v", out).float() - v_bias[layer].float()  # [b, p, H, dh]
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
            handles.append(s.projection("v").register_forward_hook(qkv_hook(layer)))
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
def _ablate_pair(p: HeadPair, st: _PairStats, cap: dict[str, Any], s: AttentionModules,
                 W_out: Tensor, W_O: Tensor, v_bias: list[Tensor], adapter: Any,
                 max_points: int, measure: NormMeasure = "head_pct",
                 pos: slice = slice(1, None)) -> None:
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
    attn0 = cap["pattern"][p.head_layer][:, h, pos].float()  # [b, p']
    attn1 = out[1][:, h, pos, 0].float()

    def head_z(z: Tensor) -> Tensor:  # [b, p, H * dh] -> z_h without the value bias: [b, p', dh]
        return z.unflatten(-1, (s.n_heads, s.d_head))[:, pos, h].float() - v_bias[p.head_layer][h].float()

    z0, z1 = head_z(cap["z"][p.head_layer]), head_z(z_new[-1])
    if measure == "head_pct":  # the paper's figure: % change of |z_h| in head space
        n0, n1 = z0.norm(dim=-1), z1.norm(dim=-1)
        dnorm = torch.where(n0 > 0, 100.0 * (n1 - n0) / n0.clamp(min=1e-30), torch.zeros_like(n0))
    elif measure == "head_abs":  # the paper's script: absolute change of |z_h|
        dnorm = z1.norm(dim=-1) - z0.norm(dim=-1)
    else:  # |z_h W_O^h| in model space, absolute
        Wo = W_O[p.head_layer, h]
        dnorm = (z1 @ Wo).norm(dim=-1) - (z0 @ Wo).norm(dim=-1)
    dattn = attn1 - attn0
    act = a[:, pos].float()
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
