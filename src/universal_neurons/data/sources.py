"""Where documents come from: files, folders, saved and hub datasets, the bundled corpus.

``open_source(spec)`` accepts

- ``bundled:test`` / ``bundled:train``: the packaged corpus;
- a ``.txt`` file (one document, or several with ``split_docs``), ``.jsonl`` / ``.ndjson``
  (one document per line, field ``text_field``), each optionally ``.gz`` / ``.xz``
  compressed, or a ``.parquet`` file (column ``text_field``);
- a folder: a Hugging Face dataset saved with ``save_to_disk`` (``PATH@split`` picks a split
  of a ``DatasetDict``), or else every supported file below it, in sorted order;
- ``hf:NAME[:config][@split]``: a hub dataset, streamed (needs a network; split defaults
  to ``train``).
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from universal_neurons.errors import UserError

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
COMPRESSIONS: dict[str, Callable[..., Any]] = {".gz": gzip.open, ".xz": lzma.open}
SUPPORTED = ".txt, .jsonl, .ndjson (optionally .gz/.xz), .parquet"
HUB_SHUFFLE_BUFFER = 10_000
_HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")


@dataclass
class TextSource:
    """Documents from one place. ``name`` is recorded in the dataset's ``meta.json``."""

    name: str
    read: Callable[[], Iterator[str]]  # raw texts in source order, a fresh iterator per call
    split_docs: str | None = None
    read_shuffled: Callable[[int], Iterator[str]] | None = None  # streaming sources only

    def documents(self, seed: int | None = None) -> Iterable[str]:
        """Non-empty documents; shuffled with ``np.random.default_rng(seed)`` unless None.

        Local sources are read fully and permuted (a list comes back); streaming hub
        sources shuffle through a buffer of ``HUB_SHUFFLE_BUFFER`` documents.
        """
        if seed is None:
            return self._split(self.read())
        if self.read_shuffled is not None:
            return self._split(self.read_shuffled(seed))
        docs = list(self._split(self.read()))
        order = np.random.default_rng(seed).permutation(len(docs))
        return [docs[i] for i in order]

    def _split(self, texts: Iterable[str]) -> Iterator[str]:
        for text in texts:
            parts = text.split(self.split_docs) if self.split_docs else [text]
            for part in parts:
                if part.strip():
                    yield part.strip() if self.split_docs else part


def open_source(spec: str | os.PathLike, text_field: str = "text",
                split_docs: str | None = None) -> TextSource:
    """Resolve a source spec (see the module docstring) to a :class:`TextSource`."""
    if split_docs == "":
        raise UserError("--split-docs must be a non-empty delimiter, e.g. '\\n\\n\\n'")
    s = str(spec)
    if s.startswith("bundled:"):
        from universal_neurons.data.bundled import SPLITS, bundled_corpus_path

        which = s.split(":", 1)[1]
        if which not in SPLITS:
            raise UserError(f"unknown bundled split in {s!r}; use bundled:test or bundled:train")
        corpus = bundled_corpus_path(which)  # type: ignore[arg-type]
        return TextSource(s, lambda: _read_jsonl(corpus, "text"), split_docs)
    if s.startswith("hf:"):
        return _hub_source(s, text_field, split_docs)
    path, split = Path(s), None
    if not path.exists() and "@" in s:
        base, split = s.rsplit("@", 1)
        path = Path(base) if Path(base).is_dir() else path
    if not path.exists():
        raise UserError(f"source {s!r} does not exist; pass a file ({SUPPORTED}), a folder, "
                        "a save_to_disk dataset folder, bundled:test, or hf:NAME[:config][@split]")
    if path.is_dir() and any((path / m).exists() for m in _HF_MARKERS):
        return _disk_dataset_source(s, path, split, text_field, split_docs)
    if split is not None:
        raise UserError(f"{s!r}: '@{split}' selects a split of a save_to_disk dataset folder, "
                        f"but {path} is not one")
    files = sorted(p for p in path.rglob("*") if p.is_file() and _format(p)) if path.is_dir() else [path]
    if not files:
        raise UserError(f"folder {path} holds no readable files ({SUPPORTED}) and is not a "
                        "save_to_disk dataset")
    for f in files:
        if _format(f) is None:
            raise UserError(f"cannot read {f}: unsupported file type; use {SUPPORTED}")
        if _format(f) == "parquet":
            _parquet_check(f, text_field)

    def read() -> Iterator[str]:
        for f in files:
            yield from _read_file(f, text_field)

    return TextSource(str(path), read, split_docs)


def _format(path: Path) -> str | None:
    name = path.name.lower()
    for ext in COMPRESSIONS:
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    else:
        if name.endswith(".parquet"):
            return "parquet"
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    return None


def _open_text(path: Path):
    opener: Callable[..., Any] = COMPRESSIONS.get(path.suffix.lower(), open)
    return opener(path, "rt", encoding="utf-8")


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    fmt = _format(path)
    if fmt == "parquet":
        yield from _read_parquet(path, text_field)
        return
    try:
        if fmt == "jsonl":
            yield from _read_jsonl(path, text_field)
        else:
            with _open_text(path) as f:
                yield f.read()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError, lzma.LZMAError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            text = _field(record, text_field, f"{path}:{lineno}")
            if text is not None:
                yield text


def _field(record: Any, text_field: str, where: str) -> str | None:
    if not isinstance(record, dict) or text_field not in record:
        keys = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
        raise UserError(f"{where}: no field {text_field!r} (found: {keys}); pass "
                        "--text-field NAME")
    return _text(record[text_field], text_field, where)


def _text(value: Any, text_field: str, where: str) -> str | None:
    """``value`` if it is text, None if missing; UserError for anything else."""
    if value is not None and not isinstance(value, str):
        raise UserError(f"{where}: field {text_field!r} is {type(value).__name__}, not text")
    return value


def _parquet_check(path: Path, text_field: str) -> None:
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
    except Exception as e:  # pyarrow raises several types for bad files
        raise UserError(f"cannot read parquet file {path}: {e}") from None
    if text_field not in names:
        raise UserError(f"{path} has no column {text_field!r} (columns: {', '.join(names)}); "
                        "pass --text-field NAME")


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    _parquet_check(path, text_field)
    for batch in pq.ParquetFile(path).iter_batches(columns=[text_field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            text = _text(value, text_field, str(path))
            if text is not None:
                yield text


def _disk_dataset_source(spec: str, path: Path, split: str | None, text_field: str,
                         split_docs: str | None) -> TextSource:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise UserError(f"cannot load the saved dataset {path}: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        splits = list(ds)
        if split is None:
            split = "test" if "test" in ds else splits[0] if len(splits) == 1 else None
        if split not in ds:
            raise UserError(f"{path} holds splits {', '.join(splits)}; pick one with "
                            f"{path}@SPLIT" + (f" ({split!r} is not one)" if split else ""))
        ds, spec = ds[split], f"{path}@{split}"
    elif split is not None:
        raise UserError(f"{path} is a single dataset without splits; drop '@{split}'")
    if text_field not in ds.column_names:
        raise UserError(f"{path} has no column {text_field!r} (columns: "
                        f"{', '.join(ds.column_names)}); pass --text-field NAME")

    def read() -> Iterator[str]:
        for i in range(0, len(ds), 1024):
            for j, value in enumerate(ds[i : i + 1024][text_field]):
                text = _text(value, text_field, f"{spec} row {i + j}")
                if text is not None:
                    yield text

    return TextSource(spec, read, split_docs)


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf:NAME[:config][@split]`` -> ``(name, config, split)``; split defaults to train."""
    rest, split = spec[3:], "train"
    if "@" in rest:
        rest, split = rest.rsplit("@", 1)
    name, _, config = rest.partition(":")
    if not name or not split:
        raise UserError(f"bad hub dataset spec {spec!r}; expected hf:NAME[:config][@split], "
                        "e.g. hf:NeelNanda/pile-10k@train")
    return name, config or None, split


def _hub_source(spec: str, text_field: str, split_docs: str | None) -> TextSource:
    name, config, split = parse_hub_spec(spec)
    unreachable = (f"could not stream hub dataset {name!r} (config {config}, split {split!r})"
                   "{}; the Hugging Face hub may be unreachable: pass a local file or folder "
                   f"({SUPPORTED}, or a save_to_disk dataset) instead")
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as e:
        raise UserError(unreachable.format(f": {_one_line(e)}")) from None

    def stream(d) -> Iterator[str]:
        try:
            for i, record in enumerate(d):
                text = _field(record, text_field, f"{spec} record {i}")
                if text is not None:
                    yield text
        except UserError:
            raise
        except Exception as e:
            raise UserError(unreachable.format(f" (failed while reading: {_one_line(e)})")) from None

    return TextSource(spec, lambda: stream(ds), split_docs,
                      read_shuffled=lambda seed: stream(ds.shuffle(seed=seed, buffer_size=HUB_SHUFFLE_BUFFER)))


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
