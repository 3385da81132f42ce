"""The examples a report shows per neuron, and the activation at every token of their windows.

After the stats pass, :func:`select_examples` picks per neuron, from the candidates of
:class:`~universal_neurons.engine.example_candidates.ExampleCandidates`:

1. up to ``n_top`` **top** examples (largest activation first);
2. ``per_band`` examples from each **quantile band** of the neuron's positive activations
   (default 50-75 %, 75-90 %, 90-99 %), estimated from the uniform sample: the band's edges
   are the sample's quantiles (``numpy.quantile``, linear), its examples sample members
   inside them, spread evenly over the band's ranks;
3. up to ``n_negative`` **most negative** examples (activation < 0, smallest first).

No two examples of a neuron come from overlapping windows of the same sequence: windows
``[p - before, p + after]`` and ``[q - before, q + after]`` overlap iff ``|p - q| <= before +
after``, and a candidate overlapping one already taken is skipped (greedy in the order
above).

Then :func:`replay_windows` runs the model once more on only the sequences those examples
come from (batched, each cut after the last position any of its windows needs; the model is
causal, so the cut changes no activation) and records the post-activation of every token of
every window, BOS and newlines included. This costs at most one forward per needed sequence
and no memory during the pass; recording windows in the pass would need ``k x window``
floats per neuron and candidate, and the tokens the pass drops (BOS, newlines) would have no
value.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from universal_neurons.engine.activation_stats_result import ActivationStatsResult

log = logging.getLogger(__name__)

KIND_EMPTY, KIND_TOP, KIND_NEGATIVE, KIND_BAND = -1, 0, 1, 2
"""``example_kind`` codes; band ``b`` (in ``ExampleConfig.bands`` order) is ``KIND_BAND + b``."""


@dataclass(frozen=True)
class ExampleConfig:
    """Which examples are shown per neuron and the window recorded around each."""

    before: int = 7
    """Tokens of the window before the example's token..."""
    after: int = 3
    """...and after it."""
    n_top: int = 10
    n_negative: int = 5
    per_band: int = 3
    bands: tuple[tuple[float, float], ...] = ((0.5, 0.75), (0.75, 0.9), (0.9, 0.99))
    """Quantile bands of the positive activations, as fractions."""
    batch_size: int = 8
    """Sequences per forward pass of the replay."""

    def __post_init__(self) -> None:
        for k in ("before", "after", "n_top", "n_negative", "per_band"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for lo, hi in self.bands:
            if not 0 <= lo < hi <= 1:
                raise ValueError(f"bad quantile band ({lo}, {hi}); expected 0 <= lo < hi <= 1")

    @property
    def width(self) -> int:
        return self.before + 1 + self.after

    @property
    def n_slots(self) -> int:
        return self.n_top + self.n_negative + self.per_band * len(self.bands)

    def meta(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("batch_size")
        d["bands"] = [list(b) for b in self.bands]
        return d


def _band_picks(values: np.ndarray, bands: Sequence[tuple[float, float]]
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    """``edges [n_bands, 2]`` (sample quantiles) and, per band, indices into ``values`` of
    the members in rank order."""
    edges = np.full((len(bands), 2), np.nan, np.float32)
    members: list[np.ndarray] = []
    order = np.argsort(values, kind="stable")
    for b, (lo, hi) in enumerate(bands):
        if len(values) == 0:
            members.append(order)
            continue
        e = np.quantile(values.astype(np.float64), [lo, hi])
        edges[b] = e
        inside = (values[order] >= e[0]) & (values[order] <= e[1])
        members.append(order[inside])
    return edges, members


def _spread(idx: np.ndarray, n: int) -> np.ndarray:
    """``idx`` reordered so that its first ``n`` are spread evenly over it, then the rest."""
    if len(idx) <= n or n == 0:
        return idx
    first = np.unique(np.linspace(0, len(idx) - 1, n).round().astype(int))
    return np.concatenate([idx[first], np.delete(idx, first)])


def select_neuron(cand: dict[str, np.ndarray], cfg: ExampleConfig
                  ) -> tuple[list[tuple[int, float, int, int]], np.ndarray]:
    """One neuron's ``[(kind, value, seq, pos)]`` and band edges ``[n_bands, 2]`` from its
    candidates ``{top,bottom,sample}_{values,seq,pos}: [k]``."""
    taken: dict[int, list[int]] = {}
    span = cfg.before + cfg.after
    out: list[tuple[int, float, int, int]] = []

    def take(kind: int, vals, seqs, poss, order, limit: int) -> None:
        n = 0
        for i in order:
            if n >= limit:
                break
            s, p = int(seqs[i]), int(poss[i])
            if s < 0 or any(abs(p - q) <= span for q in taken.get(s, ())):
                continue
            taken.setdefault(s, []).append(p)
            out.append((kind, float(vals[i]), s, p))
            n += 1

    tv = cand["top_values"]
    take(KIND_TOP, tv, cand["top_seq"], cand["top_pos"], np.argsort(-tv, kind="stable"), cfg.n_top)
    sv, ss = cand["sample_values"], cand["sample_seq"]
    ok = np.flatnonzero((ss >= 0) & np.isfinite(sv))
    edges, members = _band_picks(sv[ok], cfg.bands)
    for b in reversed(range(len(cfg.bands))):  # the highest band first
        take(KIND_BAND + b, sv, ss, cand["sample_pos"], ok[_spread(members[b], cfg.per_band)],
             cfg.per_band)
    bv = cand["bottom_values"]
    neg = [i for i in np.argsort(bv, kind="stable") if bv[i] < 0]
    take(KIND_NEGATIVE, bv, cand["bottom_seq"], cand["bottom_pos"], neg, cfg.n_negative)
    return out, edges


def select_examples(res: ActivationStatsResult, cfg: ExampleConfig) -> dict[str, np.ndarray]:
    """``example_{seq,pos,value,kind}: [L, d_mlp, E]`` and ``band_edges [L, d_mlp, B, 2]``
    of every neuron (E = ``cfg.n_slots``; unused slots have kind -1, seq -1)."""
    shape = res.top_values.shape[:2]
    n, e = int(np.prod(shape)), cfg.n_slots
    seq = np.full((n, e), -1, np.int64)
    pos = np.full((n, e), -1, np.int64)
    value = np.full((n, e), np.nan, np.float32)
    kind = np.full((n, e), KIND_EMPTY, np.int8)
    edges = np.full((n, len(cfg.bands), 2), np.nan, np.float32)
    names = [f"{a}_{b}" for a in ("top", "bottom", "sample") for b in ("values", "seq", "pos")]
    flat = {k: _per_neuron(getattr(res, k), n) for k in names}
    for i in range(n):
        picks, edges[i] = select_neuron({k: v[i] for k, v in flat.items()}, cfg)
        for j, (k, v, s, p) in enumerate(picks):
            kind[i, j], value[i, j], seq[i, j], pos[i, j] = k, v, s, p
    r = (*shape, e)
    return dict(example_seq=seq.reshape(r), example_pos=pos.reshape(r),
                example_value=value.reshape(r), example_kind=kind.reshape(r),
                band_edges=edges.reshape(*shape, len(cfg.bands), 2))


def _per_neuron(a: np.ndarray, n: int) -> np.ndarray:
    """``[L, d_mlp, k]`` -> ``[N, k]``; an empty array (a version-1 file) -> ``[N, 0]``."""
    return a.reshape(n, -1) if a.size else np.zeros((n, 0), a.dtype)


@torch.no_grad()
def replay_windows(adapter: Any, tokens: Any, seq: np.ndarray, pos: np.ndarray,
                   cfg: ExampleConfig, device: str | torch.device = "cpu") -> np.ndarray:
    """``Float32[N, E, width]`` post-activation of neuron ``i`` (``layer * d_mlp + j``) at
    positions ``pos[i, e] - before .. pos[i, e] + after`` of sequence ``seq[i, e]`` of
    ``tokens: [n_seq, n_ctx]`` (NaN outside the sequence and for ``seq < 0``)."""
    n, e = seq.shape
    n_ctx = int(tokens.shape[1])
    out = np.full((n, e, cfg.width), np.nan, np.float32)
    ent_n, ent_e = np.nonzero(seq >= 0)
    s_all, p_all = seq[ent_n, ent_e], pos[ent_n, ent_e]
    order = np.argsort(s_all, kind="stable")
    ent_n, ent_e, s_all, p_all = ent_n[order], ent_e[order], s_all[order], p_all[order]
    needed = np.unique(s_all)
    offsets = np.arange(-cfg.before, cfg.after + 1)
    for c in range(0, len(needed), cfg.batch_size):
        chunk = needed[c:c + cfg.batch_size]
        lo = int(np.searchsorted(s_all, chunk[0], side="left"))
        hi = int(np.searchsorted(s_all, chunk[-1], side="right"))
        end = int(min(n_ctx, p_all[lo:hi].max() + cfg.after + 1))
        ids = torch.as_tensor(np.asarray(tokens[chunk, :end], dtype=np.int64), device=device)
        acts = adapter.capture(ids, sites=("post",),
                               attention_mask=torch.ones_like(ids))["post"]  # [L, b, end, d]
        acts = acts.float().permute(1, 2, 0, 3).reshape(len(chunk), end, -1)  # [b, end, N]
        rows = torch.as_tensor(np.searchsorted(chunk, s_all[lo:hi]), device=acts.device)
        q = p_all[lo:hi, None] + offsets  # [m, W]
        inside = (q >= 0) & (q < end)
        qt = torch.as_tensor(np.clip(q, 0, end - 1), device=acts.device)
        col = torch.as_tensor(ent_n[lo:hi], device=acts.device)
        vals = acts[rows[:, None], qt, col[:, None]].cpu().numpy()
        out[ent_n[lo:hi], ent_e[lo:hi]] = np.where(inside, vals, np.nan)
    return out


def add_examples(res: ActivationStatsResult, adapter: Any, tokens: Any,
                 cfg: ExampleConfig | None = None, device: str | torch.device = "cpu") -> None:
    """Select ``res``'s shown examples and record their windows (fills ``res.example_*``,
    ``res.band_edges`` and ``res.examples``) by replaying ``tokens`` through ``adapter``."""
    cfg = cfg or ExampleConfig()
    sel = select_examples(res, cfg)
    shape = sel["example_seq"].shape
    n = shape[0] * shape[1]
    acts = replay_windows(adapter, tokens, sel["example_seq"].reshape(n, -1),
                          sel["example_pos"].reshape(n, -1), cfg, device)
    focus = acts[..., cfg.before]
    kept = sel["example_seq"].reshape(n, -1) >= 0
    v = sel["example_value"].reshape(n, -1)
    diff = np.abs(focus - v)[kept]
    if diff.size and not np.all(diff <= 1e-3 * np.maximum(1.0, np.abs(v[kept]))):
        log.warning("%s: replayed activations differ from the pass's by up to %.3g; was the "
                    "dataset or the model changed?", res.model, float(np.nanmax(diff)))
    for k, a in sel.items():
        setattr(res, k, a)
    res.example_acts = acts.reshape(*shape, cfg.width)
    res.examples = cfg.meta()
    log.info("%s: %d example windows from %d sequences", res.model, int(kept.sum()),
             len(np.unique(sel["example_seq"][sel["example_seq"] >= 0])))
