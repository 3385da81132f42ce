"""Memory-mapped token datasets: windows of ``n_ctx`` tokens, BOS first (as in the paper).

A dataset is a folder holding ``tokens.npy`` (``[n_seq, n_ctx]``, uint16 or uint32) and
``meta.json`` (tokenizer fingerprint, counts, source, seed). ``meta.json`` is written last,
each file under a temporary name and renamed, so a folder whose ``meta.json`` matches its
``tokens.npy`` is complete.

Building: documents (shuffled with ``np.random.default_rng(seed)``) are tokenized in
batches, concatenated with EOS between documents, and cut into consecutive pieces of
``n_ctx - 1`` tokens; each window is BOS followed by one piece. The trailing partial piece
is dropped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence, Sized
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from universal_neurons import __version__
from universal_neurons.data.sources import TextSource, open_source
from universal_neurons.data.tokens import tokenizer_fingerprint
from universal_neurons.errors import UserError
from universal_neurons.rundir import atomic_path, write_json

log = logging.getLogger(__name__)

TOKENS = "tokens.npy"
META = "meta.json"
FORMAT_VERSION = 1
TOKENIZE_BATCH = 256  # documents per tokenizer call
_REQUIRED = ("n_seq", "n_ctx", "tokenizer_fingerprint")
_REBUILD = "rebuild it with `universal-neurons tokenize SOURCE --model MODEL --out DIR`"


class TokenDataset:
    """A token dataset folder, opened read-only (see :func:`open_token_dataset`)."""

    def __init__(self, path: Path, tokens: np.ndarray, meta: dict[str, Any]):
        self.path = path
        self.tokens = tokens  # [n_seq, n_ctx] memmap, column 0 is BOS
        self.meta = meta

    @property
    def n_seq(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def n_ctx(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def n_tokens(self) -> int:
        """All tokens, BOS included: ``n_seq * n_ctx``."""
        return self.n_seq * self.n_ctx

    @property
    def fingerprint(self) -> str:
        return self.meta["tokenizer_fingerprint"]

    def __len__(self) -> int:
        return self.n_seq

    def __repr__(self) -> str:
        return f"TokenDataset({str(self.path)!r}, n_seq={self.n_seq}, n_ctx={self.n_ctx})"

    def iter_batches(self, batch_size: int, start_seq: int = 0,
                     end_seq: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first sequence index, Int64[b, n_ctx])`` for sequences ``[start_seq, end_seq)``."""
        end = self.n_seq if end_seq is None else end_seq
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if not 0 <= start_seq <= end <= self.n_seq:
            raise UserError(f"sequence range [{start_seq}, {end}) is outside the {self.n_seq} "
                            f"sequences of {self.path}")
        for s in range(start_seq, end, batch_size):
            yield s, np.asarray(self.tokens[s : min(s + batch_size, end)], dtype=np.int64)

    def check_tokenizer(self, tokenizer: Any, model_name: str) -> None:
        """Raise ``UserError`` if ``tokenizer`` is not the one this dataset was made with."""
        fp = tokenizer_fingerprint(tokenizer)
        if fp != self.fingerprint:
            raise UserError(
                f"token dataset {self.path} was tokenized with {self.meta.get('tokenizer')!r} "
                f"(vocab {self.meta.get('vocab_size')}, fingerprint {self.fingerprint[:12]}) but "
                f"model {model_name!r} uses another tokenizer (vocab {len(tokenizer)}, "
                f"fingerprint {fp[:12]}); re-tokenize with `universal-neurons tokenize "
                f"{self.meta.get('source', 'SOURCE')} --model {model_name} --out DIR`")


def open_token_dataset(path: str | os.PathLike) -> TokenDataset:
    """Open a dataset folder (or its ``tokens.npy`` / ``meta.json``); UserError if unusable."""
    p = Path(path)
    if p.is_file() and p.name in (TOKENS, META):
        p = p.parent
    if not p.exists():
        raise UserError(f"token dataset {p} does not exist; build one with "
                        f"`universal-neurons tokenize SOURCE --model MODEL --out {p}`")
    if not p.is_dir():
        raise UserError(f"{p} is a file, not a token dataset folder (one holding {TOKENS} "
                        f"and {META})")
    meta_path = p / META
    if not meta_path.is_file():
        raise UserError(f"{p} has no {META}: it is not a token dataset, or its build was "
                        f"interrupted; {_REBUILD}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is corrupt ({e}); {_REBUILD}") from None
    missing = [k for k in _REQUIRED if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise UserError(f"{meta_path} lacks {', '.join(missing)}; {_REBUILD}")
    if not all(isinstance(meta[k], int) and meta[k] >= 0 for k in ("n_seq", "n_ctx")):
        raise UserError(f"{meta_path} has bad counts n_seq={meta['n_seq']!r}, "
                        f"n_ctx={meta['n_ctx']!r}; {_REBUILD}")
    if meta["n_seq"] == 0:
        raise UserError(f"token dataset {p} is empty (n_seq=0); {_REBUILD} from a larger corpus")
    try:
        tokens = np.load(p / TOKENS, mmap_mode="r")
    except FileNotFoundError:
        raise UserError(f"{p} has {META} but no {TOKENS}; {_REBUILD}") from None
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"cannot read {p / TOKENS} ({e}); {_REBUILD}") from None
    expected = (meta["n_seq"], meta["n_ctx"])
    if tokens.shape != expected or tokens.dtype.kind != "u":
        raise UserError(f"{p / TOKENS} holds {tokens.dtype}{list(tokens.shape)} but {META} says "
                        f"unsigned ints of shape {list(expected)}; the dataset is damaged: {_REBUILD}")
    return TokenDataset(p, tokens, meta)


def build_token_dataset(source: str | os.PathLike | TextSource, tokenizer: Any,
                        out_dir: str | os.PathLike, n_ctx: int = 512, tokens: int | None = None,
                        seed: int = 0, shuffle_docs: bool = True, show_progress: bool = True, *,
                        text_field: str = "text", split_docs: str | None = None,
                        tokenizer_name: str | None = None,
                        overwrite: bool = False) -> TokenDataset:
    """Tokenize ``source`` into ``out_dir`` and open it.

    ``tokens`` caps the total (``n_seq * n_ctx``, BOS included), rounded down to whole
    windows; None takes every whole window the source gives. ``tokenizer_name`` (e.g. the
    model it came from) is recorded in ``meta.json``; ``overwrite`` replaces an existing
    dataset in ``out_dir``.
    """
    if n_ctx < 2:
        raise UserError(f"n_ctx must be at least 2 (BOS plus one token), got {n_ctx}")
    if tokens is not None and tokens < n_ctx:
        raise UserError(f"tokens={tokens:,} is less than one window of n_ctx={n_ctx}; ask for "
                        f"at least {n_ctx} tokens")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the token dataset")
    if ((out / META).exists() or (out / TOKENS).exists()) and not overwrite:
        raise UserError(f"{out} already holds a token dataset; pass --overwrite or choose "
                        "another --out")
    bos, eos = _bos_eos(tokenizer, tokenizer_name)
    src = source if isinstance(source, TextSource) else open_source(source, text_field, split_docs)
    vocab = len(tokenizer)
    dtype = np.uint16 if vocab <= 1 << 16 else np.uint32
    n_seq_wanted = tokens // n_ctx if tokens is not None else None
    need = n_seq_wanted * (n_ctx - 1) if n_seq_wanted is not None else None

    docs = src.documents(seed if shuffle_docs else None)
    stream, n_docs = _tokenize_stream(docs, tokenizer, eos, dtype, need, show_progress)
    n_avail = len(stream) // (n_ctx - 1)
    if n_avail == 0:
        raise UserError(f"source {src.name} gives {len(stream):,} tokens, less than one window "
                        f"of n_ctx={n_ctx}; use a larger corpus or a smaller --n-ctx")
    if n_seq_wanted is not None and n_seq_wanted > n_avail:
        raise UserError(f"asked for {tokens:,} tokens but source {src.name} gives only "
                        f"{n_avail * n_ctx:,} ({n_avail:,} windows of {n_ctx}); ask for at most "
                        f"{n_avail * n_ctx:,} or use a larger corpus")
    n_seq = n_seq_wanted or n_avail
    windows = np.empty((n_seq, n_ctx), dtype=dtype)  # [n_seq, n_ctx]
    windows[:, 0] = bos
    windows[:, 1:] = stream[: n_seq * (n_ctx - 1)].reshape(n_seq, n_ctx - 1)

    meta = {
        "format_version": FORMAT_VERSION,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "tokenizer": tokenizer_name or getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
        "vocab_size": vocab, "n_ctx": n_ctx, "n_seq": n_seq, "n_tokens": n_seq * n_ctx,
        "dtype": np.dtype(dtype).name, "bos_id": bos, "eos_id": eos,
        "source": src.name, "text_field": text_field, "split_docs": split_docs,
        "seed": seed, "shuffle_docs": shuffle_docs, "n_documents_read": n_docs,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "version": __version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)  # from here until the end the folder is incomplete
    with atomic_path(out / TOKENS) as tmp, open(tmp, "wb") as f:
        np.save(f, windows)
    write_json(out / META, meta)
    log.debug("token dataset %s: %d x %d tokens from %s", out, n_seq, n_ctx, src.name)
    return open_token_dataset(out)


def _bos_eos(tokenizer: Any, name: str | None) -> tuple[int, int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None and eos is None:
        name = name or getattr(tokenizer, "name_or_path", "")
        raise UserError(f"tokenizer {name!r} has neither a BOS nor an EOS token; use the "
                        "tokenizer of a causal language model (its folder, with tokenizer_config.json)")
    return (bos if bos is not None else eos), (eos if eos is not None else bos)


def _tokenize_stream(docs: Iterable[str], tokenizer: Any, eos: int, dtype: type,
                     need: int | None, show_progress: bool) -> tuple[np.ndarray, int]:
    """Documents joined by EOS as one ``[n]`` array; stops once ``need`` tokens are in."""
    from tqdm.auto import tqdm

    total = need if need is not None else (len(docs) if isinstance(docs, Sized) else None)
    bar = tqdm(total=total, unit="tok" if need is not None else "doc", desc="tokenizing",
               disable=not show_progress, unit_scale=need is not None)
    chunks: list[np.ndarray] = []
    n_tokens = n_docs = 0
    it, size = iter(docs), 8  # batches grow to TOKENIZE_BATCH: small caps read little
    with bar:
        while need is None or n_tokens < need:
            batch, size = list(islice(it, size)), min(2 * size, TOKENIZE_BATCH)
            if not batch:
                break
            flat: list[int] = []
            for ids in tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]:
                if n_docs:
                    flat.append(eos)
                flat.extend(ids)
                n_docs += 1
            chunks.append(np.array(flat, dtype=dtype))
            n_tokens += len(flat)
            bar.update(min(len(flat), need - bar.n) if need is not None else len(batch))
    stream = np.concatenate(chunks) if chunks else np.zeros(0, dtype=dtype)
    return stream, n_docs


def cache_root() -> Path:
    """``$UNIVERSAL_NEURONS_CACHE``, else ``~/.cache/universal-neurons``."""
    env = os.environ.get("UNIVERSAL_NEURONS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "universal-neurons"


def default_dataset(tokenizer: Any, n_ctx: int = 512, tokens: int | None = None,
                    cache_dir: str | os.PathLike | None = None,
                    show_progress: bool = True) -> TokenDataset:
    """The bundled test split tokenized with ``tokenizer``, built once and cached.

    Cached in ``cache_dir`` (default ``cache_root()/datasets``), keyed by tokenizer
    fingerprint, ``n_ctx`` and ``tokens``.
    """
    fp = tokenizer_fingerprint(tokenizer)
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "datasets"
    path = root / f"bundled-test-{fp[:16]}-ctx{n_ctx}-{tokens if tokens is not None else 'all'}"
    if (path / META).exists():
        try:
            ds = open_token_dataset(path)
            if ds.fingerprint == fp:
                return ds
        except UserError as e:
            log.warning("rebuilding cached dataset: %s", e)
    return build_token_dataset("bundled:test", tokenizer, path, n_ctx=n_ctx, tokens=tokens,
                               seed=0, shuffle_docs=True, show_progress=show_progress,
                               overwrite=True)


_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(text: str) -> int:
    """``"100M"`` -> 100_000_000; accepts ``k``/``M``/``B`` suffixes and ``_`` or ``,``."""
    m = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?)\s*([kKmMbBgG]?)\s*", str(text))
    if not m:
        raise ValueError(f"bad count {text!r}; write e.g. 1000000, 1M, 500k")
    value = float(m.group(1).replace("_", "").replace(",", "")) * _SUFFIX[m.group(2).lower()]
    if value != int(value):
        raise ValueError(f"count {text!r} is not a whole number")
    return int(value)


def spread_rows(n_total: int, n: int) -> np.ndarray:
    """``n`` window indices (sorted, distinct) spread evenly over ``0..n_total-1``, both ends
    included: ``round(linspace(0, n_total - 1, n))`` (all of them when ``n >= n_total``)."""
    if n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, max(n, 1)).round().astype(np.int64))


def dataset_for_models(models: Sequence[Any], dataset: str | os.PathLike | None = None,
                       n_ctx: int | None = None, max_tokens: int | None = None,
                       show_progress: bool = True, round_up: bool = False
                       ) -> tuple[TokenDataset, int]:
    """The token dataset a stage streams through ``models`` and how many sequences to use.

    ``dataset`` None = the bundled test split tokenized for the models with context
    ``n_ctx`` (default ``min(512, smallest model context)``). ``max_tokens`` caps the tokens
    used in whole sequences (rounded down, or up with ``round_up``; at least one). Raises
    ``UserError`` when the dataset's tokenizer or context does not fit the models.
    """
    max_ctx = min(m.adapter.n_ctx for m in models)
    if dataset is None:
        ds = default_dataset(models[0].tokenizer, n_ctx=n_ctx or min(512, max_ctx),
                             show_progress=show_progress)
    else:
        ds = open_token_dataset(dataset)
    ds.check_tokenizer(models[0].tokenizer, models[0].name)
    if ds.n_ctx > max_ctx:
        names = ", ".join(m.name for m in models)
        raise UserError(f"token dataset {ds.path} has context {ds.n_ctx} but {names} take(s) "
                        f"at most {max_ctx} tokens; tokenize with --n-ctx {max_ctx}")
    n_seq = ds.n_seq
    if max_tokens is not None:
        wanted = -(-max_tokens // ds.n_ctx) if round_up else max_tokens // ds.n_ctx
        n_seq = min(n_seq, max(1, wanted))
    return ds, n_seq
