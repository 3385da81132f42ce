"""Read what a run directory holds, tolerating any part that is missing or unreadable.

The report never fails because a stage did not run: each accessor returns ``None`` (or an
empty collection) and logs why, and the page says "not computed". Paths follow the run
directory contract (docs/ARCHITECTURE.md, ``constants``):

- ``manifest.json``; ``neurons/<model>.parquet`` (or ``.csv``)
- ``explanations/<model>.parquet`` (``families``, ``family_scores``)
- ``properties/claims.csv``; ``families/*_counts.csv``; ``plots/*.png``
- ``entropy/`` and ``attention/`` (tables: csv, parquet, json)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from universal_neurons.constants import (
    EXPLANATIONS_DIR,
    MANIFEST,
    NEURONS_DIR,
    PLOTS_DIR,
    PROPERTIES_CLAIMS,
    PROPERTIES_DIR,
    safe_name,
)

log = logging.getLogger(__name__)

KEY = ["layer", "neuron"]
IMAGE_SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif", ".webp")
TABLE_SUFFIXES = (".csv", ".parquet", ".json")
MAX_JSON_BYTES = 2 << 20

# Share of universal neurons reported by Gurnee et al. (2024), in percent.
PAPER_UNIVERSAL_PCT: dict[str, float] = {
    "stanford-gpt2-small-a": 4.16,
    "stanford-gpt2-medium-a": 1.23,
    "pythia-160m": 1.26,
}
_PAPER_ALIASES = {"gpt2-small-a": "stanford-gpt2-small-a", "gpt2-medium-a": "stanford-gpt2-medium-a",
                  "eleutherai--pythia-160m": "pythia-160m", "eleutherai/pythia-160m": "pythia-160m"}


def paper_reference(model: str) -> float | None:
    """The paper's % of universal neurons for ``model`` (alias or HF id), if it reports one."""
    key = model.lower().split("@")[0]
    key = _PAPER_ALIASES.get(key, key)
    return PAPER_UNIVERSAL_PCT.get(key)


@dataclass
class NamedTable:
    """The first rows of a table found in the run directory, for display."""

    name: str
    path: Path
    frame: Any  # pandas.DataFrame: at most the rows asked for
    n_rows: int | None = None  # rows in the file, when known


@dataclass
class RunData:
    """Lazy, tolerant view of a run directory."""

    path: Path
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.path = Path(self.path)

    # -- run-level -------------------------------------------------------------------
    @cached_property
    def manifest(self) -> dict[str, Any]:
        p = self.path / MANIFEST
        if not p.exists():
            return {}
        try:
            m = json.loads(p.read_text(encoding="utf-8"))
            return m if isinstance(m, dict) else {}
        except (OSError, ValueError) as e:
            self._problem(f"{p}: unreadable ({e})")
            return {}

    @cached_property
    def models(self) -> list[str]:
        """Model names: the manifest's order first, then any other neuron table found."""
        names = [m for m in _manifest_models(self.manifest) if isinstance(m, str)]
        seen = {safe_name(m) for m in names}
        d = self.path / NEURONS_DIR
        if d.is_dir():
            for f in sorted(d.iterdir()):
                if f.suffix in (".parquet", ".csv") and f.stem not in seen:
                    seen.add(f.stem)
                    names.append(f.stem)
        return names

    def n_tokens(self) -> int | None:
        """Kept tokens the correlations (else any stage) were computed over."""
        return _find_key(self._token_record(), ("kept_tokens", "n_kept", "n_tokens", "tokens"))

    def dataset_tokens(self) -> int | None:
        """Tokens streamed for the correlations (BOS and dropped tokens included)."""
        return _find_key(self._token_record(), ("dataset_tokens",))

    def universal_threshold(self) -> float | None:
        """The excess-correlation threshold of ``is_universal``, as the correlate stage
        recorded it (``stages.correlate.config.threshold``), or None if not recorded."""
        from universal_neurons.analysis.selection import recorded_threshold

        return recorded_threshold(self.manifest)

    def _token_record(self) -> Any:
        stages = self.manifest.get("stages")
        if isinstance(stages, dict) and isinstance(stages.get("correlate"), dict):
            return stages["correlate"].get("tokens", stages["correlate"])
        return self.manifest

    # -- per-model tables ----------------------------------------------------------------
    def neurons(self, model: str):
        """``neurons/<model>`` with the explanations joined on (layer, neuron), or None.

        A wide explanations table (one row per neuron, e.g. ``families``,
        ``family_scores``) is joined as is; a long one (top-k rows per neuron: ``rank, kind,
        feature, vr, ...``) adds ``top_explanation`` (``kind/feature``) and ``top_vr``.
        """
        if model not in self._cache:
            df = self._read_table(self.path / NEURONS_DIR / safe_name(model))
            if df is not None and not {"layer", "neuron"} <= set(df.columns):
                self._problem(f"neuron table of {model} has no layer/neuron columns")
                df = None
            if df is not None:
                expl = self.explanations(model)
                if expl is not None:
                    if expl.duplicated(KEY).any():
                        expl = _top_explanations(expl)
                    extra = [c for c in expl.columns if c not in df.columns or c in KEY]
                    df = df.merge(expl[extra], on=KEY, how="left")
                    self._cache[("explanation_columns", model)] = [c for c in extra if c not in KEY]
                df = df.sort_values(KEY, kind="stable").reset_index(drop=True)
            self._cache[model] = df
        return self._cache[model]

    def explanations(self, model: str):
        """``explanations/<model>`` as written (wide or long), or None."""
        key = ("explanations", model)
        if key not in self._cache:
            df = self._read_table(self.path / EXPLANATIONS_DIR / safe_name(model))
            if df is not None and not set(KEY) <= set(df.columns):
                self._problem(f"explanations of {model} have no layer/neuron columns")
                df = None
            self._cache[key] = df
        return self._cache[key]

    def explanation_columns(self, model: str) -> list[str]:
        """Columns :meth:`neurons` took from the explanations table."""
        self.neurons(model)
        return self._cache.get(("explanation_columns", model), [])

    def explanation_rows(self, model: str) -> dict[tuple[int, int], list[dict]]:
        """Long-format explanations per neuron (best first); empty for a wide table."""
        key = ("explanation_rows", model)
        if key not in self._cache:
            out: dict[tuple[int, int], list[dict]] = {}
            expl = self.explanations(model)
            if expl is not None and expl.duplicated(KEY).any():
                order = ["rank"] if "rank" in expl.columns else (["vr"] if "vr" in expl.columns else [])
                if order:
                    expl = expl.sort_values(KEY + order, ascending=[True, True, order != ["vr"]],
                                            kind="stable")
                for rec in expl.to_dict("records"):
                    out.setdefault((int(rec["layer"]), int(rec["neuron"])), []).append(rec)
            self._cache[key] = out
        return self._cache[key]

    @cached_property
    def _cache(self) -> dict[Any, Any]:
        return {}

    # -- figures and small tables -------------------------------------------------------
    def plots(self) -> list[Path]:
        d = self.path / PLOTS_DIR
        if not d.is_dir():
            return []
        return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def claims(self):
        """``properties/claims`` (parquet, else its CSV copy), or None."""
        return self._read_table(self.path / PROPERTIES_DIR / Path(PROPERTIES_CLAIMS).stem)

    def tables_in(self, folder: str, pattern: str = "*", max_rows: int = 50,
                  skip: tuple[str, ...] = ()) -> list[NamedTable]:
        """The first ``max_rows`` rows of every readable table under ``RUN/<folder>`` whose
        name matches ``pattern`` (sorted by path). A CSV copy beside a parquet file of the
        same name is not listed twice; names containing any of ``skip`` are left out."""
        d = self.path / folder
        if not d.is_dir():
            return []
        files = [p for p in sorted(d.rglob(pattern)) if p.is_file()
                 and p.suffix.lower() in TABLE_SUFFIXES and not any(k in p.name for k in skip)]
        parquet_stems = {p.with_suffix("") for p in files if p.suffix == ".parquet"}
        out = []
        for p in files:
            if p.suffix == ".csv" and p.with_suffix("") in parquet_stems:
                continue
            head = self._read_head(p, max_rows)
            if head is not None:
                out.append(NamedTable(str(p.relative_to(d)), p, *head))
        return out

    def _read_head(self, p: Path, max_rows: int):
        """``(first rows, total rows or None)`` without loading a whole large file."""
        try:
            if p.suffix == ".parquet":
                import pyarrow.parquet as pq

                f = pq.ParquetFile(p)
                batch = next(f.iter_batches(batch_size=max_rows), None)
                if batch is None:
                    return f.schema_arrow.empty_table().to_pandas(), 0
                return batch.to_pandas(), f.metadata.num_rows
            if p.suffix == ".csv":
                import pandas as pd

                return pd.read_csv(p, nrows=max_rows), None
            if p.stat().st_size > MAX_JSON_BYTES:
                self._problem(f"{p}: {p.stat().st_size:,} bytes, too large to show")
                return None
            df = self._read_file(p)
            return None if df is None else (df.head(max_rows), len(df))
        except Exception as e:  # noqa: BLE001 - any unreadable file becomes "not computed"
            self._problem(f"{p}: unreadable ({type(e).__name__}: {e})")
            return None

    # -- reading --------------------------------------------------------------------------
    def _read_table(self, stem: Path):
        for suffix in (".parquet", ".csv"):
            p = stem.with_name(stem.name + suffix)
            if p.exists():
                df = self._read_file(p)
                if df is not None:
                    return df
        return None

    def _read_file(self, p: Path):
        if not p.exists():
            return None
        import pandas as pd

        try:
            if p.suffix == ".parquet":
                return pd.read_parquet(p)
            if p.suffix == ".csv":
                return pd.read_csv(p)
            if p.suffix == ".json":
                obj = json.loads(p.read_text(encoding="utf-8"))
                return _json_frame(obj)
        except Exception as e:  # noqa: BLE001 - any unreadable file becomes "not computed"
            self._problem(f"{p}: unreadable ({type(e).__name__}: {e})")
        return None

    def _problem(self, msg: str) -> None:
        log.warning("report: %s", msg)
        self.problems.append(msg)


def _top_explanations(expl):
    """One row per neuron from a long explanations table: its best feature and VR."""
    if "vr" not in expl.columns or "feature" not in expl.columns:
        return expl.drop_duplicates(KEY)[KEY]
    best = expl.sort_values("vr", ascending=False, kind="stable").drop_duplicates(KEY)
    feature = best["feature"].astype(str)
    if "kind" in best.columns:
        feature = best["kind"].astype(str) + "/" + feature
    return best[KEY].assign(top_explanation=feature.to_numpy(), top_vr=best["vr"].to_numpy())


def _json_frame(obj: Any):
    import pandas as pd

    if isinstance(obj, list) and obj and all(isinstance(r, dict) for r in obj):
        return pd.DataFrame(obj)
    if isinstance(obj, dict):
        if obj and all(isinstance(v, list) for v in obj.values()) and len({len(v) for v in obj.values()}) == 1:
            return pd.DataFrame(obj)
        flat = {k: v for k, v in obj.items() if not isinstance(v, (dict, list))}
        if flat:
            return pd.DataFrame({"key": list(flat), "value": [str(v) for v in flat.values()]})
    return None


def _manifest_models(m: dict[str, Any]) -> list[Any]:
    raw = m.get("stages")
    stages: dict[str, Any] = raw if isinstance(raw, dict) else {}
    for where in (m, *[s for s in stages.values() if isinstance(s, dict)]):
        config = where.get("config")
        for holder in (where, config if isinstance(config, dict) else {}):
            models = holder.get("models")
            if isinstance(models, list):
                return models
            if isinstance(models, dict):
                return list(models)
    return []


def _find_key(obj: Any, keys: tuple[str, ...]) -> int | None:
    """The first integer value under any of ``keys``, searching ``obj`` breadth-first."""
    queue = [obj]
    while queue:
        cur = queue.pop(0)
        if isinstance(cur, dict):
            for k in keys:
                v = cur.get(k)
                if isinstance(v, int) and not isinstance(v, bool):
                    return v
            queue.extend(v for v in cur.values() if isinstance(v, (dict, list)))
        elif isinstance(cur, list):
            queue.extend(v for v in cur if isinstance(v, (dict, list)))
    return None
