"""Results of the paper that need activations on the dataset or the unembedding.

Pure functions: arrays in, tables out (the ``paper_results`` stage gathers the arrays).

* :func:`class_split`: which binary vocabulary feature best explains a neuron's
  ``cos(W_U, w_out)`` — the variance reduction of the cosines by each token class.
* :func:`source_table`: per neuron, mean activation and variance reduction by corpus
  source (data-subset neurons; the bundled corpus's sources stand in for the Pile's).
* :func:`unigram_roles`: a unigram neuron's activation split by the role of the token
  occurrence: whole word, word start, word middle, other (the paper's
  ``plot_unigram_neuron`` classes).
* :func:`prediction_conditional`: a prediction / suppression neuron's activation when the
  next token is in its token set vs not.

Variance reductions here are population ones (η², in [0, 1]): for a split of ``n`` values
into groups with counts ``n_g`` and means ``m_g`` around the overall mean ``m`` and
population variance ``v``, ``VR = Σ n_g (m_g - m)² / (n v)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

ROLES = ("whole_word", "word_start", "word_middle", "other")


def class_split(cos: np.ndarray, classes: np.ndarray,
                names: Sequence[str], top: int = 5) -> pd.DataFrame:
    """For each of ``n`` neurons the ``top`` token classes whose in/out split explains
    most of the variance of its cosines over the vocabulary.
    ``cos: Float[n, vocab]``, ``classes: Bool[f, vocab]`` (one row per name).

    Columns: ``index`` (row of ``cos``), ``rank``, ``feature``, ``vr``, ``n_in``,
    ``mean_in``, ``mean_out``. Classes holding no token or every token are skipped.
    """
    cos = np.asarray(cos, dtype=np.float64)
    mask = np.asarray(classes, dtype=bool)
    n_vocab = cos.shape[1]
    n_in = mask.sum(axis=1)  # [f]
    ok = (n_in > 0) & (n_in < n_vocab)
    mask, n_in = mask[ok], n_in[ok]
    kept = [n for n, o in zip(names, ok) if o]
    total = cos.sum(axis=1)  # [n]
    mean = total / n_vocab
    var = cos.var(axis=1)  # [n], population
    s_in = cos @ mask.T.astype(np.float64)  # [n, f]
    m_in = s_in / n_in
    m_out = (total[:, None] - s_in) / (n_vocab - n_in)
    between = (n_in * (m_in - mean[:, None]) ** 2
               + (n_vocab - n_in) * (m_out - mean[:, None]) ** 2) / n_vocab
    vr = np.divide(between, var[:, None], out=np.zeros_like(between), where=var[:, None] > 0)
    k = min(top, vr.shape[1])
    order = np.argsort(-vr, axis=1, kind="stable")[:, :k]  # [n, k]
    rows = np.repeat(np.arange(cos.shape[0]), k)
    cols = order.ravel()
    return pd.DataFrame({"index": rows, "rank": np.tile(np.arange(k), cos.shape[0]),
                         "feature": [kept[c] for c in cols], "vr": vr[rows, cols],
                         "n_in": n_in[cols], "mean_in": m_in[rows, cols],
                         "mean_out": m_out[rows, cols]})


def group_moments(values: np.ndarray, groups: np.ndarray,
                  n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``values: Float[rows, n]``, ``groups: Int[rows]`` ->
    ``(count [g], sum [g, n], sum of squares [g, n])`` in float64; rows with a group
    outside ``[0, n_groups)`` are left out."""
    v = np.asarray(values, dtype=np.float64)
    g = np.asarray(groups, dtype=np.int64)
    ok = (g >= 0) & (g < n_groups)
    v, g = v[ok], g[ok]
    count = np.bincount(g, minlength=n_groups).astype(np.float64)
    total = np.zeros((n_groups, v.shape[1]))
    squares = np.zeros((n_groups, v.shape[1]))
    np.add.at(total, g, v)
    np.add.at(squares, g, v * v)
    return count, total, squares


def source_table(count: np.ndarray, total: np.ndarray,
                 squares: np.ndarray, sources: Sequence[str],
                 layer: np.ndarray, neuron: np.ndarray) -> pd.DataFrame:
    """``count: [g]``, ``total, squares: [g, n]`` (:func:`group_moments`), ``layer,
    neuron: Int[n]`` -> per neuron and source (long format): ``n`` tokens, ``mean`` activation, the
    one-vs-rest variance reduction of the split "this source vs the others" (``vr``),
    the neuron's variance reduction by all sources (``eta2``) and its ``rank`` among all
    neurons by ``vr`` for that source (0 = best explained). Sources with no token are
    left out."""
    count = np.asarray(count, dtype=np.float64)
    n = count.sum()
    if n == 0:
        raise ValueError("no token has a known source")
    mean = total.sum(axis=0) / n  # [N]
    var = np.maximum(squares.sum(axis=0) / n - mean ** 2, 0.0)
    present = count > 0
    m_g = total[present] / count[present, None]  # [g', N]
    c_g = count[present, None]
    between = (c_g * (m_g - mean) ** 2).sum(axis=0) / n
    eta2 = np.divide(between, var, out=np.zeros_like(var), where=var > 0)
    # one source vs the rest: two groups
    m_rest = np.divide(total.sum(axis=0) - total[present], n - c_g,
                       out=np.zeros_like(m_g), where=(n - c_g) > 0)
    one = (c_g * (m_g - mean) ** 2 + (n - c_g) * (m_rest - mean) ** 2) / n
    vr = np.divide(one, var, out=np.zeros_like(one), where=var > 0)
    names = [s for s, p in zip(sources, present) if p]
    parts = []
    for i, src in enumerate(names):
        order = np.argsort(-vr[i], kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        parts.append(pd.DataFrame({"layer": layer, "neuron": neuron, "source": src,
                                   "n": int(count[present][i]), "mean": m_g[i], "vr": vr[i],
                                   "eta2": eta2, "rank": rank}))
    return pd.concat(parts, ignore_index=True)


def token_roles(token_ids: np.ndarray, next_ids: np.ndarray,
                feature: np.ndarray, no_space: np.ndarray,
                no_space_alpha: np.ndarray) -> np.ndarray:
    """Index into :data:`ROLES` of each token occurrence for one unigram feature.

    The paper's classes: the feature token is a ``word_middle`` when it does not start with
    a space (it continues a word), else a ``word_start`` when the next token starts with
    no space and is alphabetic (the word goes on), else a ``whole_word``; any other token
    is ``other``. ``token_ids, next_ids: Int[rows]``; the masks are ``Bool[vocab]``;
    ``next_ids`` is -1 where the next token is unknown (not a word start).
    """
    tok = np.asarray(token_ids, dtype=np.int64)
    nxt = np.asarray(next_ids, dtype=np.int64)
    is_f = feature[tok]
    cont = np.zeros(len(nxt), dtype=bool)
    known = nxt >= 0
    cont[known] = no_space_alpha[nxt[known]]
    role = np.full(len(tok), ROLES.index("other"), dtype=np.int64)
    role[is_f] = ROLES.index("whole_word")
    role[is_f & cont] = ROLES.index("word_start")
    role[is_f & no_space[tok]] = ROLES.index("word_middle")
    return role


def unigram_roles(acts: np.ndarray, token_ids: np.ndarray,
                  next_ids: np.ndarray, features: np.ndarray,
                  no_space: np.ndarray, no_space_alpha: np.ndarray
                  ) -> pd.DataFrame:
    """``acts: Float[rows, k]``, ``features: Bool[k, vocab]``, the rest as in
    :func:`token_roles`. Per neuron (``index`` = column of ``acts``, ``features[index]`` its unigram token
    set) and role: ``n`` occurrences, ``mean`` and ``std`` (population) of the activation,
    and ``top_role``: the feature role (not ``other``) with the highest mean."""
    rows = []
    for j in range(acts.shape[1]):
        role = token_roles(token_ids, next_ids, features[j], no_space, no_space_alpha)
        a = np.asarray(acts[:, j], dtype=np.float64)
        stats = []
        for r, name in enumerate(ROLES):
            v = a[role == r]
            stats.append({"index": j, "role": name, "n": len(v),
                          "mean": float(v.mean()) if len(v) else np.nan,
                          "std": float(v.std()) if len(v) else np.nan})
        feature_stats = [s for s in stats[:3] if s["n"]]
        top = (str(max(feature_stats, key=lambda s: float(s["mean"]))["role"])  # type: ignore[arg-type]
               if feature_stats else "")
        rows += [{**s, "top_role": top} for s in stats]
    return pd.DataFrame(rows)


def prediction_conditional(acts: np.ndarray, next_ids: np.ndarray,
                           token_sets: np.ndarray) -> pd.DataFrame:
    """``acts: Float[rows, k]``, ``next_ids: Int[rows]``, ``token_sets: Bool[k, vocab]``.
    Per neuron (``index`` = column of ``acts``): the activation's count, mean and
    population std when the next token is in the neuron's set (``*_in``) and when it is
    not (``*_out``), and ``diff = mean_in - mean_out``. Rows without a next token
    (``next_ids < 0``) are left out."""
    nxt = np.asarray(next_ids, dtype=np.int64)
    known = nxt >= 0
    rows = []
    for j in range(acts.shape[1]):
        a = np.asarray(acts[known, j], dtype=np.float64)
        inside = token_sets[j][nxt[known]]
        rec: dict[str, float | int] = {"index": j}
        for name, sel in (("in", inside), ("out", ~inside)):
            v = a[sel]
            rec[f"n_{name}"] = int(sel.sum())
            rec[f"mean_{name}"] = float(v.mean()) if len(v) else np.nan
            rec[f"std_{name}"] = float(v.std()) if len(v) else np.nan
        rec["diff"] = float(rec["mean_in"]) - float(rec["mean_out"])
        rows.append(rec)
    return pd.DataFrame(rows)
