"""Universality over training, from a neuron x checkpoint table (pure; no run directory).

The input has one row per (neuron, checkpoint) of one model (member a of a suite, the same
seed at every checkpoint): ``layer``, ``neuron``, ``checkpoint`` (a label),
``checkpoint_index`` (training order, 0 = earliest), ``excess_corr`` and ``is_universal``.
A neuron is identified across checkpoints by its index (``layer``, ``neuron``).

- :func:`neuron_trajectories` adds, per row, whether the neuron first becomes universal at
  this checkpoint (``emerged``) and whether it is universal here and at every later one
  (``persists``); per neuron, its first universal checkpoint (``first_universal``, and
  ``first_universal_index``; -1 / missing if never) and whether it stays universal from then on
  (``stays_universal``); and its excess correlation at the last checkpoint
  (``excess_corr_last``).
- :func:`checkpoint_summary`: one row per checkpoint: share universal, median excess,
  emergence and persistence rates, and how the checkpoint predicts the last one (Spearman
  and Pearson correlation of excess; precision and recall of "universal here" for
  "universal at the last").
"""

from __future__ import annotations

from typing import Any

import numpy as np

REQUIRED = ("layer", "neuron", "checkpoint", "checkpoint_index", "excess_corr", "is_universal")


def _matrices(frame: Any) -> tuple[Any, np.ndarray, np.ndarray, Any]:
    """Neuron keys ``[n, 2]``, excess ``[n, C]`` (float64), universal ``[n, C]`` (bool) and
    the checkpoints (``checkpoint_index``, ``checkpoint``) in training order."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"trajectory table lacks columns {missing}; has {list(frame.columns)}")
    order = (frame[["checkpoint_index", "checkpoint"]].drop_duplicates()
             .sort_values("checkpoint_index"))
    if order["checkpoint_index"].duplicated().any() or order["checkpoint"].duplicated().any():
        raise ValueError("each checkpoint needs one label and one checkpoint_index, got "
                         f"{order.to_dict('records')}")
    labels = order["checkpoint"].astype(str).tolist()
    excess = frame.pivot(index=["layer", "neuron"], columns="checkpoint_index",
                         values="excess_corr").sort_index()
    universal = frame.pivot(index=["layer", "neuron"], columns="checkpoint_index",
                            values="is_universal").sort_index()
    excess = excess[list(order["checkpoint_index"])]
    universal = universal[list(order["checkpoint_index"])]
    if len(excess) * len(labels) != len(frame):
        raise ValueError(f"trajectory table has {len(frame)} rows, expected every one of "
                         f"{len(excess)} neurons at each of {len(labels)} checkpoints")
    u = universal.fillna(False).to_numpy(dtype=bool)
    return excess.index, excess.to_numpy(dtype=np.float64), u, order


def _first_and_suffix(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron the index of its first universal checkpoint (-1 if none) ``[n]``, and
    ``suffix[i, c]``: universal at c and at every later checkpoint ``[n, C]``."""
    first = np.where(u.any(1), u.argmax(1), -1)
    suffix = np.logical_and.accumulate(u[:, ::-1], axis=1)[:, ::-1]
    return first, suffix


def neuron_trajectories(frame: Any) -> Any:
    """``frame`` with ``emerged``, ``persists``, ``first_universal_index``,
    ``first_universal``, ``stays_universal`` and ``excess_corr_last`` added (rows sorted by
    checkpoint, then layer and neuron)."""
    import pandas as pd

    keys, excess, u, order = _matrices(frame)
    labels = order["checkpoint"].astype(str).tolist()
    first, suffix = _first_and_suffix(u)
    n = len(keys)
    stays = np.zeros(n, dtype=bool)
    has = first >= 0
    stays[has] = suffix[np.flatnonzero(has), first[has]]
    indices = order["checkpoint_index"].to_numpy()
    cols = pd.DataFrame({
        "layer": keys.get_level_values(0).to_numpy(),
        "neuron": keys.get_level_values(1).to_numpy(),
        "first_universal_index": np.where(has, indices[np.maximum(first, 0)], -1).astype(np.int64),
        "first_universal": pd.array([labels[f] if f >= 0 else None for f in first],
                                    dtype="string"),
        "stays_universal": stays,
        "excess_corr_last": excess[:, -1] if len(labels) else np.full(n, np.nan),
    })
    out = frame.drop(columns=[c for c in cols.columns if c not in ("layer", "neuron")]
                     + ["emerged", "persists"], errors="ignore")
    out = out.merge(cols, on=["layer", "neuron"], how="left", validate="many_to_one")
    row = keys.get_indexer(pd.MultiIndex.from_arrays([out["layer"], out["neuron"]]))  # [rows]
    pos = out["checkpoint_index"].map({ci: j for j, ci in enumerate(indices)}).to_numpy()
    out["emerged"] = first[row] == pos
    out["persists"] = suffix[row, pos]
    return out.sort_values(["checkpoint_index", "layer", "neuron"], ignore_index=True)


def _rank_corr(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman and Pearson correlation over the pairs where both are finite (NaN when
    fewer than 3 pairs or either side is constant)."""
    from scipy import stats

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    return float(stats.spearmanr(x, y).statistic), float(stats.pearsonr(x, y).statistic)


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def checkpoint_summary(frame: Any) -> Any:
    """One row per checkpoint (training order) of a neuron x checkpoint table.

    Columns: ``checkpoint``, ``checkpoint_index``, ``n_neurons``, ``n_universal``,
    ``share_universal`` (of all neurons; dead neurons are not universal), ``median_excess``,
    ``mean_excess``, ``max_excess`` (over neurons with a finite excess), ``n_emerged`` and
    ``emergence_rate`` (neurons universal for the first time here, as a share of all
    neurons), ``persistence_rate`` (of the neurons universal here, the share universal at
    every later checkpoint; NaN at the last checkpoint or with none universal),
    ``spearman_last`` / ``pearson_last`` (excess here vs at the last checkpoint, over neurons
    finite at both), ``precision_last`` / ``recall_last`` ("universal here" as a prediction
    of "universal at the last": |both| / |here| and |both| / |last|).
    """
    import pandas as pd

    _, excess, u, order = _matrices(frame)
    first, suffix = _first_and_suffix(u)
    n = excess.shape[0]
    last = len(order) - 1
    rows = []
    for c, (index, label) in enumerate(zip(order["checkpoint_index"], order["checkpoint"])):
        e = excess[:, c]
        finite = e[np.isfinite(e)]
        n_u = int(u[:, c].sum())
        both = int((u[:, c] & u[:, last]).sum())
        spearman, pearson = _rank_corr(e, excess[:, last])
        rows.append({
            "checkpoint": str(label), "checkpoint_index": int(index), "n_neurons": n, "n_universal": n_u,
            "share_universal": _ratio(n_u, n),
            "median_excess": float(np.median(finite)) if len(finite) else float("nan"),
            "mean_excess": float(finite.mean()) if len(finite) else float("nan"),
            "max_excess": float(finite.max()) if len(finite) else float("nan"),
            "n_emerged": int((first == c).sum()),
            "emergence_rate": _ratio(int((first == c).sum()), n),
            "persistence_rate": (_ratio(int(suffix[:, c].sum()), n_u) if c < last
                                 else float("nan")),
            "spearman_last": spearman, "pearson_last": pearson,
            "precision_last": _ratio(both, n_u), "recall_last": _ratio(both, int(u[:, last].sum())),
        })
    return pd.DataFrame(rows)
