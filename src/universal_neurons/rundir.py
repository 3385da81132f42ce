"""Run directories: atomic writes and the run manifest.

Every output is written under a temporary name and renamed into place, so a killed run
never leaves a file that looks complete. ``manifest.json`` records the config, package
versions, seeds, token counts and timings of every stage that wrote into the directory.
Stages check their output directory (:func:`check_output_dir`) before any compute, and a
write that fails because the disk is full surfaces as ``OSError(ENOSPC)`` naming the file,
whatever library wrote it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from universal_neurons import __version__
from universal_neurons.constants import MANIFEST
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)

# What torch.save / safetensors / pyarrow say when a write hits a full disk.
DISK_FULL_HINTS = ("no space left", "storagefull", "disk quota", "unexpected pos",
                    "file write failed", "enospc")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (``.<name>.XXXX.tmp``); rename it to ``path``
    if the block succeeds, delete it otherwise. A failure of the block that comes from a
    full disk is raised as ``OSError(ENOSPC, ..., path)`` (see :func:`disk_error`)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            os.replace(tmp_path, final)
        except Exception as e:
            err = disk_error(e, final)
            if err is None:
                raise
            raise err from e
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


def disk_error(e: BaseException, path: Path) -> OSError | None:
    """``e`` as an ``OSError`` naming ``path`` when it is an I/O failure (an OSError without
    a file name, or a torch/safetensors/pyarrow error caused by a full disk), else None."""
    if isinstance(e, OSError) and e.errno is not None:
        return None if e.filename else OSError(e.errno, e.strerror, str(path))
    if not isinstance(e, (OSError, RuntimeError)) and type(e).__name__ != "SafetensorError":
        return None
    text = str(e).lower()
    if any(h in text for h in DISK_FULL_HINTS) or _nearly_full(path.parent):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return None


def _nearly_full(directory: Path) -> bool:
    try:
        return shutil.disk_usage(directory).free < 1 << 20
    except OSError:
        return False


def check_output_dir(path: str | os.PathLike, need_bytes: int = 0, option: str = "--out") -> Path:
    """Fail early, before any compute, when outputs cannot be written to ``path``.

    Raises ``UserError`` (naming the path and the fix) when ``path`` is a file, lies under
    a file, cannot be written (permissions, read-only file system), or its file system has
    less than ``need_bytes`` free. Creates nothing: a missing directory is judged by its
    nearest existing parent. Returns the path.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {p} is a file, not a directory; choose another {option} "
                        "or remove the file")
    probe_dir = p
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    if not probe_dir.is_dir():
        raise UserError(f"{option} {p} lies under {probe_dir}, which is a file; choose another "
                        f"{option}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=".tmp", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to {option} {p} ({e.strerror or type(e).__name__}: "
                        f"{probe_dir}); choose a writable {option}") from None
    free = shutil.disk_usage(probe_dir).free
    if need_bytes > free:
        raise UserError(f"{option} {p} has {_fmt(free)} free but the outputs need about "
                        f"{_fmt(need_bytes)}; free some space or choose another {option}")
    return p


def _fmt(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def clean_stale_temps(directory: str | os.PathLike, name: str) -> list[Path]:
    """Delete ``.<name>.*.tmp`` files that :func:`atomic_path` left in ``directory`` when a
    process was killed mid-write; returns what was deleted."""
    d = Path(directory)
    gone = []
    if d.is_dir():
        for f in d.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                size = f.stat().st_size
                f.unlink()
                gone.append(f)
                log.info("deleted %s (%s), left by an interrupted write", f, _fmt(size))
    return gone


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
        """The manifest ({"stages": {}} if none); UserError naming it if it is corrupt."""
        if not self.manifest_path.exists():
            return {"stages": {}}
        try:
            m = json.loads(self.manifest_path.read_text())
            if not isinstance(m, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f"{self.manifest_path} is corrupt ({str(e)[:80]}); delete it and "
                            "rerun the stages whose records it held") from None
        return m

    def record_stage(self, stage: str, config: Any, **info: Any) -> None:
        """Add or replace one stage's entry (config, versions, timings, counts)."""
        m = self.manifest()
        m.setdefault("stages", {})
        m["versions"] = package_versions()
        m["stages"][stage] = {"config": config, "finished_at": time.strftime(
            "%Y-%m-%dT%H:%M:%S%z"), **info}
        write_json(self.manifest_path, m)
