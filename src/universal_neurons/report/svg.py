"""Small inline SVG charts (no plotting library needed in the browser or at build time)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from universal_neurons.report.html import esc, fmt


def histogram_svg(edges: Sequence[float], counts: Sequence[float], *, width: int = 420,
                  height: int = 160, log: bool = True, label: str = "activation") -> str:
    """Bars for ``counts`` over bins ``edges`` (``len(edges) == len(counts) + 1``).

    With ``log`` the bar height is log10(1 + count), which keeps rare tails visible.
    """
    if len(counts) == 0 or len(edges) != len(counts) + 1:
        raise ValueError(f"histogram needs len(edges) == len(counts) + 1 > 1; got "
                         f"{len(edges)} edges and {len(counts)} counts")
    pad_l, pad_b, pad_t = 8, 28, 6
    w, h = width - 2 * pad_l, height - pad_b - pad_t
    lo, hi = float(edges[0]), float(edges[-1])
    span = (hi - lo) or 1.0
    vals = [math.log10(1 + max(float(c), 0.0)) if log else max(float(c), 0.0) for c in counts]
    top = max(vals) or 1.0
    path = []  # one path for every bar of non-zero height, numbers to 0.1 px
    for i, v in enumerate(vals):
        bh = v / top * h
        if bh <= 0:
            continue
        x0 = pad_l + (float(edges[i]) - lo) / span * w
        x1 = pad_l + (float(edges[i + 1]) - lo) / span * w
        path.append(f"M{_n(x0)} {_n(pad_t + h)}v-{_n(bh)}h{_n(max(x1 - x0, 0.5))}v{_n(bh)}z")
    n = sum(max(float(c), 0.0) for c in counts)
    bars = [f'<path d="{"".join(path)}"><title>{esc(label)}: {fmt(n)} values in '
            f"{len(counts)} bins of [{fmt(lo)}, {fmt(hi)})</title></path>"] if path else []
    axis = []
    if lo < 0 < hi:
        zx = pad_l + (0 - lo) / span * w
        axis.append(f'<line class="zero" x1="{zx:.2f}" x2="{zx:.2f}" y1="{pad_t}" '
                    f'y2="{pad_t + h}"/>')
    axis.append(f'<line x1="{pad_l}" x2="{pad_l + w}" y1="{pad_t + h}" y2="{pad_t + h}"/>')
    axis.append(f'<text x="{pad_l}" y="{height - 12}">{fmt(lo)}</text>')
    axis.append(f'<text x="{pad_l + w}" y="{height - 12}" text-anchor="end">{fmt(hi)}</text>')
    scale = "log10(1 + count)" if log else "count"
    axis.append(f'<text x="{pad_l + w / 2}" y="{height - 2}" text-anchor="middle">'
                f"{esc(label)} ({scale})</text>")
    return (f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img" aria-label="{esc(label)} histogram">{"".join(bars)}{"".join(axis)}</svg>')


def _n(x: float) -> str:
    """A coordinate to 0.1 px, without a trailing ``.0``."""
    t = f"{x:.1f}"
    return t[:-2] if t.endswith(".0") else t


def hbar_svg(rows: Sequence[tuple[str, float, float | None]], *, width: int = 460,
             unit: str = "%") -> str:
    """Horizontal bars ``(label, value, reference)``; a reference is drawn as a tick mark."""
    if not rows:
        raise ValueError("hbar_svg needs at least one row")
    label_w, bar_h, gap = 170, 16, 8
    w = width - label_w - 60
    top = max(max(v, r or 0.0) for _, v, r in rows) or 1.0
    parts = []
    for i, (label, value, ref) in enumerate(rows):
        y = i * (bar_h + gap) + 4
        bw = max(value, 0.0) / top * w
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{esc(label)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{bw:.2f}" height="{bar_h}">'
                     f"<title>{esc(label)}: {fmt(value)}{esc(unit)}</title></rect>")
        parts.append(f'<text x="{label_w + bw + 4:.2f}" y="{y + 12}">{fmt(value, 3)}'
                     f"{esc(unit)}</text>")
        if ref is not None:
            rx = label_w + ref / top * w
            parts.append(f'<line class="ref" x1="{rx:.2f}" x2="{rx:.2f}" y1="{y - 2}" '
                         f'y2="{y + bar_h + 2}"><title>paper: {fmt(ref)}{esc(unit)}</title></line>')
    height = len(rows) * (bar_h + gap) + 8
    return (f'<svg class="hbar" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
            f'role="img">{"".join(parts)}</svg>')
