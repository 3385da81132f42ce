"""Best partners across the models of a suite: short model labels, partner names such as
``b:L3.152``, and the partner columns of models whose neuron table lacks them.

A neuron table of the reference model has ``{partner}_best`` / ``_corr`` / ``_baseline`` per
sibling (``analysis.universality``). When correlations were computed for the reference
model only, the siblings' tables have none, but the correlate stage wrote
``correlations/<sibling>__<reference>.safetensors`` too: its ``argmax``, ``max`` and
``baseline_max`` are the same three numbers seen from the sibling, so the report adds them
(:func:`add_partner_columns`) and every model's pages can name and link their partner.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from universal_neurons.constants import correlations_file, neuron_name
from universal_neurons.report.html import esc, link

log = logging.getLogger(__name__)

_SEP = "-_/.@ "
PARTNER_NAME = re.compile(r"(?:(?P<label>[A-Za-z0-9][\w./@-]*):)?L(?P<layer>\d+)\.(?P<neuron>\d+)")
"""A neuron name, optionally after a model label: ``L3.17``, ``b:L3.152``."""
NAME_IN_TEXT = re.compile(r"(?:(?<![\w./@:-])(?P<label>[A-Za-z0-9][\w./@-]*):)?\bL(?P<layer>\d+)\.(?P<neuron>\d+)\b")
"""The same inside running text (``L1.296->L2.H0``, ``best b:L3.152``)."""


def names_in_text(text: str, model: str | None, labels: Mapping[str, str]):
    """``(match, model, layer, neuron)`` of each neuron name in ``text``: a name after a
    model label (``b:L3.152``) is that model's, a bare one ``model``'s."""
    for m in NAME_IN_TEXT.finditer(text):
        who = model_of_label(m["label"], labels) if m["label"] else None
        yield m, who or model, int(m["layer"]), int(m["neuron"])


def model_labels(models: Sequence[str]) -> dict[str, str]:
    """Short, distinct labels: the models' names without their longest common prefix
    that ends at a separator (``tiny-gpt2-a`` .. ``tiny-gpt2-e`` -> ``a`` .. ``e``); the
    full names when that leaves an empty or repeated label, or for a single model."""
    names = list(dict.fromkeys(models))
    if len(names) < 2:
        return {m: m for m in names}
    prefix = names[0]
    for m in names[1:]:
        while not m.startswith(prefix):
            prefix = prefix[:-1]
    cut = max((i + 1 for i, ch in enumerate(prefix) if ch in _SEP), default=0)
    short = [m[cut:] for m in names]
    if any(not s or ":" in s for s in short) or len(set(short)) < len(short):
        return {m: m for m in names}
    return dict(zip(names, short))


def partner_name(label: str, layer: int, neuron: int) -> str:
    """``b:L3.152``."""
    return f"{label}:{neuron_name(layer, neuron)}"


def model_of_label(label: str, labels: Mapping[str, str]) -> str | None:
    """The model a label (or a full model name) stands for; case-insensitive."""
    low = label.lower()
    for m, s in labels.items():
        if low in (s.lower(), m.lower()):
            return m
    return None


def neuron_ref_html(model: str, layer: int | None, neuron: int | None, labels: Mapping[str, str],
                    pages: Mapping[str, Collection[tuple[int, int]]], href_of) -> str:
    """``b:L3.152`` as a link to that neuron's page when it has one (``href_of(model,
    layer, neuron)`` gives the URL), else as text."""
    if layer is None or neuron is None:
        return esc("" if neuron is None else neuron)
    text = partner_name(labels.get(model, model), layer, neuron)
    if (layer, neuron) in pages.get(model, ()):
        return link(href_of(model, layer, neuron), text)
    return esc(text)


def add_partner_columns(frames: Mapping[str, Any], run_path, models: Sequence[str]) -> dict:
    """``frames`` (model -> neuron table or None) with ``{other}_best``, ``_corr`` and
    ``_baseline`` added where a table lacks them and ``correlations/<model>__<other>``
    exists. Tables are copied, never changed in place; the files are not rewritten."""
    out = dict(frames)
    for m, df in frames.items():
        if df is None or len(df) == 0:
            continue
        added = {}
        for other in models:
            if other == m or f"{other}_best" in df.columns:
                continue
            cols = _columns_from_file(run_path / correlations_file(m, other), df, other)
            if cols:
                added.update(cols)
        if added:
            import pandas as pd

            out[m] = pd.concat([df.reset_index(drop=True), pd.DataFrame(added)], axis=1)
    return out


def _columns_from_file(path, df, other: str) -> dict | None:
    """The three partner columns of ``df``'s neurons against ``other``, from one correlation
    summary file (rows ``layer * d_mlp + neuron``); None when absent or not readable."""
    if not path.is_file():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), "np") as f:
            meta = f.metadata() or {}
            d, d_p = int(meta["d_mlp"]), int(meta["partner_d_mlp"])
            names = set(f.keys())
            if not {"max", "argmax"} <= names:
                return None
            best_corr = f.get_tensor("max").astype(np.float64)  # [n_layers * d_mlp]
            arg = f.get_tensor("argmax").astype(np.int64)
            base = (f.get_tensor("baseline_max").astype(np.float64) if "baseline_max" in names
                    else np.full_like(best_corr, np.nan))
    except Exception as e:  # noqa: BLE001 - a damaged file leaves the columns out
        log.info("report: %s not usable for partner columns: %s", path, e)
        return None
    rows = df["layer"].to_numpy(np.int64) * d + df["neuron"].to_numpy(np.int64)
    if len(rows) and (rows.max() >= len(arg) or rows.min() < 0):
        return None
    idx = arg[rows]
    return {f"{other}_best": [neuron_name(int(i) // d_p, int(i) % d_p) if i >= 0 else None for i in idx],
            f"{other}_corr": best_corr[rows], f"{other}_baseline": base[rows]}


def best_partners(df, model: str, others: Sequence[str]) -> dict[tuple[int, int], list[tuple[str, int, int]]]:
    """Per neuron ``(layer, neuron)`` of ``df``, its best partner ``(model, layer, neuron)``
    in each of ``others`` that has a ``{other}_best`` column."""
    out: dict[tuple[int, int], list[tuple[str, int, int]]] = {}
    if df is None:
        return out
    keys = list(zip(df["layer"].astype(int).tolist(), df["neuron"].astype(int).tolist()))
    for o in others:
        col = f"{o}_best"
        if o == model or col not in df.columns:
            continue
        for key, v in zip(keys, df[col].tolist()):
            m = PARTNER_NAME.fullmatch(v) if isinstance(v, str) else None
            if m is not None:
                out.setdefault(key, []).append((o, int(m["layer"]), int(m["neuron"])))
    return out
