"""Streaming activation statistics of every neuron of one model (paper §4.2).

``ActivationStats`` is an :class:`~universal_neurons.engine.accumulator.Accumulator` over
the sites ``("pre", "post")``. Per neuron it keeps, exactly and mergeably:

- **moments** of the pre-activation (``blocks.{l}.mlp.hook_pre``): count, mean and the
  central sums M2..M4 in float64, combined batch by batch with the pairwise formulas of
  Chan et al. / Pébay (2008), never from histograms. ``var`` is the population variance
  (ddof=0), ``skew`` = √n·M3/M2^1.5 and ``kurt`` = n·M4/M2² are the biased estimators
  (scipy's defaults; ``kurt`` is *not* excess: a Gaussian gives 3). A constant neuron gets
  NaN skew/kurt.
- **sparsity** = fraction of kept tokens on which the neuron is active. Default rule
  ``post>0`` (post-activation positive; for GELU this is pre > 0); the paper's code used
  ``pre>-0.1``-style thresholds on the pre-activation, available as ``sparsity_rule``.
- **histogram** of the pre-activation, ``n_bins`` bins plus an underflow and an overflow
  bin. Bin widths are powers of two and edges are multiples of the width ("aligned
  grid"). The range is fixed from the first batch (its first ``hist_init_tokens`` rows)
  by the robust quantiles ``[q, 1-q]`` widened by ``hist_margin`` of the span each side
  (and rounded out to the grid); values outside land in
  the overflow bins (exact min/max are kept too). Two histograms with different grids are
  merged exactly: both are coarsened to the larger width (aligned grids nest, so whole bins
  map to whole bins) and the interior is the intersection of their ranges; counts outside
  it move to the overflow bins. Every count is therefore exact for the edges it reports.
- **candidate examples** of the post-activation (:class:`~universal_neurons.engine.
  example_candidates.ExampleCandidates`): value, sequence index and position of the
  ``top_k`` largest and the ``bottom_k`` smallest activations (exact, merged with
  ``torch.topk``; ties may pick either token) and a uniform sample of ``sample_k`` tokens
  with a positive activation (for the report's quantile bands).
- **per-token table** of the post-activation for a fixed set of token ids, normally the
  most frequent ones (:func:`frequent_token_ids`, from the token array before the pass):
  count, mean and max when the token is the current one, count and mean when it is the
  previous one. It reuses the families' :class:`~universal_neurons.engine.token_table.
  TokenTableAccumulator` on ids remapped to ``0..T-1`` (every other id -> group ``T``), so
  its memory is ``token_table_bytes(T + 1, N)``; :func:`plan_token_table` picks ``T`` for a
  budget.
- **whole-vocabulary token means** (with ``vocab_size``): count and mean post-activation of
  every token id, per neuron, in bounded memory (:class:`~universal_neurons.engine.
  vocab_means.VocabMeans`: float64 staging, float32 ``[V, N]`` store in RAM or spilled to a
  memory-mapped file). Written as ``vocab_token_count [V]`` and, per neuron, the
  ``vocab_top_k`` ids of highest mean among ids seen ``>= vocab_min_count`` times
  (``token_top_ids``/``token_top_mean [L, d_mlp, k]``); the frequent tokens' exact float64
  means are used for their ids.

Shapes: activations arrive as ``Float[n_kept, layers * d_mlp]`` (neuron ``l * d_mlp + i``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from universal_neurons.engine.activation_stats_config import (
    ActivationStatsConfig,
    merge_moments,
    parse_sparsity_rule,
)
from universal_neurons.engine.activation_stats_result import ActivationStatsResult
from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.example_candidates import ExampleCandidates
from universal_neurons.engine.frequent_tokens import (
    FrequentTokens,
    empty_token_arrays,
    frequent_token_ids,
    plan_token_table,
)
from universal_neurons.engine.pre_histogram import bin_counts, init_grid, merge_grids
from universal_neurons.engine.vocab_means import VocabMeans

log = logging.getLogger(__name__)

__all__ = ["ActivationStats", "ActivationStatsConfig", "activation_stats_for",
           "parse_sparsity_rule"]
class ActivationStats:
    """Moments, sparsity, histogram, top-k examples and per-token table of one model.

    Args:
        model: the model name in :class:`ActivationBatch` ``acts``.
        n_layers, d_mlp: shape of the model's MLP neurons.
        config: :class:`ActivationStatsConfig`.
        token_ids: ids tracked by the per-token table (``None``: no table), e.g. from
            :func:`frequent_token_ids` truncated by :func:`plan_token_table`.
        device: where the state lives (activations are moved there).
        vocab_size: keep the count and mean of every token id ``< vocab_size`` too
            (:class:`VocabMeans`; ``None``: only the ``token_ids`` table).
        vocab_top_k, vocab_min_count: per neuron, the ids of highest mean written, among
            ids seen at least ``vocab_min_count`` times.
        vocab_buffer_bytes, vocab_ram_bytes, spill_dir: the :class:`VocabMeans` staging
            buffer, the largest store kept in RAM, where a larger one is memory-mapped.
    """

    sites: tuple[str, ...] = ("pre", "post")

    def __init__(self, model: str, n_layers: int, d_mlp: int,
                 config: ActivationStatsConfig | None = None,
                 token_ids: np.ndarray | torch.Tensor | None = None,
                 device: str | torch.device = "cpu", *, vocab_size: int | None = None,
                 vocab_top_k: int = 10, vocab_min_count: int = 5,
                 vocab_buffer_bytes: int = 64 << 20, vocab_ram_bytes: int = 256 << 20,
                 spill_dir: str | None = None):
        self.model, self.n_layers, self.d_mlp = model, int(n_layers), int(d_mlp)
        self.config = config or ActivationStatsConfig()
        self.device = torch.device(device)
        self._rule = parse_sparsity_rule(self.config.sparsity_rule)
        n, k, nb, dev = self.n_neurons, self.config.top_k, self.config.n_bins, self.device
        f64: dict[str, Any] = dict(dtype=torch.float64, device=dev)
        i64: dict[str, Any] = dict(dtype=torch.int64, device=dev)
        self.n = 0
        self.mean, self.m2, self.m3, self.m4 = (torch.zeros(n, **f64) for _ in range(4))
        self.active = torch.zeros(n, **i64)
        self.pre_min = torch.full((n,), math.inf, **f64)
        self.pre_max = torch.full((n,), -math.inf, **f64)
        self.hist_exp = torch.zeros(n, **i64)  # bin width 2**exp
        self.hist_lo = torch.zeros(n, **i64)   # interior = [lo, hi) * 2**exp
        self.hist_hi = torch.zeros(n, **i64)
        self.hist = torch.zeros(n, nb + 2, **i64)  # [under, bins..., over]
        self.hist_ready = False
        c = self.config
        self.examples = ExampleCandidates(n, k, c.bottom_k, c.sample_k, dev)
        ids = torch.as_tensor(np.asarray([] if token_ids is None else token_ids, np.int64))
        self.tokens = FrequentTokens(model, ids, n, dev) if ids.numel() else None
        if vocab_top_k < 1 or vocab_min_count < 1:
            raise ValueError(f"vocab_top_k ({vocab_top_k}) and vocab_min_count "
                             f"({vocab_min_count}) must be >= 1")
        self.vocab_top_k, self.vocab_min_count = int(vocab_top_k), int(vocab_min_count)
        self.vocab = (VocabMeans(model, vocab_size, n, site="post",
                                 buffer_bytes=vocab_buffer_bytes, store_ram_bytes=vocab_ram_bytes,
                                 spill_dir=spill_dir, exact_ids=ids)
                      if vocab_size else None)

    @property
    def n_neurons(self) -> int:
        return self.n_layers * self.d_mlp

    @property
    def token_ids(self) -> torch.Tensor:
        """``Long[T]`` ids of the per-token table (empty without one)."""
        return self.tokens.token_ids if self.tokens else torch.zeros(0, dtype=torch.int64)

    @property
    def token_table_nbytes(self) -> int:
        """Bytes of the per-token table's state (what :func:`plan_token_table` bounds)."""
        return self.tokens.nbytes if self.tokens else 0

    def nbytes(self) -> int:
        """State bytes plus per-chunk scratch (for the engine's memory planner)."""
        state = sum(getattr(self, k).numel() * getattr(self, k).element_size()
                    for k in self._STATE)
        vocab = self.vocab.nbytes if self.vocab is not None else 0
        return (state + self.examples.nbytes + self.token_table_nbytes + vocab
                + self.scratch_nbytes())

    def scratch_nbytes(self) -> int:
        """Temporaries of one update (freed before the next accumulator runs)."""
        elements = min(self.config.chunk_elements, self.n_neurons * 8192)
        return 6 * 8 * elements + self.examples.scratch_nbytes(elements // self.n_neurons)

    # ------------------------------------------------------------------ update
    def update(self, batch: ActivationBatch) -> None:
        acts = batch.acts[self.model]
        pre, post = acts["pre"], acts["post"]
        if pre.shape != post.shape or pre.shape[-1] != self.n_neurons:
            raise ValueError(f"{self.model}: expected pre/post [n_kept, {self.n_neurons}], got "
                             f"{tuple(pre.shape)} and {tuple(post.shape)}")
        if not self.hist_ready and batch.n:
            self._init_hist(pre[:self.config.hist_init_tokens].to(self.device))
        rows = max(1, self.config.chunk_elements // self.n_neurons)
        for s in range(0, batch.n, rows):
            sl = slice(s, s + rows)
            self._update_chunk(pre[sl].to(self.device), post[sl].to(self.device),
                               batch.seq_index[sl].to(self.device),
                               batch.positions[sl].to(self.device))
        if self.tokens is not None:  # in row chunks too: its temporaries are ~[rows, 5N]
            for s in range(0, batch.n, rows):
                self.tokens.update(batch.rows(s, s + rows))
        if self.vocab is not None:
            self.vocab.update(batch)

    def _update_chunk(self, pre: torch.Tensor, post: torch.Tensor, seq: torch.Tensor,
                      pos: torch.Tensor) -> None:
        if pre.shape[0] == 0:
            return
        x = pre.to(torch.float64)  # [n, N]
        mb = x.mean(0)
        if not torch.isfinite(mb).all():
            bad = int(torch.nonzero(~torch.isfinite(mb))[0, 0])
            raise ValueError(f"{self.model}: non-finite pre-activation of neuron "
                             f"L{bad // self.d_mlp}.{bad % self.d_mlp}; check the model's dtype "
                             "(float32 recommended) and weights")
        d = x - mb
        d2 = d * d
        batch = (float(x.shape[0]), mb, d2.sum(0), (d2 * d).sum(0), (d2 * d2).sum(0))
        self._set_moments(merge_moments(self._moments(), batch))
        site, op, thr = self._rule
        v = pre if site == "pre" else post
        self.active += (v > thr if op == ">" else v >= thr).sum(0)
        torch.minimum(self.pre_min, x.amin(0), out=self.pre_min)
        torch.maximum(self.pre_max, x.amax(0), out=self.pre_max)
        self._bin(x)
        self.examples.update(post.float(), seq, pos)

    def _moments(self) -> tuple:
        return float(self.n), self.mean, self.m2, self.m3, self.m4

    def _set_moments(self, m: tuple) -> None:
        self.n, self.mean, self.m2, self.m3, self.m4 = int(m[0]), *m[1:]

    def _init_hist(self, x: torch.Tensor) -> None:
        c = self.config
        self.hist_exp, self.hist_lo, self.hist_hi = init_grid(
            x, c.n_bins, c.hist_quantile, c.hist_margin, c.chunk_elements, self.model)
        self.hist_ready = True

    def _bin(self, x: torch.Tensor) -> None:
        self.hist += bin_counts(x, self.hist_exp, self.hist_lo, self.hist_hi, self.config.n_bins)

    # ------------------------------------------------------------------ merge
    def merge(self, other: ActivationStats) -> None:
        """Add the statistics of ``other`` (disjoint tokens, same model/config) exactly."""
        if (other.n_neurons, other.config) != (self.n_neurons, self.config):
            raise ValueError(f"cannot merge ActivationStats of {other.n_neurons} neurons / "
                             f"{other.config} into {self.n_neurons} neurons / {self.config}")
        if not torch.equal(other.token_ids.cpu(), self.token_ids.cpu()):
            raise ValueError("cannot merge ActivationStats tracking different token ids")
        if (self.vocab is None) != (other.vocab is None):
            raise ValueError("cannot merge ActivationStats with and without the "
                             "whole-vocabulary table")
        o = {k: v.to(self.device) if torch.is_tensor(v) else v
             for k, v in other.state_dict().items()}
        self._set_moments(merge_moments(
            self._moments(), (float(o["n"]), o["mean"], o["m2"], o["m3"], o["m4"])))
        self.active += o["active"]
        torch.minimum(self.pre_min, o["pre_min"], out=self.pre_min)
        torch.maximum(self.pre_max, o["pre_max"], out=self.pre_max)
        self._merge_hist(o)
        self.examples.merge({k: o[k] for k in ExampleCandidates.STATE})
        if self.tokens is not None and other.tokens is not None:
            self.tokens.table.merge(other.tokens.table)
        if self.vocab is not None and other.vocab is not None:
            self.vocab.merge(other.vocab)

    def _merge_hist(self, o: dict[str, Any]) -> None:
        if not o["hist_ready"]:
            return
        if not self.hist_ready:
            self.hist_exp, self.hist_lo, self.hist_hi, self.hist = (
                o["hist_exp"].clone(), o["hist_lo"].clone(), o["hist_hi"].clone(), o["hist"].clone())
            self.hist_ready = True
            return
        self.hist_exp, self.hist_lo, self.hist_hi, self.hist = merge_grids(
            (self.hist_exp, self.hist_lo, self.hist_hi, self.hist),
            (o["hist_exp"], o["hist_lo"], o["hist_hi"], o["hist"]), self.config.n_bins)

    # ------------------------------------------------------------------ state
    _STATE = ("mean", "m2", "m3", "m4", "active", "pre_min", "pre_max", "hist_exp", "hist_lo",
              "hist_hi", "hist")

    def state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {k: getattr(self, k).cpu() for k in self._STATE}
        sd.update(self.examples.state_dict())
        sd.update(n=int(self.n), hist_ready=bool(self.hist_ready), model=self.model,
                  n_layers=self.n_layers, d_mlp=self.d_mlp, config=asdict(self.config),
                  token_ids=self.token_ids.clone(),
                  token_table=self.tokens.table.state_dict() if self.tokens else None,
                  vocab=self.vocab.state_dict() if self.vocab is not None else None)
        return sd

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["n_layers"], state["d_mlp"]) != (self.n_layers, self.d_mlp):
            raise ValueError(f"state of a {state['n_layers']}x{state['d_mlp']} model cannot be "
                             f"loaded into {self.n_layers}x{self.d_mlp}")
        self.config = ActivationStatsConfig(**state["config"])
        self._rule = parse_sparsity_rule(self.config.sparsity_rule)
        c = self.config
        self.examples = ExampleCandidates(self.n_neurons, c.top_k, c.bottom_k, c.sample_k,
                                          self.device)
        for k in self._STATE:
            setattr(self, k, state[k].to(self.device).clone())
        if not self.examples.load_state_dict(state, self.device) and int(state["n"]) > 0:
            log.warning("%s: the checkpoint has no negative or sampled examples; they cover "
                        "only the tokens after it", self.model)
        ids = state["token_ids"]
        self.tokens = FrequentTokens(self.model, ids, self.n_neurons, self.device) if ids.numel() else None
        if self.tokens is not None:
            self.tokens.table.load_state_dict(state["token_table"])
        if self.vocab is not None:
            if state.get("vocab") is not None:
                self.vocab.load_state_dict(state["vocab"])
            elif int(state["n"]) > 0:  # it would miss the tokens before the checkpoint
                log.warning("%s: the checkpoint has no whole-vocabulary token table; it is "
                            "off for this run", self.model)
                self.vocab = None
        self.n, self.hist_ready = int(state["n"]), bool(state["hist_ready"])

    # ------------------------------------------------------------------ finalize
    def finalize(self) -> ActivationStatsResult:
        n, shape = self.n, (self.n_layers, self.d_mlp)

        def per_neuron(t: torch.Tensor) -> np.ndarray:
            return t.detach().cpu().numpy().reshape(*shape, *t.shape[1:])

        with np.errstate(divide="ignore", invalid="ignore"):
            m2 = self.m2.cpu().numpy()
            var = m2 / n if n else np.full_like(m2, np.nan)
            skew = np.sqrt(n) * self.m3.cpu().numpy() / m2**1.5
            kurt = n * self.m4.cpu().numpy() / m2**2
        w = np.exp2(self.hist_exp.cpu().numpy().astype(np.float64))
        arrays: dict[str, Any] = {
            **{k: per_neuron(v) for k, v in self.examples.arrays().items()},
            **(self.tokens.finalize(shape) if self.tokens else empty_token_arrays(0, shape)),
            **self._vocab_arrays(shape)}
        return ActivationStatsResult(
            model=self.model, n_tokens=n, sparsity_rule=self.config.sparsity_rule,
            mean=per_neuron(self.mean), var=var.reshape(shape), skew=skew.reshape(shape),
            kurt=kurt.reshape(shape),
            sparsity=(self.active.cpu().numpy() / max(n, 1)).reshape(shape),
            pre_min=per_neuron(self.pre_min), pre_max=per_neuron(self.pre_max),
            hist=per_neuron(self.hist),
            hist_lo=(self.hist_lo.cpu().numpy() * w).reshape(shape),
            hist_hi=(self.hist_hi.cpu().numpy() * w).reshape(shape), hist_width=w.reshape(shape),
            token_ids=self.token_ids.numpy(), **arrays)

    def _vocab_arrays(self, shape: tuple[int, int]) -> dict[str, np.ndarray]:
        if self.vocab is None:
            return {}
        exact = None
        if self.tokens is not None and self.tokens.table.n_rows:
            t = self.tokens.token_ids.numel()
            tab = self.tokens.table.finalize()
            exact = (self.tokens.token_ids, tab.current.count[:t],
                     tab.group_mean(tab.current)[:t])
        ids, means = self.vocab.top_k(self.vocab_top_k, self.vocab_min_count, exact)
        count = self.vocab.count.clone()
        if exact is not None:
            count[exact[0]] = exact[1].cpu()
        k = ids.shape[1]
        return dict(vocab_token_count=count.numpy(),
                    token_top_ids=ids.int().numpy().reshape(*shape, k),
                    token_top_mean=means.float().numpy().reshape(*shape, k))


def activation_stats_for(models: Any, dataset: Any, n_seq: int | None = None,
                         config: ActivationStatsConfig | None = None, *,
                         token_budget_bytes: int = 256 << 20, n_frequent_tokens: int = 1000,
                         keep_all: bool = False, keep_rule: str = "ours",
                         device: str | torch.device = "cpu",
                         whole_vocab: bool = True, spill_dir: str | None = None
                         ) -> list[ActivationStats]:
    """One :class:`ActivationStats` per loaded model, ready to be fed by the engine's pass
    (alone, or as ``extra_accumulators`` of correlate).

    The per-token table tracks the ``n_frequent_tokens`` most frequent kept tokens of the
    first ``n_seq`` sequences of ``dataset`` (counted from the token array, before the
    pass), as many as ``token_budget_bytes`` allows per model (0 disables it).

    ``whole_vocab`` (with a non-zero budget) also keeps every token id's count and mean
    (:class:`~universal_neurons.engine.vocab_means.VocabMeans`): its ``[V, N]`` float32 store
    stays in RAM up to ``token_budget_bytes`` and is a memory-mapped file in ``spill_dir``
    (default: the system's temporary folder) beyond; its float64 staging buffer takes a
    quarter of the budget on top.
    """
    from universal_neurons.data.tokens import keep_mask

    tokens = dataset.tokens[: dataset.n_seq if n_seq is None else n_seq]
    tokenizer = models[0].tokenizer if models else None
    ids = np.zeros(0, np.int64)
    if n_frequent_tokens > 0 and token_budget_bytes > 0:
        ids = frequent_token_ids(tokens, n_frequent_tokens,
                                 lambda t: keep_mask(t, tokenizer, keep_all,
                                                     keep_rule))  # type: ignore[arg-type]
    out = []
    for m in models:
        ad = m.adapter
        n = plan_token_table(ad.n_layers * ad.d_mlp, token_budget_bytes, len(ids), ad.d_vocab)
        if n < len(ids):
            log.info("%s: per-token table limited to the %d most frequent tokens by the "
                     "%.0f MiB budget", m.name, n, token_budget_bytes / 2**20)
        vocab = ad.d_vocab if whole_vocab and token_budget_bytes > 0 else None
        out.append(ActivationStats(m.name, ad.n_layers, ad.d_mlp, config, token_ids=ids[:n],
                                   device=device, vocab_size=vocab,
                                   vocab_buffer_bytes=max(1, token_budget_bytes // 4),
                                   vocab_ram_bytes=token_budget_bytes, spill_dir=spill_dir))
    return out
