"""Locations of data shipped inside the package."""

from pathlib import Path


def bundled_data_dir() -> Path:
    """Folder holding the bundled corpus (``corpus-{train,test}.jsonl.xz``, ``NOTICE.txt``)."""
    return Path(__file__).resolve().parent / "data" / "bundled"
