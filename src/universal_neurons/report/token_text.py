"""Token ids as display strings (:class:`TokenText`), for the report's examples and tables,
and where the report finds a run's token dataset and tokenizer."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from universal_neurons.constants import DATASET_DIR, FEATURES_DIR, TOKENIZER_DIR, VOCAB_FEATURES
from universal_neurons.report.rundata import RunData

log = logging.getLogger(__name__)

_REPLACEMENT = "\ufffd"


class TokenText:
    """Decodes token ids to display strings: with a tokenizer, else a list of surface
    strings indexed by id, else ``#id``."""

    def __init__(self, tokenizer: Any = None, strings: Sequence[str] | None = None):
        self.tokenizer, self.strings = tokenizer, strings
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        """The token's text; bytes that are not a whole UTF-8 character are returned as
        lone surrogates U+DC80..U+DCFF (``surrogateescape``; ``report.tokens`` shows them
        as ``<0xE2>``) instead of U+FFFD."""
        token_id = int(token_id)
        if token_id not in self._cache:
            text = f"#{token_id}"
            if self.tokenizer is None and self.strings is not None and 0 <= token_id < len(self.strings):
                text = str(self.strings[token_id])
            elif self.tokenizer is not None:
                try:
                    text = self.tokenizer.decode([token_id])
                except Exception:  # noqa: BLE001 - an id outside the vocabulary
                    pass
                if _REPLACEMENT in text:
                    raw = self.token_bytes(token_id)
                    if raw is not None:
                        text = raw.decode("utf-8", errors="surrogateescape")
            self._cache[token_id] = text
        return self._cache[token_id]

    def token_bytes(self, token_id: int) -> bytes | None:
        """The raw bytes of a byte token: a byte-level BPE token (GPT-2 style alphabet) or a
        SentencePiece byte-fallback piece (``<0xE2>``); else None."""
        try:
            piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
        except Exception:  # noqa: BLE001 - not a Hugging Face tokenizer / unknown id
            return None
        if not isinstance(piece, str) or not piece:
            return None
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):  # SentencePiece
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                return None
        table = _byte_decoder()
        if not all(c in table for c in piece):
            return None
        return bytes(table[c] for c in piece)

    def sequence(self, ids: Sequence[int]) -> list[str]:
        """Display strings of consecutive tokens. A character split over several byte-level
        tokens is shown whole on the token that completes it; the tokens before it show
        their bytes (as surrogate escapes, see ``__call__``) instead of one U+FFFD per
        piece. Sequences without split characters are decoded token by token (cached)."""
        alone = [self(i) for i in ids]
        if self.tokenizer is None or not any(_REPLACEMENT in t or _has_bytes(t) for t in alone):
            return alone
        ids = [int(i) for i in ids]
        start = 0  # a window that starts inside a character: its orphan bytes stand alone
        while start < len(ids) and alone[start] and all(0xDC80 <= ord(c) <= 0xDCBF for c in alone[start]):
            start += 1
        out, prev = list(alone[:start]), ""
        for i in range(start, len(ids)):
            try:
                cur = self.tokenizer.decode(ids[start:i + 1])
            except Exception:  # noqa: BLE001 - an id outside the vocabulary
                return alone
            if i < len(ids) - 1:  # an incomplete character may still be completed
                cur = cur.rstrip(_REPLACEMENT)
            if cur.startswith(prev):
                piece = cur[len(prev):]
                if _has_bytes(alone[i]) and (not piece or _REPLACEMENT in piece):
                    piece = alone[i]  # bytes of a character completed later (or never)
                out.append(piece)
                prev = cur
            else:  # the decoder rewrote earlier text: fall back to this token alone
                out.append(alone[i])
                prev = cur
        return out


def _has_bytes(text: str) -> bool:
    return any(0xDC80 <= ord(c) <= 0xDCFF for c in text)


@cache
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: display character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def dataset_candidates(run: RunData) -> list[Path]:
    """Token datasets the manifest names, the stats stage's first (its examples index it):
    a stage's ``config.dataset`` or ``dataset.path``; relative paths tried against the run
    directory and the working directory; then ``RUN/dataset``."""
    raw = run.manifest.get("stages")
    stages: dict[str, Any] = raw if isinstance(raw, dict) else {}
    found: list[str] = []
    for name in sorted(stages, key=lambda k: k != "stats"):
        st: dict[str, Any] = stages[name] if isinstance(stages[name], dict) else {}
        raw_cfg = st.get("config")
        cfg: dict[str, Any] = raw_cfg if isinstance(raw_cfg, dict) else {}
        for v in (cfg.get("dataset"), st.get("dataset")):
            if isinstance(v, dict):
                v = v.get("path")
            if isinstance(v, str) and v:
                found.append(v)
    out: list[Path] = []
    for s in found:
        p = Path(s).expanduser()
        for cand in ((p,) if p.is_absolute() else (run.path / p, Path.cwd() / p)):
            if cand.exists() and cand not in out:
                out.append(cand)
    local = run.path / DATASET_DIR
    if local.is_dir() and local not in out:
        out.append(local)
    return out


def load_tokenizer(run: RunData, dataset) -> Any:
    """The tokenizer that made the dataset: ``RUN/tokenizer``, a local path in the dataset's
    meta, or a model spec through ``models.loading`` (only if already cached locally)."""
    cands: list[str] = []
    if (run.path / TOKENIZER_DIR).exists():
        cands.append(str(run.path / TOKENIZER_DIR))
    if dataset is not None and isinstance(dataset.meta.get("tokenizer"), str):
        cands.append(dataset.meta["tokenizer"])
    for c in cands:
        try:
            if Path(c).expanduser().exists():
                return _local_tokenizer(Path(c).expanduser())
            from universal_neurons.models import loading

            if hasattr(loading, "load_tokenizer"):
                return loading.load_tokenizer(c)
        except Exception as e:  # noqa: BLE001
            log.info("report: tokenizer %s not usable: %s", c, e)
    if cands:
        run._problem(f"no usable tokenizer among {cands}; tokens are shown as ids")
    return None


def _local_tokenizer(p: Path) -> Any:
    """A tokenizer from a folder or a bare ``tokenizer.json`` (never touches the network)."""
    if p.is_file() and not (p.parent / "tokenizer_config.json").exists():
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast(tokenizer_file=str(p))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(p.parent if p.is_file() else p), local_files_only=True)


def surface_strings(run: RunData, dataset) -> list[str] | None:
    """The ``token`` column of ``RUN/features/*/vocab_features.parquet`` (matching the
    dataset's tokenizer fingerprint when known): every token id decoded alone."""
    hits = sorted((run.path / FEATURES_DIR).glob(f"*/{VOCAB_FEATURES}"))
    fp = (dataset.meta.get("tokenizer_fingerprint") or "")[:16] if dataset is not None else ""
    hits = [h for h in hits if h.parent.name == fp] or hits
    for h in hits:
        try:
            import pandas as pd

            df = pd.read_parquet(h, columns=["token_id", "token"]).sort_values("token_id")
            if df["token_id"].tolist() == list(range(len(df))):
                return df["token"].astype(str).tolist()
        except Exception as e:  # noqa: BLE001
            log.info("report: %s not usable for token strings: %s", h, e)
    return None
