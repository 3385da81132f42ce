"""The corpus packaged with the toolkit (public-domain / permissive English text).

``corpus-{train,test}.jsonl.xz`` hold JSON lines ``{"id", "source", "text"}``; see
``bundled/NOTICE.txt`` for provenance and licences. The bundled models were trained on the
train split; analyses default to the test split.
"""

from __future__ import annotations

import json
import lzma
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from universal_neurons.errors import UserError

SPLITS = ("train", "test")


def bundled_corpus_path(split: Literal["train", "test"]) -> Path:
    """Path of the packaged ``corpus-{split}.jsonl.xz``."""
    if split not in SPLITS:
        raise UserError(f"unknown bundled corpus split {split!r}; choose one of {', '.join(SPLITS)}")
    path = Path(__file__).parent / "bundled" / f"corpus-{split}.jsonl.xz"
    if not path.is_file():
        raise UserError(f"the bundled corpus file {path} is missing; reinstall universal-neurons")
    return path


def read_jsonl_xz(path: str | os.PathLike, text_field: str = "text") -> Iterator[str]:
    """Yield the ``text_field`` of every JSON line of an xz-compressed file."""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)[text_field]
