"""The paper stage: index every result of the paper on a run (``universal-neurons paper``).

``run_paper(PaperConfig(out=...))`` reads what the other stages wrote, builds one entry per
result of the paper (``analysis.paper_index``: the paper's value, the command, the files,
this run's value, or why it is not computed) and writes ``RUN/paper/index.json`` and
``RUN/paper/index.md``. It computes nothing itself and never fails for a missing result.
"""

from __future__ import annotations

import fnmatch
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from universal_neurons.analysis.paper_index import build_index, index_markdown
from universal_neurons.analysis.paper_values import RunInfo
from universal_neurons.constants import (
    NEURONS_DIR,
    PAPER_DIR,
    PAPER_INDEX_JSON,
    PAPER_INDEX_MD,
    PIPELINE_FILE,
)
from universal_neurons.errors import UserError
from universal_neurons.options import run_opt

log = logging.getLogger(__name__)

STAGE = "paper"


@dataclass(frozen=True)
class PaperConfig:
    """Options of the paper stage."""

    out: str = run_opt()
    """Run directory to index."""


@dataclass
class PaperIndexResult:
    entries: list[dict[str, Any]]
    info: RunInfo
    files: list[str] = field(default_factory=list)

    @property
    def computed(self) -> int:
        return sum(e["status"] == "computed" for e in self.entries)


class DirFiles:
    """:class:`~universal_neurons.analysis.paper_values.RunFiles` over a run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._listing: list[str] | None = None

    def listing(self) -> list[str]:
        if self._listing is None:
            self._listing = sorted(p.relative_to(self.root).as_posix()
                                   for p in self.root.rglob("*") if p.is_file())
        return self._listing

    def exists(self, rel: str) -> bool:
        return (self.root / rel).is_file()

    def glob(self, pattern: str) -> list[str]:
        if not any(c in pattern for c in "*?["):
            return [pattern] if self.exists(pattern) else []
        return [f for f in self.listing() if fnmatch.fnmatchcase(f, pattern)
                and f.count("/") == pattern.count("/")]

    def table(self, rel: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
        p = self.root / rel
        if p.suffix == ".csv":
            df = pd.read_csv(p)
            return df[list(columns)] if columns is not None else df
        return pd.read_parquet(p, columns=list(columns) if columns is not None else None)

    def columns(self, rel: str) -> list[str]:
        p = self.root / rel
        if not p.is_file():
            return []
        if p.suffix == ".csv":
            return list(pd.read_csv(p, nrows=0).columns)
        import pyarrow.parquet as pq

        return list(pq.read_schema(p).names)

    def json(self, rel: str) -> Any:
        return json.loads((self.root / rel).read_text(encoding="utf-8"))


def run_info(run: Path, name: str, manifest: dict[str, Any]) -> RunInfo:
    """The reference model, the models as given, the threshold and the skipped stages."""
    from universal_neurons.analysis.selection import recorded_threshold

    stages = _dict(manifest.get("stages"))
    corr = _dict(stages.get("correlate"))
    members = [m for m in corr.get("models", []) if isinstance(m, str)]
    given = _dict(corr.get("config")).get("models")
    reference = members[0] if members else _table_with_correlations(run)
    skipped: list[str] = []
    record = run / PIPELINE_FILE
    if record.is_file():
        try:
            skip = json.loads(record.read_text()).get("config", {}).get("skip", [])
            skipped = [s for s in skip if isinstance(s, str)]
        except (ValueError, AttributeError, UnicodeDecodeError):
            log.warning("%s unreadable; skipped stages unknown", record)
    models = tuple(m for m in (given or members) if isinstance(m, str))
    produced = _dict(_dict(stages.get("paper_results")).get("results"))
    return RunInfo(run=name, reference=reference, models=models,
                   threshold=recorded_threshold(manifest), skipped=tuple(skipped),
                   produced={k: str(v) for k, v in produced.items()})


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


def _table_with_correlations(run: Path) -> str | None:
    """The model of the first neuron table with an ``excess_corr`` column (its file name)."""
    import pyarrow.parquet as pq

    for p in sorted((run / NEURONS_DIR).glob("*.parquet")):
        if "excess_corr" in pq.read_schema(p).names:
            return p.stem
    return None


def run_paper(config: PaperConfig) -> PaperIndexResult:
    """Index the paper's results on ``config.out``; write ``RUN/paper/index.json`` and
    ``index.md``; record the stage in the manifest."""
    from universal_neurons.analysis.paper_index import REQUIRED_IDS
    from universal_neurons.rundir import RunDir, atomic_path, check_output_dir, write_json

    run = Path(config.out)
    if not run.is_dir():
        raise UserError(f"run directory {run} does not exist; run `universal-neurons run --out "
                        f"{run}` (or its stages) first")
    check_output_dir(run / PAPER_DIR)
    rd = RunDir(run)
    info = run_info(run, config.out, rd.manifest())
    entries = build_index(DirFiles(run), info)
    out = run / PAPER_DIR
    write_json(out / PAPER_INDEX_JSON, {"run": config.out, "reference": info.reference,
                                       "threshold": info.threshold, "ids": list(REQUIRED_IDS),
                                       "results": entries})
    with atomic_path(out / PAPER_INDEX_MD) as tmp:
        tmp.write_text(index_markdown(entries, info), encoding="utf-8")
    res = PaperIndexResult(entries, info, [f"{PAPER_DIR}/{PAPER_INDEX_JSON}",
                                           f"{PAPER_DIR}/{PAPER_INDEX_MD}"])
    log.info("paper index: %d of %d results computed", res.computed, len(entries))
    rd.record_stage(STAGE, asdict(config), outputs=res.files,
                    computed=[e["id"] for e in entries if e["status"] == "computed"])
    return res
