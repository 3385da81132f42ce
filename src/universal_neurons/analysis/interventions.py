"""Interventions on MLP neurons, as data, and a runner measuring their effect on predictions.

An :class:`Intervention` names neurons, a site (``pre``/``post`` activation) and what to do
to them. :func:`intervene` applies interventions to a loaded model through forward hooks on
the adapter's hook points and always removes them on exit. :func:`run_interventions`
streams token batches once and, for every intervention (``None`` = the clean model),
measures per token: loss, next-token entropy, rank of the true next token and the final
norm's scale (the std/rms that the final LayerNorm/RMSNorm divides by).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np
import torch
from torch import nn

from universal_neurons.constants import (
    INTERVENTION_SUMMARY,
    INTERVENTION_TOKENS,
    neuron_name,
    parse_neuron_name,
)

log = logging.getLogger(__name__)

Kind = Literal["zero", "fix", "multiply", "threshold", "relu"]
Site = Literal["pre", "post"]
METRICS = ("loss", "entropy", "rank", "ln_scale")


@dataclass(frozen=True)
class Intervention:
    """What to do to some neurons' activations; applied by :func:`intervene`.

    ``kind``: ``zero`` (a = 0), ``fix`` (a = value), ``multiply`` (a = value * a),
    ``threshold`` (a = a where a > value, else 0), ``relu`` (a = max(a, 0); value unused).
    """

    neurons: tuple[tuple[int, int], ...]
    """``(layer, neuron)`` pairs."""
    kind: Kind = "fix"
    value: float = 0.0
    site: Site = "post"
    """``post``: the post-activation (``mlp.hook_post``); ``pre``: the pre-activation."""

    def __post_init__(self) -> None:
        neurons = tuple((int(layer), int(n)) for layer, n in self.neurons)
        object.__setattr__(self, "neurons", neurons)
        object.__setattr__(self, "value", float(self.value))
        if not neurons:
            raise ValueError("an intervention needs at least one neuron, got none")
        if any(layer < 0 or n < 0 for layer, n in neurons):
            raise ValueError(f"neuron indices must be non-negative, got {neurons}")
        if self.kind not in get_args(Kind):
            raise ValueError(f"unknown intervention kind {self.kind!r}; choose one of "
                             f"{', '.join(get_args(Kind))}")
        if self.site not in get_args(Site):
            raise ValueError(f"unknown site {self.site!r}; choose one of {', '.join(get_args(Site))}")

    @classmethod
    def on(cls, *names: str, kind: Kind = "fix", value: float = 0.0,
           site: Site = "post") -> Intervention:
        """Build from neuron names: ``Intervention.on("L3.17", kind="fix", value=2)``."""
        return cls(tuple(parse_neuron_name(n) for n in names), kind, value, site)

    @property
    def label(self) -> str:
        """E.g. ``fix(L3.17)=2`` or ``zero(L3.17,L3.20)@pre``."""
        names = ",".join(neuron_name(*ln) for ln in self.neurons)
        val = "" if self.kind in ("zero", "relu") else f"={self.value:g}"
        return f"{self.kind}({names}){val}" + ("@pre" if self.site == "pre" else "")

    def apply(self, acts: torch.Tensor) -> torch.Tensor:
        """``acts: Float[..., k]`` (the selected neurons) -> new activations, same shape."""
        if self.kind == "zero":
            return torch.zeros_like(acts)
        if self.kind == "fix":
            return torch.full_like(acts, self.value)
        if self.kind == "multiply":
            return acts * self.value
        if self.kind == "threshold":
            return torch.where(acts > self.value, acts, torch.zeros_like(acts))
        return acts.clamp(min=0)  # relu


def _hook_point(adapter: Any, site: Site, layer: int) -> tuple[nn.Module, str]:
    if site == "post":
        return adapter.post_activation_hook_point(layer)
    return adapter.pre_activation_hook_point(layer)


def _edit(acts: torch.Tensor, items: list[Intervention], layer: int) -> torch.Tensor:
    """Apply ``items`` (in order) to the neurons of ``layer`` in ``acts: [..., d_mlp]``."""
    acts = acts.clone()
    for iv in items:
        idx = [n for lay, n in iv.neurons if lay == layer]
        acts[..., idx] = iv.apply(acts[..., idx])
    return acts


def _check(adapter: Any, iv: Intervention) -> None:
    for layer, n in iv.neurons:
        if layer >= adapter.n_layers or n >= adapter.d_mlp:
            raise ValueError(f"neuron {neuron_name(layer, n)} does not exist: the model has "
                             f"{adapter.n_layers} layers of {adapter.d_mlp} neurons")


@contextlib.contextmanager
def intervene(adapter: Any, interventions: Intervention | Sequence[Intervention | None]
              ) -> Iterator[None]:
    """Apply interventions to the adapter's model inside the ``with`` block.

    One hook per (site, layer) edits that layer's activations ``[batch, pos, d_mlp]``; the
    hooks are removed on exit, also when the block raises. ``None`` entries are ignored.
    """
    items = [interventions] if isinstance(interventions, Intervention) else list(interventions)
    groups: dict[tuple[Site, int], list[Intervention]] = defaultdict(list)
    for iv in items:
        if iv is None:
            continue
        _check(adapter, iv)
        for layer in sorted({lay for lay, _ in iv.neurons}):
            groups[(iv.site, layer)].append(iv)
    handles = []
    try:
        for (site, layer), group in groups.items():
            module, slot = _hook_point(adapter, site, layer)
            handles.append(_register(module, slot, functools.partial(_edit, items=group,
                                                                     layer=layer)))
        yield
    finally:
        for h in handles:
            h.remove()


def _register(module: nn.Module, slot: str, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Hook that replaces the module's output (``slot="output"``) or first input."""
    if slot == "output":
        def out_hook(_m, _inp, out):
            if isinstance(out, tuple):
                return (fn(out[0]), *out[1:])
            return fn(out)
        return module.register_forward_hook(out_hook)
    if slot == "input":
        def in_hook(_m, args):
            return (fn(args[0]), *args[1:])
        return module.register_forward_pre_hook(in_hook)
    raise ValueError(f"unknown hook slot {slot!r}; expected 'output' or 'input'")


# ---------------------------------------------------------------- measurements


def norm_scale(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The scale a final norm divides ``x: [..., d_model]`` by -> ``[...]``.

    LayerNorm: ``sqrt(var(x) + eps)`` (biased variance); RMSNorm: ``sqrt(mean(x^2) + eps)``.
    """
    x = x.double()
    if isinstance(module, nn.LayerNorm):
        return (x.var(-1, unbiased=False) + module.eps).sqrt()
    eps = getattr(module, "variance_epsilon", None)
    eps = float(getattr(module, "eps", 1e-6) if eps is None else eps)
    if "rms" in type(module).__name__.lower():
        return (x.pow(2).mean(-1) + eps).sqrt()
    raise ValueError(f"cannot compute the scale of a {type(module).__name__} final norm; "
                     "supported: LayerNorm and RMSNorm")


def next_token_metrics(logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss, entropy (nats) and 1-based rank of the true next token.

    ``logits: [batch, pos, vocab]``, ``tokens: [batch, pos]`` -> each ``[batch, pos - 1]``
    (position t predicts token t + 1). Ties count in the token's favour.
    """
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [b, p-1, v]
    target = tokens[:, 1:].unsqueeze(-1)
    true = logp.gather(-1, target)  # [b, p-1, 1]
    entropy = -(logp.exp() * logp).sum(-1)
    rank = (logp > true).sum(-1) + 1
    return {"loss": -true.squeeze(-1), "entropy": entropy, "rank": rank}


@dataclass
class _Sums:
    n: int = 0
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("loss", "entropy", "ln_scale", "reciprocal_rank"), 0.0))

    def add(self, m: dict[str, torch.Tensor], rows: torch.Tensor | None = None) -> None:
        """``rows``: Bool mask of the rows counted (None = all)."""
        def sel(t: torch.Tensor) -> torch.Tensor:
            return t if rows is None else t[rows]

        self.n += int(sel(m["loss"]).numel())
        for k in ("loss", "entropy", "ln_scale"):
            self.sums[k] += float(sel(m[k]).double().sum())
        self.sums["reciprocal_rank"] += float((1.0 / sel(m["rank"]).double()).sum())

    def means(self) -> dict[str, float]:
        return {k: v / max(self.n, 1) for k, v in self.sums.items()}


@dataclass
class InterventionResults:
    """``summary``: one row per intervention (label ``clean`` for none) with the mean loss,
    entropy, ln_scale and reciprocal_rank over ``n_tokens``; ``tokens``: per-token rows
    (label, seq, pos, token, next_token, loss, entropy, rank, ln_scale) when asked for, else None."""

    summary: Any
    tokens: Any = None

    def save(self, run_dir: Any, stem: str) -> None:
        """Write ``<run_dir>/<stem>.parquet`` (+ ``<stem>_tokens.parquet``), CSV copies beside."""
        from universal_neurons.rundir import write_table

        write_table(run_dir / INTERVENTION_SUMMARY.format(stem=stem), self.summary)
        if self.tokens is not None:
            write_table(run_dir / INTERVENTION_TOKENS.format(stem=stem), self.tokens, csv=False)


def forward_metrics(model: Any, input_ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward pass: per-token ``loss, entropy, rank, ln_scale``, each ``[batch, pos - 1]``."""
    norm = model.adapter.final_norm_module()
    seen: list[torch.Tensor] = []
    handle = norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        logits = model.hf_model(input_ids, use_cache=False).logits
    finally:
        handle.remove()
    out = next_token_metrics(logits, input_ids)
    out["ln_scale"] = norm_scale(norm, seen[-1][:, :-1])
    return out


def run_interventions(model: Any, batches: Iterable[tuple[int, np.ndarray] | np.ndarray | torch.Tensor],
                      interventions: Sequence[Intervention | None],
                      keep_tokens: bool | Container[str] = False,
                      progress: Callable[[int], None] | None = None,
                      skip_ids: Sequence[int] = ()) -> InterventionResults:
    """Run every intervention on every batch; ``batches`` yields ``Int[b, n_ctx]`` (or the
    ``(start_seq, tokens)`` pairs of ``TokenDataset.iter_batches``).

    Each batch runs ``len(interventions)`` forward passes; ``progress(batch tokens)`` is
    called after each batch. Metrics cover positions ``0 .. n_ctx - 2`` (those with a next token).
    ``skip_ids``: rows whose input token is one of these ids (e.g. BOS/EOS/pad) are left out
    of the means and of ``n_tokens`` (the paper: ``token != 50256``, ``position != 511``);
    per-token rows keep them. ``keep_tokens``: keep per-token rows of every intervention
    (True) or of those labels.
    """
    import pandas as pd

    labels = [iv.label if iv is not None else "clean" for iv in interventions]
    if len(set(labels)) != len(labels):
        raise ValueError(f"interventions must be distinct, got labels {labels}")
    kept = [keep_tokens is True or (keep_tokens is not False and lab in keep_tokens)
            for lab in labels]
    device = next(model.hf_model.parameters()).device
    skip = torch.as_tensor(np.asarray(list(skip_ids), dtype=np.int64), device=device)
    sums = [_Sums() for _ in interventions]
    token_rows: list[dict[str, np.ndarray]] = []
    seq0 = 0
    with torch.no_grad():
        for batch in batches:
            start, toks = batch if isinstance(batch, tuple) else (seq0, batch)
            ids = torch.as_tensor(np.asarray(toks, dtype=np.int64), device=device)
            seq0 = start + ids.shape[0]
            counted = ~torch.isin(ids[:, :-1], skip) if skip.numel() else None  # [b, p-1]
            for i, iv in enumerate(interventions):
                with intervene(model.adapter, [iv]):
                    m = forward_metrics(model, ids)
                sums[i].add(m, counted)
                if kept[i]:
                    token_rows.append(_token_rows(labels[i], start, ids, m))
            if progress is not None:
                progress(int(ids.numel()))
    rows = []
    for label, iv, s in zip(labels, interventions, sums):
        rows.append({"label": label, "kind": iv.kind if iv else "none",
                     "value": iv.value if iv else float("nan"), "site": iv.site if iv else "",
                     "neurons": " ".join(neuron_name(*ln) for ln in iv.neurons) if iv else "",
                     "n_tokens": s.n, **s.means()})
    tokens = None
    if token_rows:
        tokens = pd.DataFrame({k: np.concatenate([r[k] for r in token_rows]) for k in token_rows[0]})
    return InterventionResults(pd.DataFrame(rows), tokens)


def _token_rows(label: str, start: int, ids: torch.Tensor, m: dict[str, torch.Tensor]
                ) -> dict[str, np.ndarray]:
    b, p = m["loss"].shape
    seq = np.repeat(np.arange(start, start + b), p)
    return {"label": np.full(b * p, label, dtype=object), "seq": seq,
            "pos": np.tile(np.arange(p), b), "token": ids[:, :-1].reshape(-1).cpu().numpy(),
            "next_token": ids[:, 1:].reshape(-1).cpu().numpy(),
            **{k: m[k].reshape(-1).cpu().numpy() for k in METRICS}}


# ---------------------------------------------------------------- run plumbing


def open_dataset(model: Any, dataset: str | None = None, tokens: int | None = None,
                 n_ctx: int | None = None, progress: bool = True) -> tuple[Any, int]:
    """The token dataset for a role analysis and how many sequences to use.

    ``dataset`` None = the bundled test split tokenized for ``model`` with context
    ``n_ctx`` (default ``min(512, model n_ctx)``); ``tokens`` caps the tokens used (rounded
    up to whole sequences). Raises ``UserError`` for a mismatched tokenizer or context.
    """
    from universal_neurons.data.dataset import dataset_for_models

    return dataset_for_models([model], dataset, n_ctx, tokens, show_progress=progress,
                              round_up=True)


@contextlib.contextmanager
def token_progress(total: int, desc: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A tqdm bar over ``total`` tokens; yields its ``update``."""
    from tqdm.auto import tqdm

    with tqdm(total=total, unit="tok", unit_scale=True, desc=desc, disable=not enabled) as bar:
        yield bar.update
