"""Measure a built report: neuron page sizes, report size, and its examples (how many
tokens are shaded, how much example text is not, how many examples repeat a window of
text already shown on their page).

usage: python scripts/measure_report.py RUN/report [SPAN]

SPAN (default 10, the window's tokens before + after) is how close two examples of one
sequence may be before they count as sharing a window.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

TOKEN = re.compile(r"<([ib])\b[^>]*>.*?</\1>", re.S)


def main(report: Path, span: int) -> None:
    pages = sorted(report.glob("neurons/*/*.html"))
    if not pages:
        sys.exit(f"no neuron pages under {report}/neurons; pass a report folder")
    sizes = sorted(p.stat().st_size for p in pages)
    total = sum(p.stat().st_size for p in report.rglob("*") if p.is_file())
    shaded = plain = examples = repeats = 0
    for p in pages:
        sec = re.search(r'<section id="examples">(.*?)</section>', p.read_text("utf-8"), re.S)
        seen: list[tuple[int, int]] = []
        for ex in re.findall(r"<div class=\"?example\"?>(.*?)</div>", sec.group(1) if sec else "", re.S):
            examples += 1
            m = re.search(r"seq (\d+), pos (\d+):", ex)
            if m:
                s, q = int(m.group(1)), int(m.group(2))
                repeats += any(s == s2 and abs(q - q2) <= span for s2, q2 in seen)
                seen.append((s, q))
            body = re.sub(r'<span class="?meta"?>.*?</span>', "", ex, count=1)
            shaded += len(TOKEN.findall(body))
            plain += len(re.sub(r"<[^>]+>", "", TOKEN.sub("", body)))
    print(f"neuron pages {len(pages)}, median {sizes[(len(sizes) - 1) // 2]:,} B, "
          f"largest {sizes[-1]:,} B; report {total:,} B")
    print(f"examples {examples:,}, shaded tokens {shaded:,}, unshaded example characters "
          f"{plain:,}, examples repeating a window already shown on their page {repeats:,}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 10)
