"""Run directories: atomic writes and the run manifest.

Every output is written under a temporary name and renamed into place, so a killed run
never leaves a file that looks complete. ``manifest.json`` records the config, package
versions, seeds, token counts and timings of every stage that wrote into the directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from universal_neurons import __version__
from universal_neurons.constants import MANIFEST


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default))


def write_table(path: str | os.PathLike, df, csv: bool = True) -> None:
    """Write a pandas DataFrame as parquet (and a CSV copy beside it)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)
    if csv:
        with atomic_path(path.with_suffix(".csv")) as tmp:
            df.to_csv(tmp, index=False)


def _json_default(o: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"universal-neurons": __version__, "python": platform.python_version()}
    for name in ("torch", "transformers", "transformer-lens", "numpy", "pandas", "tokenizers"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


class RunDir:
    """A run's output directory and its manifest."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __truediv__(self, rel: str) -> Path:
        return self.path / rel

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict[str, Any]:
        if self.manifest_path.exists():
            return json.loads(self.manifest_path.read_text())
        return {"stages": {}}

    def record_stage(self, stage: str, config: Any, **info: Any) -> None:
        """Add or replace one stage's entry (config, versions, timings, counts)."""
        m = self.manifest()
        m.setdefault("stages", {})
        m["versions"] = package_versions()
        m["stages"][stage] = {"config": config, "finished_at": time.strftime(
            "%Y-%m-%dT%H:%M:%S%z"), **info}
        write_json(self.manifest_path, m)
