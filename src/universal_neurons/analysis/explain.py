"""Variance-reduction explanations of neurons by binary features (paper §4.3).

For a neuron with activations ``a`` over ``n`` rows and a binary feature ``f`` splitting the
rows into ``g ∈ {f, ¬f}``::

    VR = 1 − Σ_g p_g · Var_g(a) / Var(a) = n_f · n_¬f / n · (m_f − m_¬f)² / SS_total

(population variances, so VR is exactly η², the share of variance the split explains).
The paper's pandas code (``analysis/heuristic_explanation.py``) uses sample variances,
``ddof=1``, in all three places: ``ddof=1`` here (``--vr-ddof 1``) gives its value, which
differs by O(1/n_f) for a feature with ``n_f`` rows. (The paper also computes ``a`` as
``torch.nn.GELU()`` — the erf form — of cached pre-activations, while GPT-2's own MLP uses
the tanh approximation: ``--site post`` here is the model's own post-activation; the two
differ by < 1e-3 per value.) Three kinds of features:

* ``current``: token features (``analysis.features``) of the token at the row;
* ``prev``: token features of the previous token of the same sequence; rows at position 0
  have no previous token and are left out of both the groups *and* the total;
* ``sequence``: per-row labels (``analysis.sequence_features``: spaCy POS / dependency /
  entity, position bins, context flags).

Everything comes from one pass: the token table (``engine.token_table``) holds per token
id ``count, Σa, Σa²`` for current and previous tokens, so for a feature matrix
``M [F, vocab]`` the in-group sums are ``M @ Σa`` — exact, no second pass, any number of
features. Sequence labels are grouped by one-hot (sparse) products in the same pass.
Per neuron the module also gives ``position_eta2`` (share of variance explained by the
position bins jointly) and ``position_mi``: the mutual information, in **nats**, between
the context position (every position, not bins) and whether the neuron fires, ``a > 0``:

    I = Σ_t p_t · [q_t log(q_t / q) + (1 − q_t) log((1 − q_t) / (1 − q))]

with ``p_t`` the share of rows at position ``t``, ``q_t`` the firing rate there and ``q``
overall. This is the paper's ``pos_mutual_info`` (``paper_notebooks/
position_neurons.ipynb``), which weights every position by ``1/n_ctx``: the two agree
when every position has the same number of rows, as in the paper (it keeps every token);
with dropped tokens (BOS, newlines) ``p_t`` weights by the rows actually kept. The paper
thresholds the pre-activation, ``pre > 0``; for GELU and SiLU ``post > 0`` is the same
event. (An earlier version used 16 position bins and bits.)

Outputs (see :func:`run_explain`): ``RUN/explanations/<model>.parquet`` (top-k
explanations per neuron: ``layer, neuron, rank, kind, feature, group, vr, mean_in,
mean_out, frac_in``), ``RUN/explanations/<model>_vr.parquet`` (every VR, one row per
neuron, columns ``<kind>/<feature>``, plus per-neuron summaries) and the vocabulary
features ``RUN/features/<tokenizer>/vocab_features.parquet``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from universal_neurons.analysis.features import feature_group, feature_matrix
from universal_neurons.analysis.sequence_features import POSITION_EACH, scheme_features
from universal_neurons.constants import (
    EXPLANATIONS_DIR,
    EXPLANATIONS_TOP,
    EXPLANATIONS_VR,
    safe_name,
)
from universal_neurons.engine.token_table import GroupTable, TokenTable
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)

KINDS = ("current", "prev", "sequence")
NEURON_SUMMARY = ("n_rows", "act_mean", "act_var", "fire_rate", "position_eta2", "position_mi",
                  "top_tokens")


# ---- the algebra ---------------------------------------------------------------------------
@dataclass
class SplitStats:
    """Result of :func:`variance_reduction` for ``F`` features and ``N`` neurons."""

    vr: torch.Tensor  # [F, N]
    mean_in: torch.Tensor  # [F, N] mean activation where the feature holds (NaN if never)
    mean_out: torch.Tensor  # [F, N] mean where it does not (NaN if always)
    frac_in: torch.Tensor  # [F] fraction of rows with the feature


def variance_reduction(member: torch.Tensor, count: torch.Tensor, sums: torch.Tensor,
                       total_sumsq: torch.Tensor, shift: torch.Tensor,
                       sumsq: torch.Tensor | None = None, ddof: int = 0) -> SplitStats:
    """VR of every feature for every neuron from group sums.

    ``member: [F, G]`` 0/1 (dense or sparse CSR) says which groups make up each feature;
    ``count: [G]``, ``sums: [G, N]`` (of ``a − shift``) are the groups' rows and sums, and
    ``total_sumsq: [N]`` the total ``Σ(a − shift)²`` over the same rows as the groups.
    ``ddof=1`` (the paper's sample variances) needs the groups' ``sumsq: [G, N]``:
    ``VR = 1 − Σ_g (n_g/n) · SS_g/(n_g − 1) / (SS/(n − 1))`` (not clamped at 0: it can be
    slightly negative, as the paper's). Features with a group of fewer than 2 rows get 0.
    """
    c = count.to(torch.float64)
    member = member.to(torch.float64)
    n = c.sum()
    tot = sums.sum(0)  # [N]
    n_f = (member @ c.unsqueeze(1)).squeeze(1)  # [F]
    s_f = member @ sums  # [F, N]
    n_r = n - n_f
    s_r = tot - s_f
    m_f = s_f / n_f.unsqueeze(1)  # NaN/inf where a group is empty; masked below
    m_r = s_r / n_r.unsqueeze(1)
    between = (n_f * n_r / n).unsqueeze(1) * (m_f - m_r) ** 2  # [F, N]
    sst = total_sumsq - tot * tot / n  # [N]
    if ddof == 0:
        vr = between / sst
        ok = (n_f > 0).unsqueeze(1) & (n_r > 0).unsqueeze(1) & (sst > 0).unsqueeze(0)
    elif ddof == 1:
        if sumsq is None:
            raise ValueError("ddof=1 needs the groups' sums of squares")
        q_f = member @ sumsq.to(torch.float64)  # [F, N]
        ss_f = q_f - s_f * s_f / n_f.unsqueeze(1)
        ss_r = (total_sumsq - q_f) - s_r * s_r / n_r.unsqueeze(1)
        nf, nr = n_f.unsqueeze(1), n_r.unsqueeze(1)
        split = (nf / n) * ss_f / (nf - 1) + (nr / n) * ss_r / (nr - 1)
        vr = 1.0 - split / (sst / (n - 1))
        ok = (n_f > 1).unsqueeze(1) & (n_r > 1).unsqueeze(1) & (sst > 0).unsqueeze(0)
    else:
        raise ValueError(f"ddof must be 0 or 1, got {ddof}")
    vr = torch.where(ok, vr, torch.zeros_like(vr))
    # ddof 0: η² is in [0, 1], clamp rounding; ddof 1 can be slightly negative, as the paper's
    vr = vr.clamp(0.0, 1.0) if ddof == 0 else vr.clamp(max=1.0)
    return SplitStats(vr, m_f + shift, m_r + shift, n_f / n)


def eta_squared(table: GroupTable, total_sumsq: torch.Tensor) -> torch.Tensor:
    """``[N]`` share of variance explained by all groups of ``table`` jointly."""
    c = table.count.to(torch.float64)
    keep = c > 0
    c, s = c[keep], table.sum[keep]
    n = c.sum()
    tot = s.sum(0)
    between = (s * s / c.unsqueeze(1)).sum(0) - tot * tot / n
    sst = total_sumsq - tot * tot / n
    return torch.where(sst > 0, (between / sst).clamp(0, 1), torch.zeros_like(sst))


def fire_mutual_information(table: GroupTable, base: float = np.e) -> torch.Tensor:
    """``[N]`` I(group; a > 0) from per-group counts and firing counts, in nats (``base``
    e) or bits (``base`` 2)."""
    if table.fire is None:
        raise ValueError("this group table has no firing counts")
    c = table.count.to(torch.float64).unsqueeze(1)  # [G, 1]
    n = c.sum()
    p_g = c / n

    def h(p: torch.Tensor) -> torch.Tensor:
        p = p.clamp(0, 1)
        return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p)) / np.log(base)

    p_fire = table.fire.sum(0) / n  # [N]
    cond = torch.where(c > 0, h(table.fire / c.clamp(min=1)), torch.zeros(1, dtype=c.dtype))
    return (h(p_fire) - (p_g * cond).sum(0)).clamp(min=0)


# ---- from a token table to explanations ------------------------------------------------------
@dataclass
class Explanations:
    """VRs of every feature for every explained neuron of one model."""

    model: str
    neurons: pd.DataFrame  # [N] layer, neuron + NEURON_SUMMARY
    columns: list[str]  # [F_all] "<kind>/<feature>"
    vr: np.ndarray  # [N, F_all] float64 (written as float32)
    mean_in: np.ndarray  # [N, F_all] float32
    mean_out: np.ndarray  # [N, F_all] float32
    frac_in: np.ndarray  # [F_all]
    meta: dict[str, Any] = field(default_factory=dict)

    def wide(self) -> pd.DataFrame:
        """One row per neuron: summaries and every VR (columns ``<kind>/<feature>``)."""
        vr = pd.DataFrame(self.vr.astype(np.float32), columns=self.columns)
        return pd.concat([self.neurons.reset_index(drop=True), vr], axis=1)

    def top(self, k: int = 10) -> pd.DataFrame:
        """The ``k`` features with the largest VR per neuron, long format."""
        k = min(k, len(self.columns))
        order = np.argsort(-self.vr, axis=1, kind="stable")[:, :k]  # [N, k]
        rows = np.repeat(np.arange(len(self.neurons)), k)
        cols = order.reshape(-1)
        kinds, feats = zip(*(c.split("/", 1) for c in self.columns))
        kinds_a, feats_a = np.array(kinds), np.array(feats, dtype=object)
        return pd.DataFrame({
            "layer": self.neurons["layer"].to_numpy()[rows],
            "neuron": self.neurons["neuron"].to_numpy()[rows],
            "rank": np.tile(np.arange(k), len(self.neurons)),
            "kind": kinds_a[cols], "feature": feats_a[cols],
            "group": [feature_group(f) for f in feats_a[cols]],
            "vr": self.vr[rows, cols], "mean_in": self.mean_in[rows, cols],
            "mean_out": self.mean_out[rows, cols], "frac_in": self.frac_in[cols],
        })

    @staticmethod
    def concat(parts: Sequence[Explanations]) -> Explanations:
        """Join explanations of disjoint neuron tiles (same features)."""
        first = parts[0]
        if any(p.columns != first.columns for p in parts):
            raise ValueError("explanation tiles have different features")
        return Explanations(first.model, pd.concat([p.neurons for p in parts], ignore_index=True),
                            first.columns, np.concatenate([p.vr for p in parts]),
                            np.concatenate([p.mean_in for p in parts]),
                            np.concatenate([p.mean_out for p in parts]), first.frac_in,
                            first.meta)


def _csr(m: np.ndarray) -> torch.Tensor:
    import warnings

    dense = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sparse CSR "beta" notice
        return dense.to_sparse_csr()


def explain_table(table: TokenTable, vocab_features: pd.DataFrame, d_mlp: int,
                  strings: Sequence[str] | None = None, min_token_count: int = 5,
                  n_top_tokens: int = 5, ddof: int = 0) -> Explanations:
    """All VRs for the neurons of ``table``.

    ``vocab_features``: frame from ``analysis.features.build_vocab_features`` (rows = token
    ids, the table's vocabulary). ``strings``: surface strings, to list each neuron's
    ``top_tokens`` (highest mean activation among tokens seen ``min_token_count`` times).
    """
    names, mat = feature_matrix(vocab_features)  # [F, V]
    V = table.current.count.shape[0]
    if mat.shape[1] != V:
        raise ValueError(f"vocabulary features cover {mat.shape[1]} tokens, the token table {V}")
    member = _csr(mat)
    shift = table.shift
    cols: list[str] = []
    parts: list[SplitStats] = []
    cur = variance_reduction(member, table.current.count, table.current.sum, table.total_sumsq,
                             shift, table.current.sumsq, ddof)
    prev = variance_reduction(member, table.previous.count, table.previous.sum,
                              table.previous.sumsq.sum(0), shift, table.previous.sumsq, ddof)
    for kind, st in (("current", cur), ("prev", prev)):
        cols += [f"{kind}/{n}" for n in names]
        parts.append(st)
    seq_feats = scheme_features(table.scheme_labels)
    for scheme in table.scheme_labels:
        feats = [(name, code) for name, s, code in seq_feats if s == scheme]
        if not feats:
            continue
        g = table.sequence[scheme]
        onehot = torch.zeros(len(feats), g.count.shape[0], dtype=torch.float64)
        onehot[torch.arange(len(feats)), torch.tensor([c for _, c in feats])] = 1.0
        parts.append(variance_reduction(onehot, g.count, g.sum, table.total_sumsq, shift,
                                        g.sumsq, ddof))
        cols += [f"sequence/{name}" for name, _ in feats]

    def cat(attr: str, dtype: torch.dtype = torch.float32) -> np.ndarray:
        return torch.cat([getattr(p, attr) for p in parts]).T.to(dtype).numpy()  # [N, F_all]

    flat = table.neurons.numpy()
    neurons = pd.DataFrame({"layer": flat // d_mlp, "neuron": flat % d_mlp,
                            "n_rows": table.n_rows, "act_mean": table.mean.numpy(),
                            "act_var": table.var.numpy()})
    neurons["fire_rate"] = np.nan
    neurons["position_eta2"] = np.nan
    neurons["position_mi"] = np.nan
    pos = table.sequence.get("position")
    if pos is not None and pos.fire is not None:
        neurons["fire_rate"] = (pos.fire.sum(0) / table.n_rows).numpy()
        neurons["position_eta2"] = eta_squared(pos, table.total_sumsq).numpy()
    each = table.sequence.get(POSITION_EACH)
    if each is not None and each.fire is not None:
        neurons["position_mi"] = fire_mutual_information(each).numpy()
    neurons["top_tokens"] = _top_tokens(table, strings, min_token_count, n_top_tokens)
    return Explanations(table.model, neurons, cols, cat("vr", torch.float64), cat("mean_in"),
                        cat("mean_out"), torch.cat([p.frac_in for p in parts]).numpy())


def _top_tokens(table: TokenTable, strings: Sequence[str] | None, min_count: int, k: int
                ) -> list[str]:
    """Per neuron, a JSON list of the tokens with the highest mean activation."""
    if strings is None:
        return [""] * table.neurons.numel()
    seen = table.current.count >= min_count
    if not bool(seen.any()):
        return ["[]"] * table.neurons.numel()
    ids = torch.nonzero(seen).squeeze(1)
    cur = table.current
    means = cur.sum[ids] / cur.count[ids].to(torch.float64).unsqueeze(1)  # [V_seen, N] (shifted)
    top = means.topk(min(k, len(ids)), dim=0).indices  # [k, N]
    return [json.dumps([strings[int(ids[i])] for i in top[:, j]], ensure_ascii=False)
            for j in range(top.shape[1])]


# ---- neuron selection ---------------------------------------------------------------------
def select_neurons(spec: str, n_layers: int, d_mlp: int, neuron_table: Path | None = None
                   ) -> np.ndarray:
    """Flat neuron indices (``layer * d_mlp + neuron``, sorted) for ``--neurons``.

    ``all``; ``universal`` (``is_universal`` of ``neuron_table``); or a comma list of names
    ``L3.17,L5.2``.
    """
    from universal_neurons.constants import parse_neuron_name

    spec = spec.strip()
    if spec == "all":
        return np.arange(n_layers * d_mlp)
    if spec == "universal":
        if neuron_table is None or not Path(neuron_table).exists():
            raise UserError(f"--neurons universal needs the neuron table {neuron_table} written "
                            "by `universal-neurons correlate`; run it first, or pass "
                            "--neurons all or a list like L3.17,L5.2")
        df = pd.read_parquet(neuron_table, columns=None)
        if "is_universal" not in df.columns:
            raise UserError(f"{neuron_table} has no is_universal column; run `universal-neurons "
                            "correlate` for this model, or pass --neurons all or a list")
        u = df[df["is_universal"].fillna(False).astype(bool)]
        if u.empty:
            raise UserError(f"{neuron_table} marks no neuron universal; pass --neurons all or "
                            "a list like L3.17,L5.2")
        flat = u["layer"].to_numpy(np.int64) * d_mlp + u["neuron"].to_numpy(np.int64)
        return np.unique(flat)
    out = []
    for name in spec.split(","):
        layer, neuron = parse_neuron_name(name)
        if not (0 <= layer < n_layers and 0 <= neuron < d_mlp):
            raise UserError(f"neuron {name.strip()} is outside the model ({n_layers} layers x "
                            f"{d_mlp} neurons)")
        out.append(layer * d_mlp + neuron)
    return np.unique(np.array(out, dtype=np.int64))


# ---- the stage ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExplainConfig:
    """Options of the explain stage (the CLI flags, one for one)."""

    model: str
    out: str
    """Run directory."""
    dataset: str | None = None
    """Token dataset folder; None = the bundled test split tokenized for the model."""
    neurons: str = "universal"
    """``universal`` (from the neuron table), ``all``, or ``L3.17,L5.2``."""
    max_tokens: int | None = None
    n_ctx: int | None = None
    """Context of the default dataset (default ``min(512, model n_ctx)``)."""
    batch_size: int = 8
    device: str = "cpu"
    site: Literal["post", "pre"] = "post"
    keep_tokens: bool = False
    """Keep BOS/pad and newline tokens (dropped by default, as in correlate)."""
    top_k: int = 10
    spacy: bool = True
    """spaCy POS/dependency/entity features (needs the ``nlp`` extra)."""
    spacy_model: str | None = None
    position_bins: int = 16
    unigram_min_count: int | None = None
    """Default: 3 per 10,000 kept tokens, at least 10."""
    unigram_min_forms: int = 2
    precision: Literal["fp32", "fp64"] = "fp32"
    """dtype of the per-batch group sums (tables are float64 either way)."""
    vr_ddof: int = 0
    """Variances in VR: 0 = population (VR = η²), 1 = sample variances (the paper's)."""
    max_memory: str | None = None
    """Token-table budget, e.g. ``8G`` (default: 70% of available RAM); above it the
    neurons are tiled over several passes."""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "top_k", "position_bins", "unigram_min_forms"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got "
                                f"{getattr(self, name)}")
        if self.vr_ddof not in (0, 1):
            raise UserError(f"--vr-ddof must be 0 or 1, got {self.vr_ddof}")
        if self.precision not in ("fp32", "fp64"):
            raise UserError(f"--precision must be fp32 or fp64, got {self.precision!r}")


@dataclass
class ExplainResult:
    explanations: Explanations
    paths: dict[str, Path]
    timings: dict[str, float]


def explanation_paths(run_dir: str | Path, model: str) -> dict[str, Path]:
    d = Path(run_dir) / EXPLANATIONS_DIR
    safe = safe_name(model)
    return {"top": d / EXPLANATIONS_TOP.format(model=safe), "vr": d / EXPLANATIONS_VR.format(model=safe)}


def run_explain(config: ExplainConfig, model: Any = None) -> ExplainResult:
    """The explain stage: one pass (per neuron tile) over the dataset, then the algebra.

    ``model`` may be passed already loaded (``LoadedModel``).
    """
    from universal_neurons.analysis.features import (
        build_vocab_features,
        surface_strings,
        write_vocab_features,
    )
    from universal_neurons.constants import neuron_table
    from universal_neurons.data.tokens import special_ids, tokenizer_fingerprint
    from universal_neurons.engine.sizes import default_budget, format_bytes, parse_bytes
    from universal_neurons.engine.token_table import plan_neuron_tiles, token_table_bytes
    from universal_neurons.rundir import RunDir, write_table

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    run = RunDir(config.out)
    if model is None:
        from universal_neurons.models.loading import load_model

        model = load_model(config.model, device=config.device)
    ad = model.adapter
    n_total = ad.n_layers * ad.d_mlp
    flat = select_neurons(config.neurons, ad.n_layers, ad.d_mlp, run / neuron_table(model.name))
    dataset, n_seq = _open_dataset(config, model)
    tok = model.tokenizer
    fp = tokenizer_fingerprint(tok)
    strings = surface_strings(tok)
    specials = special_ids(tok)
    n_vocab = max(len(tok), ad.d_vocab)
    strings = strings + [""] * (n_vocab - len(strings))  # model vocab may be padded
    timings["load_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    labels = _row_labels(config, dataset, n_seq, strings, specials, run, fp)
    timings["sequence_features_s"] = time.perf_counter() - t1

    budget = parse_bytes(config.max_memory) if config.max_memory else default_budget("cpu")
    n_groups = labels.n_groups
    tiles = plan_neuron_tiles(n_vocab, len(flat), budget, n_label_groups=n_groups)
    if len(tiles) > 1:
        log.warning("the token table for %d neurons needs %s, over the budget of %s: running "
                    "%d passes of %d neurons (raise --max-memory for one pass)", len(flat),
                    format_bytes(token_table_bytes(n_vocab, len(flat), True, n_groups)),
                    format_bytes(budget), len(tiles), tiles[0].stop - tiles[0].start)
    parts, feats, stream_stats = [], None, []
    t1 = time.perf_counter()
    for i, sl in enumerate(tiles):
        table, st = _one_pass(config, model, dataset, n_seq, n_vocab, n_total, flat[sl], labels,
                              desc=f"explain {i + 1}/{len(tiles)}" if len(tiles) > 1 else "explain")
        stream_stats.append(st)
        if feats is None:
            counts = table.current.count.numpy()
            feats = build_vocab_features(strings, counts, unigram_min_count=config.unigram_min_count,
                                         unigram_min_forms=config.unigram_min_forms,
                                         special_ids=specials.tolist())
        parts.append(explain_table(table, feats, ad.d_mlp, strings, ddof=config.vr_ddof))
        del table
    timings["pass_s"] = time.perf_counter() - t1
    assert feats is not None
    ex = Explanations.concat(parts)
    paths = explanation_paths(run.path, model.name)
    paths["vocab_features"] = write_vocab_features(run.path, fp, feats, {
        "tokenizer": getattr(tok, "name_or_path", ""), "dataset": str(dataset.path),
        "unigram_min_count": config.unigram_min_count, "unigram_min_forms": config.unigram_min_forms})
    write_table(paths["top"], ex.top(config.top_k))
    write_table(paths["vr"], ex.wide(), csv=False)
    timings["total_s"] = time.perf_counter() - t0
    run.record_stage(f"explain:{model.name}", asdict(config), model=model.name,
                     n_neurons=len(flat), n_features=len(ex.columns), n_tiles=len(tiles),
                     n_sequences=n_seq, kept_tokens=int(ex.neurons["n_rows"].iloc[0]),
                     timings=timings, stream=[s.to_dict() for s in stream_stats],
                     outputs={k: str(v.relative_to(run.path)) for k, v in paths.items()})
    log.info("explained %d neurons of %s with %d features in %.1fs", len(flat), model.name,
             len(ex.columns), timings["total_s"])
    return ExplainResult(ex, paths, timings)


def make_token_table(model: Any, neurons: np.ndarray, labels: Any = None, *,
                     site: str = "post", precision: str = "fp32") -> Any:
    """A :class:`~universal_neurons.engine.token_table.TokenTableAccumulator` for ``model``
    (a ``LoadedModel``): pass it to ``stages.correlate.run_correlate(extra_accumulators=...)``
    to fill it in correlate's pass, then :func:`explain_table` on its ``finalize()``."""
    from universal_neurons.engine.token_table import TokenTableAccumulator

    ad = model.adapter
    return TokenTableAccumulator(
        model.name, max(len(model.tokenizer), ad.d_vocab), ad.n_layers * ad.d_mlp,
        torch.as_tensor(neurons), labels, site=site,
        compute_dtype=torch.float64 if precision == "fp64" else torch.float32)


def _one_pass(config: ExplainConfig, model: Any, dataset: Any, n_seq: int, n_vocab: int,
              n_total: int, neurons: np.ndarray, labels: Any, desc: str) -> tuple[TokenTable, Any]:
    from universal_neurons.engine.runner import batch_ranges, stream

    acc = make_token_table(model, neurons, labels, site=config.site, precision=config.precision)
    st = stream(dataset, [model], [acc], batch_ranges(n_seq, config.batch_size),
                tokenizer=model.tokenizer, keep_all=config.keep_tokens, device=config.device,
                progress=config.progress, desc=desc)
    return acc.finalize(), st


def _open_dataset(config: ExplainConfig, model: Any) -> tuple[Any, int]:
    from universal_neurons.data.dataset import dataset_for_models

    return dataset_for_models([model], config.dataset, config.n_ctx, config.max_tokens,
                              show_progress=config.progress)


def _row_labels(config: ExplainConfig, dataset: Any, n_seq: int, strings: Sequence[str],
                specials: np.ndarray, run: Any, fp: str) -> Any:
    """Sequence labels of the first ``n_seq`` windows, cached under ``RUN/features``."""
    from universal_neurons.analysis.sequence_features import (
        INSTALL_HINT,
        build_row_labels,
        load_spacy,
    )
    from universal_neurons.constants import FEATURES_DIR, SEQUENCE_LABELS
    from universal_neurons.engine.token_table import RowLabels
    from universal_neurons.rundir import atomic_path

    nlp = None
    if config.spacy:
        try:
            nlp = load_spacy(config.spacy_model)
        except UserError as e:
            log.warning("no syntax features: %s (install with `%s`); the other features run",
                        e, INSTALL_HINT)
    key = json.dumps({"dataset": str(Path(dataset.path).resolve()),
                      "created": dataset.meta.get("created"), "n_seq": n_seq,
                      "bins": config.position_bins, "fp": fp,
                      "spacy": None if nlp is None else [nlp.meta.get("name"),
                                                          nlp.meta.get("version")]},
                     sort_keys=True)
    path = (Path(run.path) / FEATURES_DIR / fp[:16] /
            SEQUENCE_LABELS.format(key=hashlib.sha256(key.encode()).hexdigest()[:16]))
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            log.info("sequence features from cache %s", path)
            return RowLabels(z["codes"], tuple(meta["schemes"]),
                             tuple(tuple(x) for x in meta["labels"]))
    windows = np.asarray(dataset.tokens[:n_seq], dtype=np.int64)
    labels = build_row_labels(windows, strings, nlp, special_ids=specials.tolist(),
                              position_bins=config.position_bins, show_progress=config.progress)
    meta = json.dumps({"schemes": labels.schemes, "labels": labels.labels, "key": key})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, codes=labels.codes, meta=np.array(meta))
    return labels
