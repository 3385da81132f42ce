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

Outputs (written by :func:`universal_neurons.stages.explain.run_explain`): ``RUN/explanations/<model>.parquet`` (top-k
explanations per neuron: ``layer, neuron, rank, kind, feature, group, vr, mean_in,
mean_out, frac_in``), ``RUN/explanations/<model>_vr.parquet`` (every VR, one row per
neuron, columns ``<kind>/<feature>``, plus per-neuron summaries) and the vocabulary
features ``RUN/features/<tokenizer>/vocab_features.parquet``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from universal_neurons.analysis.features import feature_group, feature_matrix
from universal_neurons.analysis.sequence_features import POSITION_EACH, scheme_features
from universal_neurons.engine.token_table import GroupTable, TokenTable

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
