"""Per-neuron details for the neuron pages: histogram, top examples, tokens, partners.

Sources (each optional; a missing one leaves its part of the page "not computed"):

- ``stats/<model>.safetensors`` or ``RUN/*/<model>/activation_stats.safetensors`` (:class:`~universal_neurons.engine.activation_stats.
  ActivationStatsResult`): pre-activation histogram, top-k activating examples
  ``(value, seq_index, position)``, mean activation on frequent tokens. Read by slices, so a
  page costs a few kilobytes however large the run.
- the token dataset named in the manifest and its tokenizer: the text around each example.
- ``weights.safetensors`` of the weights analysis: top promoted / suppressed tokens
  (``vocab_{top,bottom}_{ids,cos}``).
- the neuron row: ``{partner}_best``, ``{partner}_corr``, ``{partner}_baseline``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from universal_neurons.constants import (
    ACTIVATION_STATS_FILE,
    STATS_DIR,
    WEIGHTS_DIR,
    WEIGHTS_FILE,
    correlations_file,
    safe_name,
)
from universal_neurons.report.examples import Example, read_examples
from universal_neurons.report.rundata import RunData
from universal_neurons.report.token_text import (
    TokenText,
    dataset_candidates,
    load_tokenizer,
    surface_strings,
)

__all__ = ["DetailSource", "Example", "Histogram", "NeuronDetail", "Partner", "TokenText",
           "partners_from_row"]

log = logging.getLogger(__name__)


def _model_file(run: Path, model: str, filename: str, flat_dirs: Sequence[str]) -> Path | None:
    """``RUN/<dir>/<model>.safetensors`` for ``dir`` in ``flat_dirs``, else the first
    ``RUN/*/<model>/<filename>`` or ``RUN/*/*/<model>/<filename>``."""
    name = safe_name(model)
    for d in flat_dirs:
        p = run / d / f"{name}.safetensors"
        if p.is_file():
            return p
    for pattern in (f"*/{name}/{filename}", f"*/*/{name}/{filename}"):
        hits = sorted(p for p in run.glob(pattern) if p.is_file())
        if hits:
            return hits[0]
    return None


@dataclass
class Histogram:
    edges: list[float]
    counts: list[float]
    underflow: float = 0.0
    overflow: float = 0.0
    label: str = "pre-activation"


@dataclass
class Partner:
    """A sibling model's best match, and (from ``correlations/``) its top-k and histogram."""

    model: str
    layer: int | None
    neuron: int | None
    corr: float | None
    baseline: float | None = None
    top: list[tuple[int, int, float]] = field(default_factory=list)
    bottom: list[tuple[int, int, float]] = field(default_factory=list)
    hist: Histogram | None = None


@dataclass
class NeuronDetail:
    histogram: Histogram | None = None
    examples: list[Example] | None = None
    promoted: list[tuple[str, float]] | None = None
    suppressed: list[tuple[str, float]] | None = None
    token_means: list[tuple[str, float, int | None]] | None = None
    token_means_scope: str = "frequent tokens"
    partners: list[Partner] = field(default_factory=list)


class DetailSource:
    """Reads per-neuron details of a run lazily (files are opened once, sliced per neuron)."""

    def __init__(self, run: RunData, *, context_before: int = 24, context_after: int = 6,
                 max_examples: int = 10):
        self.run = run
        self.before, self.after, self.max_examples = context_before, context_after, max_examples
        self._handles: dict[tuple[str, ...], Any] = {}
        self._dataset: Any = False  # False: not looked up yet
        self._text: TokenText | None = None

    # -- sources ------------------------------------------------------------------------------
    def stats_file(self, model: str) -> Path | None:
        """The model's :class:`ActivationStatsResult` file, if the stats stage wrote one."""
        return _model_file(self.run.path, model, ACTIVATION_STATS_FILE, flat_dirs=(STATS_DIR,))

    def weights_file(self, model: str) -> Path | None:
        """The model's ``weights.safetensors`` (weights analysis), if written."""
        return _model_file(self.run.path, model, WEIGHTS_FILE, flat_dirs=(WEIGHTS_DIR,))

    def _open(self, key: tuple[str, ...], path: Path | None):
        """A cached ``safe_open`` handle of ``path`` (None if absent or unreadable, once)."""
        if key not in self._handles:
            handle = None
            if path is not None and path.is_file():
                try:
                    from safetensors import safe_open

                    handle = safe_open(str(path), "np")
                except Exception as e:  # noqa: BLE001
                    self.run._problem(f"{path}: unreadable ({type(e).__name__}: {e})")
            self._handles[key] = handle
        return self._handles[key]

    def _handle(self, kind: str, model: str):
        if (kind, model) in self._handles:
            return self._handles[(kind, model)]
        path = self.stats_file(model) if kind == "stats" else self.weights_file(model)
        return self._open((kind, model), path)

    def _weights_handle(self, model: str):
        return self._handle("weights", model)

    def _slice(self, model: str, name: str, *index):
        f = self._handle("stats", model)
        if f is None or name not in f.keys():
            return None
        return f.get_slice(name)[index] if index else f.get_tensor(name)

    @property
    def dataset(self):
        """The run's token dataset (``None`` when the manifest names none that opens)."""
        if self._dataset is False:
            self._dataset = None
            for path in dataset_candidates(self.run):
                try:
                    from universal_neurons.data.dataset import open_token_dataset

                    self._dataset = open_token_dataset(path)
                    break
                except Exception as e:  # noqa: BLE001
                    log.info("report: token dataset %s not usable: %s", path, e)
        return self._dataset

    @property
    def text(self) -> TokenText:
        if self._text is None:
            tok = load_tokenizer(self.run, self.dataset)
            self._text = TokenText(tok, None if tok is not None else surface_strings(self.run, self.dataset))
        return self._text

    # -- per neuron ---------------------------------------------------------------------------
    def detail(self, model: str, layer: int, neuron: int, row: dict | None = None,
               partners: Sequence[str] = (), d_mlp: Mapping[str, int] | None = None) -> NeuronDetail:
        d = NeuronDetail()
        for part, fn in (("histogram", self.histogram), ("examples", self.examples),
                         ("token_means", self.token_means)):
            try:
                setattr(d, part, fn(model, layer, neuron))
            except Exception as e:  # noqa: BLE001 - a damaged file must not sink the report
                self.run._problem(f"{model} L{layer}.{neuron} {part}: {type(e).__name__}: {e}")
        if d.token_means is not None:
            d.token_means_scope = self.token_means_scope(model)
        d.promoted, d.suppressed = self.vocab(model, layer, neuron)
        d.partners = partners_from_row(row or {}, partners, d_mlp or {})
        for p in d.partners:
            try:
                self.add_matches(model, layer, neuron, p)
            except Exception as e:  # noqa: BLE001
                self.run._problem(f"{model} L{layer}.{neuron} vs {p.model}: {type(e).__name__}: {e}")
        return d

    def add_matches(self, model: str, layer: int, neuron: int, partner: Partner, k: int = 5) -> None:
        """Fill ``partner.top/bottom/hist`` from ``correlations/<model>__<partner>.safetensors``
        (summaries by the correlate stage; rows and indices are ``layer * d_mlp + neuron``)."""
        f = self._open(("corr", model, partner.model),
                       self.run.path / correlations_file(model, partner.model))
        if f is None:
            return
        meta = f.metadata() or {}
        d, d_p = int(meta["d_mlp"]), int(meta["partner_d_mlp"])
        row = layer * d + neuron
        names = set(f.keys())
        for kind, attr in (("top", "top"), ("bottom", "bottom")):
            if f"{kind}_indices" in names:
                idx = f.get_slice(f"{kind}_indices")[row][:k]
                val = f.get_slice(f"{kind}_values")[row][:k]
                setattr(partner, attr, [(int(i) // d_p, int(i) % d_p, float(v))
                                        for i, v in zip(idx, val) if i >= 0])
        if "hist" in names and "hist_edges" in names:
            counts = f.get_slice("hist")[row]
            edges = f.get_tensor("hist_edges")
            partner.hist = Histogram([float(e) for e in edges], [float(c) for c in counts],
                                     label=f"correlation with {partner.model} neurons")

    def histogram(self, model: str, layer: int, neuron: int) -> Histogram | None:
        counts = self._slice(model, "hist", layer, neuron)
        if counts is None:
            return None
        lo = float(self._slice(model, "hist_lo", layer, neuron))
        hi = float(self._slice(model, "hist_hi", layer, neuron))
        w = float(self._slice(model, "hist_width", layer, neuron))
        n_used = max(1, min(len(counts) - 2, round((hi - lo) / w)))
        edges = [lo + j * w for j in range(n_used + 1)]
        return Histogram(edges, [float(c) for c in counts[1:1 + n_used]],
                         underflow=float(counts[0]), overflow=float(counts[-1]))

    def examples(self, model: str, layer: int, neuron: int) -> list[Example] | None:
        """Top, quantile-band and most negative examples (``report.examples``)."""
        return read_examples(lambda name, *index: self._slice(model, name, *index),
                             self.stats_meta(model).get("examples") or {}, self.dataset,
                             self.text, layer, neuron, before=self.before, after=self.after,
                             max_top=self.max_examples)

    def stats_meta(self, model: str) -> dict:
        """The stats file's metadata (``meta`` JSON), ``{}`` without one."""
        f = self._handle("stats", model)
        try:
            return json.loads((f.metadata() or {}).get("meta", "{}")) if f is not None else {}
        except ValueError:
            return {}

    def token_means(self, model: str, layer: int, neuron: int, n: int = 12):
        """``(token, mean, count)`` of the tokens with the highest mean activation: the
        whole-vocabulary top tokens (``token_top_ids``/``token_top_mean``, counts from
        ``vocab_token_count``) when the stats have them, else the frequent-token table."""
        top = self._top_tokens(model, layer, neuron, n)
        if top is not None:
            return top
        ids = self._slice(model, "token_ids")
        if ids is None or len(ids) == 0:
            return None
        means = self._slice(model, "token_mean", slice(None), layer, neuron)
        counts = self._slice(model, "token_count")
        order = sorted((i for i in range(len(ids)) if counts[i] > 0 and _num(means[i]) == _num(means[i])),
                       key=lambda i: -float(means[i]))
        return [(self.text(ids[i]), float(means[i]), int(counts[i])) for i in order[:n]]

    def token_means_scope(self, model: str) -> str:
        """What :meth:`token_means` ranks over, for the page's heading."""
        f = self._handle("stats", model)
        if f is not None and "token_top_ids" in f.keys() and _top_shape_ok(f):
            return "whole vocabulary; tokens seen at least vocab_min_count times, 5 by default"
        return "frequent tokens"

    def _top_tokens(self, model: str, layer: int, neuron: int, n: int):
        f = self._handle("stats", model)
        if f is None or "token_top_ids" not in f.keys() or not _top_shape_ok(f):
            return None
        ids = f.get_slice("token_top_ids")[layer, neuron]
        means = f.get_slice("token_top_mean")[layer, neuron]
        counts = f.get_slice("vocab_token_count") if "vocab_token_count" in f.keys() else None
        n_vocab = counts.get_shape()[0] if counts is not None else 0
        out = []
        for i, m in zip(ids[:n], means[:n]):
            if i < 0 or _num(m) != _num(m):
                continue
            c = int(counts[int(i):int(i) + 1][0]) if counts is not None and 0 <= i < n_vocab else None
            out.append((self.text(int(i)), float(m), c))
        return out

    def vocab(self, model: str, layer: int, neuron: int):
        """``(promoted, suppressed)`` lists of ``(token, value)``, or ``(None, None)``."""
        try:
            return _vocab_lists(self, model, layer, neuron)
        except Exception as e:  # noqa: BLE001
            self.run._problem(f"{model} L{layer}.{neuron} vocab: {type(e).__name__}: {e}")
            return None, None


def partners_from_row(row: Mapping, partners: Sequence[str],
                      d_mlp: Mapping[str, int]) -> list[Partner]:
    """Best-matching neuron of each sibling model from the ``{partner}_*`` columns.

    ``{partner}_best`` may be a name (``L3.17``), a neuron index with a
    ``{partner}_best_layer`` column, or a flat index ``layer * d_mlp + neuron``.
    """
    out = []
    for p in partners:
        best = row.get(f"{p}_best")
        layer = neuron = None
        if isinstance(best, str) or (best is not None and _num(best) == _num(best)):
            layer, neuron = _split_best(best, row, p, d_mlp.get(p))
        out.append(Partner(p, layer, neuron, _opt(row.get(f"{p}_corr")),
                           _opt(row.get(f"{p}_baseline"))))
    return out


def _split_best(best, row: Mapping, partner: str, d_mlp: int | None) -> tuple[int | None, int | None]:
    if isinstance(best, str):
        from universal_neurons.constants import parse_neuron_name

        try:
            return parse_neuron_name(best)
        except ValueError:
            return None, None
    layer = row.get(f"{partner}_best_layer")
    if layer is not None:
        return int(layer), int(best)
    if d_mlp:
        return divmod(int(best), int(d_mlp))
    return None, int(best)


def _top_shape_ok(f) -> bool:
    """``token_top_ids`` is ``[L, d_mlp, k]`` with k > 0 (empty when not computed)."""
    shape = f.get_slice("token_top_ids").get_shape()
    return len(shape) == 3 and shape[2] > 0


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _opt(v) -> float | None:
    x = _num(v)
    return None if x != x else x


def _vocab_lists(src: DetailSource, model: str, layer: int, neuron: int):
    """Top/bottom tokens of ``cos(W_U, w_out)`` from the weights analysis
    (:class:`~universal_neurons.analysis.weights.WeightStats`: ``weights.safetensors`` with
    ``vocab_{top,bottom}_{ids,cos}`` ``[L, d_mlp, k]``), decoded with the run's tokenizer."""
    f = src._weights_handle(model)
    if f is None:
        return None, None
    keys = set(f.keys())
    out: list[list[tuple[str, float]] | None] = []
    for kind in ("top", "bottom"):
        ids_key, cos_key = f"vocab_{kind}_ids", f"vocab_{kind}_cos"
        if ids_key not in keys:
            out.append(None)
            continue
        ids = f.get_slice(ids_key)[layer, neuron]
        cos = f.get_slice(cos_key)[layer, neuron] if cos_key in keys else [float("nan")] * len(ids)
        out.append([(src.text(i), float(c)) for i, c in zip(ids, cos) if i >= 0])
    return out[0], out[1]
