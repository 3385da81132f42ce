"""The per-neuron table ``RUN/neurons/<model>.parquet``: one row per ``(layer, neuron)``.

Several stages write columns into it: correlate (correlation and universality columns),
``weights`` (:data:`~universal_neurons.analysis.weights.NEURON_COLUMNS`) and ``stats``
(activation moments and sparsity). Each stage also keeps its own per-model files under
``RUN/stats/<model>/``; :func:`refresh_neuron_table` re-joins those into the table, so the
table ends with the contract's full column set (:data:`CONTRACT_COLUMNS`) whatever order
the stages ran in. Writes are read-modify-write through ``rundir.write_table`` (atomic);
stages of one run are expected to run one after another, not concurrently.
"""

from __future__ import annotations

from pathlib import Path

from universal_neurons.constants import (
    ACTIVATION_STATS_FILE,
    NEURONS_DIR,
    STATS_DIR,
    WEIGHTS_FILE,
    neuron_table,
    safe_name,
)

KEY = ["layer", "neuron"]
CONTRACT_COLUMNS = (
    "layer", "neuron", "max_corr", "mean_corr", "min_corr", "max_baseline", "mean_baseline",
    "min_baseline", "excess_corr", "is_universal", "w_in_norm", "input_bias", "w_out_norm",
    "in_out_sim", "l2_penalty", "mean", "var", "skew", "kurt", "sparsity", "vocab_mean",
    "vocab_var", "vocab_skew", "vocab_kurt")


def stats_dir(run: str | Path, model: str) -> Path:
    """``RUN/stats/<model>/``: per-model arrays of the weights and stats stages."""
    return Path(run) / STATS_DIR / safe_name(model)


def read_neuron_table(run: str | Path, model: str):
    """The model's table, or None if no stage wrote it yet."""
    import pandas as pd

    p = Path(run) / neuron_table(model)
    return pd.read_parquet(p) if p.exists() else None


def missing_columns(df) -> list[str]:
    """Contract columns ``df`` lacks."""
    return [c for c in CONTRACT_COLUMNS if c not in df.columns]


def update_neuron_table(run: str | Path, model: str, frame):
    """Join ``frame`` (``layer, neuron`` + columns) into the model's table and write it.

    ``frame``'s columns replace same-named ones; the table's other columns are kept (outer
    join on ``layer, neuron``). Contract columns come first, in contract order.
    """
    from universal_neurons.rundir import write_table

    if frame.duplicated(KEY).any():
        raise ValueError(f"{model}: the new columns have duplicate (layer, neuron) rows")
    old = read_neuron_table(run, model)
    df = frame
    if old is not None:
        keep = [c for c in old.columns if c not in frame.columns or c in KEY]
        df = old[keep].merge(frame, on=KEY, how="outer")
    first = [c for c in CONTRACT_COLUMNS if c in df.columns]
    df = df[first + [c for c in df.columns if c not in first]]
    df = df.sort_values(KEY, kind="stable").reset_index(drop=True)
    write_table(Path(run) / neuron_table(model), df)
    return df


def stage_frames(run: str | Path, model: str) -> list:
    """Per-neuron frames the weights/stats stages left in ``RUN/stats/<model>/``."""
    d = stats_dir(run, model)
    frames = []
    if (d / WEIGHTS_FILE).exists():
        from universal_neurons.analysis.weights import WeightStats

        frames.append(WeightStats.load(d).frame())
    if (d / ACTIVATION_STATS_FILE).exists():
        from universal_neurons.engine.activation_stats_result import ActivationStatsResult

        frames.append(ActivationStatsResult.load(d / ACTIVATION_STATS_FILE).frame())
    return frames


def refresh_neuron_table(run: str | Path, model: str):
    """Re-join every stage's per-neuron columns into the model's table; returns it (None if
    nothing was computed for ``model``)."""
    frames = stage_frames(run, model)
    df = read_neuron_table(run, model)
    if not frames:
        return df
    merged = frames[0]
    for f in frames[1:]:
        merged = merged.merge(f, on=KEY, how="outer")
    return update_neuron_table(run, model, merged)


def table_models(run: str | Path) -> list[str]:
    """Models with a neuron table or a stats folder, manifest order first."""
    from universal_neurons.rundir import RunDir

    run = Path(run)
    names: list[str] = []
    for stage in RunDir(run).manifest().get("stages", {}).values():
        for m in stage.get("models", []) or []:
            if m not in names:
                names.append(m)
    found = {p.stem for p in (run / NEURONS_DIR).glob("*.parquet")}
    found |= {p.name for p in (run / STATS_DIR).glob("*") if p.is_dir()}
    known = {safe_name(m) for m in names}
    return [m for m in names if safe_name(m) in found] + sorted(found - known)


def write_activation_stats(run: str | Path, results) -> list[str]:
    """Save each :class:`ActivationStatsResult` (or finalize an ``ActivationStats``) to
    ``stats/<model>/activation_stats.safetensors`` and join its columns into the table."""
    out = []
    for r in results:
        r = r.finalize() if hasattr(r, "finalize") else r
        path = stats_dir(run, r.model) / ACTIVATION_STATS_FILE
        r.save(path)
        update_neuron_table(run, r.model, r.frame())
        out.append(str(path.relative_to(Path(run))))
    return out


def write_weight_stats(run: str | Path, model: str, stats, tokenizer=None,
                       meta: dict | None = None) -> list[str]:
    """Save a :class:`WeightStats` to ``stats/<model>/`` and join its columns into the table."""
    d = stats_dir(run, model)
    stats.save(d, tokenizer=tokenizer, meta=meta)
    update_neuron_table(run, model, stats.frame())
    return [str(p.relative_to(Path(run))) for p in sorted(d.glob("weight*"))]
