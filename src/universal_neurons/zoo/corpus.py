"""Build the bundled English corpus from public-domain / permissive Debian packages.

Sources (install with ``apt-get install bible-kjv jargon-text python3-doc dict-devil
wordnet-base``):

==============  =========================================  =====================
source          where                                      licence
==============  =========================================  =====================
kjv             ``bible`` program (bible-kjv-text)         public domain
jargon          /usr/share/doc/jargon-text/jargon.txt.gz   public domain
devil           /usr/share/dictd/devil.dict.dz             public domain (1911)
python-docs     python3.X-doc ``html/_sources/**.rst.txt``  PSF licence
wordnet         /usr/share/wordnet/data.{noun,verb,...}    WordNet 3.0 licence
==============  =========================================  =====================

Every document is cleaned of markup, assigned to the train or test split by a hash of
its id (so the split does not depend on the order of sources), and written as
xz-compressed JSON lines ``{"id": ..., "source": ..., "text": ...}``.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TEST_PERCENT = 10


@dataclass(frozen=True)
class Document:
    id: str
    source: str
    text: str


def _clean_ws(text: str) -> str:
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


# --- King James Bible -------------------------------------------------------------
def kjv_documents() -> Iterator[Document]:
    """One document per chapter, verse numbers removed."""
    exe = shutil.which("bible")
    if exe is None:
        raise FileNotFoundError("the `bible` program is missing; install it with "
                                "`apt-get install bible-kjv`")
    out = subprocess.run([exe, "-l0", "Gen1:1-Rev22:21"], capture_output=True, text=True,
                         check=True).stdout
    title, verses = None, []
    for line in out.splitlines():
        m = re.match(r"^\s+\d+ (.*)$", line)
        if m:
            verses.append(m.group(1).strip())
        elif line.strip():
            if title and verses:
                yield Document(f"kjv/{title}", "kjv", f"{title}\n\n" + " ".join(verses))
            title, verses = line.strip(), []
    if title and verses:
        yield Document(f"kjv/{title}", "kjv", f"{title}\n\n" + " ".join(verses))


# --- Jargon File -------------------------------------------------------------------
def jargon_documents(path: str = "/usr/share/doc/jargon-text/jargon.txt.gz") -> Iterator[Document]:
    """One document per glossary entry (``:term: ...`` up to the next entry)."""
    with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    entry_re = re.compile(r"^   :([^:]+):(.*)$")
    starts = [i for i, line in enumerate(lines) if entry_re.match(line)]
    for k, i in enumerate(starts):
        j = starts[k + 1] if k + 1 < len(starts) else len(lines)
        m = entry_re.match(lines[i])
        assert m is not None
        term = m.group(1).strip()
        body = textwrap.dedent("\n".join(lines[i + 1 : j]))
        body = re.sub(r"\{([^}]*)\}", r"\1", body)
        # Join hard-wrapped lines inside paragraphs.
        paras = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body) if p.strip()]
        text = f"{term}{m.group(2).rstrip()}\n\n" + "\n\n".join(paras)
        yield Document(f"jargon/{term}", "jargon", _clean_ws(text))


# --- The Devil's Dictionary ----------------------------------------------------------
def devil_documents(path: str = "/usr/share/dictd/devil.dict.dz") -> Iterator[Document]:
    """One document per run of about 20 consecutive entries."""
    with gzip.open(path, "rt", encoding="latin-1") as f:
        text = f.read()
    start = text.find("ABASEMENT, n.")
    text = text[start:] if start >= 0 else text
    entries = re.split(r"\n\s*\n(?=[A-Z][A-Z' .-]+, [a-z]+\.)", text)
    group = 20
    for g in range(0, len(entries), group):
        chunk = entries[g : g + group]
        paras = []
        for e in chunk:
            for p in re.split(r"\n\s*\n", e):
                if p.strip():
                    # Verse quotations keep their lines; prose is unwrapped.
                    if p.startswith("    "):
                        paras.append(textwrap.dedent(p).strip())
                    else:
                        paras.append(" ".join(p.split()))
        first = chunk[0].split(",")[0].strip()
        yield Document(f"devil/{first}", "devil", _clean_ws("\n\n".join(paras)))


# --- Python documentation (reST sources) ------------------------------------------
_ROLE_RE = re.compile(r":[a-zA-Z:]+:`~?!?([^`<]*?)(?:\s*<[^`]*>)?`")
_LINK_RE = re.compile(r"`([^`<]+?)\s*<[^`]*>`_+")


def _rst_to_text(src: str) -> str:
    out: list[str] = []
    skip_indent: int | None = None
    for line in src.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if stripped and indent <= skip_indent:
                skip_indent = None
            else:
                continue
        if stripped.startswith(".. "):
            # Directives and comments: keep the argument of a few textual ones.
            m = re.match(r"\.\. (note|warning|versionadded|versionchanged|deprecated|"
                         r"seealso|function|method|class|attribute|data|exception|"
                         r"module)::\s*(.*)", stripped)
            if m and m.group(2):
                out.append(m.group(2))
            if not m:
                skip_indent = indent
            continue
        if re.fullmatch(r"([=\-~^\"'`#*+.:_])\1{2,}", stripped):
            continue  # section underline
        line = _ROLE_RE.sub(r"\1", line)
        line = _LINK_RE.sub(r"\1", line)
        line = line.replace("``", "").replace("**", "")
        line = re.sub(r"(?<![\w*])\*(\S[^*]*?)\*(?!\w)", r"\1", line)
        line = re.sub(r"\|(\w+)\|", r"\1", line)
        out.append(line.rstrip())
    return _clean_ws("\n".join(out))


def python_doc_documents(root: str | None = None) -> Iterator[Document]:
    """One document per reST source file of the Python documentation."""
    if root is None:
        found = sorted(glob.glob("/usr/share/doc/python3*-doc/html/_sources"))
        if not found:
            raise FileNotFoundError("no Python docs found; install them with "
                                    "`apt-get install python3-doc`")
        root = found[-1]
    for path in sorted(glob.glob(os.path.join(root, "**", "*.rst.txt"), recursive=True)):
        rel = os.path.relpath(path, root)
        if rel.startswith(("whatsnew/changelog", "genindex")):
            continue  # one huge list of issue numbers, not prose
        with open(path, encoding="utf-8", errors="replace") as f:
            text = _rst_to_text(f.read())
        if len(text) > 200:
            yield Document(f"python-docs/{rel}", "python-docs", text)


# --- WordNet glosses -----------------------------------------------------------------
def wordnet_documents(root: str = "/usr/share/wordnet", group: int = 40) -> Iterator[Document]:
    """Groups of ``group`` consecutive synsets rendered as ``words: gloss`` lines."""
    pos_names = {"noun": "noun", "verb": "verb", "adj": "adjective", "adv": "adverb"}
    for pos, pos_name in pos_names.items():
        path = os.path.join(root, f"data.{pos}")
        lines: list[str] = []
        first = None
        with open(path, encoding="utf-8", errors="replace") as f:
            for raw in f:
                if raw.startswith("  ") or "|" not in raw:
                    continue  # licence header
                head, gloss = raw.split("|", 1)
                fields = head.split()
                n_words = int(fields[3], 16)
                words = [fields[4 + 2 * k].replace("_", " ") for k in range(n_words)]
                words = [re.sub(r"\(.*\)$", "", w) for w in words]
                lines.append(f"{', '.join(words)} ({pos_name}): {gloss.strip()}")
                first = first or fields[0]
                if len(lines) == group:
                    yield Document(f"wordnet/{pos}/{first}", "wordnet", "\n".join(lines))
                    lines, first = [], None
        if lines:
            yield Document(f"wordnet/{pos}/{first}", "wordnet", "\n".join(lines))


SOURCES = {
    "kjv": kjv_documents,
    "jargon": jargon_documents,
    "devil": devil_documents,
    "python-docs": python_doc_documents,
    "wordnet": wordnet_documents,
}

LICENCES = {
    "kjv": "King James Version of the Bible (Debian bible-kjv-text): public domain.",
    "jargon": "The Jargon File 4.4.7 (Debian jargon-text): public domain.",
    "devil": "Ambrose Bierce, The Devil's Dictionary, 1911 (Debian dict-devil): public domain.",
    "python-docs": "Python 3 documentation reST sources (Debian python3-doc): "
    "Python Software Foundation License Version 2.",
    "wordnet": "WordNet 3.0 glosses (Debian wordnet-base): WordNet 3.0 license "
    "(Princeton University), permissive; copyright notice retained below.",
}

WORDNET_NOTICE = """WordNet Release 3.0 This software and database is being provided to you, the
LICENSEE, by Princeton University under the following license. By obtaining, using
and/or copying this software and database, you agree that you have read, understood,
and will comply with these terms and conditions.: Permission to use, copy, modify and
distribute this software and database and its documentation for any purpose and
without fee or royalty is hereby granted, provided that you agree to comply with the
following copyright notice and statements, including the disclaimer, and that the
same appear on ALL copies of the software, database and documentation, including
modifications that you make for internal use or for distribution. WordNet 3.0
Copyright 2006 by Princeton University. All rights reserved. THIS SOFTWARE AND
DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR
WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION, PRINCETON
UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT- ABILITY OR FITNESS FOR
ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR
DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR
OTHER RIGHTS. The name of Princeton University or Princeton may not be used in
advertising or publicity pertaining to distribution of the software and/or database.
Title to copyright in this software, database and any associated documentation shall
at all times remain with Princeton University and LICENSEE agrees to preserve same.
"""


def split_of(doc_id: str, test_percent: int = TEST_PERCENT) -> str:
    """Deterministic train/test assignment from a hash of the document id."""
    h = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:4], "little")
    return "test" if h % 100 < test_percent else "train"


def build_corpus(out_dir: str | Path, sources: list[str] | None = None,
                 test_percent: int = TEST_PERCENT) -> dict[str, dict[str, int]]:
    """Write ``corpus-{train,test}.jsonl.xz`` and ``NOTICE.txt`` into ``out_dir``.

    Returns per-split, per-source character counts.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = sources or list(SOURCES)
    unknown = [s for s in names if s not in SOURCES]
    if unknown:
        raise ValueError(f"unknown corpus source(s) {unknown}; choose from {list(SOURCES)}")
    counts: dict[str, dict[str, int]] = {"train": {}, "test": {}}
    tmp = {s: out / f".corpus-{s}.jsonl.xz.tmp" for s in ("train", "test")}
    files = {s: lzma.open(p, "wt", encoding="utf-8", preset=9) for s, p in tmp.items()}
    try:
        for name in names:
            n_docs = 0
            for doc in SOURCES[name]():
                split = split_of(doc.id, test_percent)
                files[split].write(json.dumps({"id": doc.id, "source": doc.source,
                                               "text": doc.text}, ensure_ascii=False) + "\n")
                counts[split][name] = counts[split].get(name, 0) + len(doc.text)
                n_docs += 1
            log.info("corpus source %s: %d documents", name, n_docs)
    finally:
        for f in files.values():
            f.close()
    for s, p in tmp.items():
        os.replace(p, out / f"corpus-{s}.jsonl.xz")
    notice = ["Bundled corpus: provenance and licences", ""]
    for name in names:
        chars = counts["train"].get(name, 0) + counts["test"].get(name, 0)
        notice.append(f"- {name} ({chars:,} characters): {LICENCES[name]}")
    notice += ["", f"Split: a document is in the test split when sha256(id) mod 100 < "
               f"{test_percent}.", "", WORDNET_NOTICE]
    (out / "NOTICE.txt").write_text("\n".join(notice))
    return counts


def read_corpus(path: str | Path) -> Iterator[dict[str, str]]:
    """Yield the JSON records of a ``corpus-*.jsonl.xz`` file."""
    with lzma.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)
