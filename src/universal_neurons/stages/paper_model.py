"""The model side of the ``paper-results`` stage: weights, one streaming pass, and the
results built from them (class split, corpus-source neurons, unigram roles, prediction
neurons conditioned on the next token). Used only by ``stages.paper_results``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from universal_neurons.analysis import paper_activations as pa
from universal_neurons.constants import neuron_name
from universal_neurons.errors import UserError

log = logging.getLogger(__name__)

TOPIC_TOKENS = 10
"""Tokens per topic neuron in its table and figure (the paper's top 10)."""
MIN_CLASS_TOKENS = 10
"""A token class needs this many tokens (and as many outside it) to split the vocabulary."""


class Skip(Exception):
    """A result cannot be computed on this run; the message says why."""


def try_load(name: str, device: str) -> Any:
    """The model ``name`` (a display or file-safe name), or None if it cannot be loaded."""
    from universal_neurons.models.loading import load_model

    for spec in dict.fromkeys([name, name.replace("--", "/")]):
        try:
            return load_model(spec, device=device)
        except UserError as e:
            log.debug("cannot load %s: %s", spec, e)
    return None


def vocab_cos(model: Any, names: list[str]) -> dict[str, np.ndarray]:
    """``{neuron name: cos(W_U, w_out) [vocab]}`` for neurons named ``L<layer>.<neuron>``."""
    from universal_neurons.analysis.prediction import _unit_weights
    from universal_neurons.constants import parse_neuron_name

    pw = model.adapter.processed_weights()
    d_mlp = int(pw.W_out.shape[1])
    w_out_hat, w_u_hat = _unit_weights(pw)
    out = {}
    for name in dict.fromkeys(names):
        layer, neuron = parse_neuron_name(name)
        out[name] = (w_out_hat[layer * d_mlp + neuron] @ w_u_hat).numpy()
    return out


def _names(layer: np.ndarray, neuron: np.ndarray) -> list[str]:
    return [neuron_name(int(a), int(b)) for a, b in zip(layer, neuron)]


@dataclass
class ModelContext:
    """What the model-side results share: weights, token strings, chosen neurons, the pass."""

    model: Any
    run: Path
    config: Any
    d_mlp: int
    strings: list[str]
    props: pd.DataFrame
    """Token property features ``[vocab, F]`` (bool)."""
    pred: pd.DataFrame
    """Chosen prediction/suppression neurons: layer, neuron, prediction_class, selection."""
    cos: np.ndarray
    """``[n_pred, vocab]`` cos(W_U, w_out) of the chosen prediction neurons."""
    unigram: pd.DataFrame
    """Chosen unigram neurons: layer, neuron, feature, vr, passes_cut."""
    topic: pd.DataFrame
    """Chosen topic neurons (``analysis.paper_topics.topic_candidates``)."""
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """The dataset windows the pass streamed."""
    sources: list[str] = field(default_factory=list)
    source_reason: str = ""

    @classmethod
    def build(cls, model: Any, run: Path, table: pd.DataFrame | None, config: Any
              ) -> ModelContext:
        from universal_neurons.analysis.features import surface_strings, token_property_features
        from universal_neurons.analysis.prediction import _unit_weights, vocab_moments

        pw = model.adapter.processed_weights()
        d_mlp = int(pw.W_out.shape[1])
        if table is None or "vocab_kurt" not in table.columns:
            table = vocab_moments(pw)
        pred = _prediction_neurons(table, config.kurtosis, config.top_neurons)
        w_out_hat, w_u_hat = _unit_weights(pw)
        flat = pred["layer"].to_numpy(np.int64) * d_mlp + pred["neuron"].to_numpy(np.int64)
        cos = (w_out_hat[flat] @ w_u_hat).numpy()  # [k, vocab]
        strings = surface_strings(model.tokenizer)
        props = token_property_features(strings)
        unigram = _unigram_neurons(run, model.name, config.unigram_vr, config.top_neurons)
        topic = _topic_neurons(run, model.name, table, config.topic_vr, config.top_neurons)
        return cls(model, run, config, d_mlp, strings, props, pred, cos, unigram, topic)

    def _columns(self, part: str) -> slice:
        """Columns of the pass's ``acts`` holding the chosen ``unigram``, ``pred`` or
        ``topic`` neurons (kept in that order)."""
        k_u, k_p = len(self.unigram), len(self.pred)
        return {"unigram": slice(0, k_u), "pred": slice(k_u, k_u + k_p),
                "topic": slice(k_u + k_p, k_u + k_p + len(self.topic))}[part]

    # ---- weights only --------------------------------------------------------------------
    def class_split(self) -> Any:
        from universal_neurons.report.plots_paper_examples import plot_class_split

        if self.pred.empty:
            raise Skip("no neuron has vocab moments")
        mat = self.props.to_numpy(dtype=bool).T  # [F, vocab]
        n_in = mat.sum(axis=1)
        ok = (n_in >= MIN_CLASS_TOKENS) & (mat.shape[1] - n_in >= MIN_CLASS_TOKENS)
        names = [c for c, o in zip(self.props.columns, ok) if o]
        split = pa.class_split(self.cos, mat[ok], names)
        info = self.pred.reset_index(drop=True)
        out = info.iloc[split["index"].to_numpy()].reset_index(drop=True)
        out = pd.concat([out, split.drop(columns="index")], axis=1)
        best = split[split["rank"] == 0]
        masks = np.stack([self.props[f].to_numpy(bool) for f in best["feature"]])
        titles = [f"{n} ({c or 'below cut'}): VR {v:.2f}" for n, c, v in
                  zip(info["neuron_name"], info["prediction_class"], best["vr"])]
        return out, lambda p: plot_class_split(self.cos, masks, titles, list(best["feature"]), p)

    # ---- the streaming pass --------------------------------------------------------------
    def stream(self) -> None:
        """One pass over at most ``config.tokens`` tokens: chosen neurons' activations and
        per-source moments of every neuron. The windows are spread evenly over the whole
        dataset (``data.dataset.spread_rows``), so that a source whose documents sit late in
        the shuffled corpus is still seen."""
        from types import SimpleNamespace

        from universal_neurons.analysis.interventions import open_dataset
        from universal_neurons.data.dataset import spread_rows
        from universal_neurons.data.token_sources import token_sources
        from universal_neurons.engine.neuron_samples import NeuronSamples
        from universal_neurons.engine.runner import batch_ranges, stream

        c = self.config
        ds, n_seq = open_dataset(self.model, c.dataset, c.tokens, c.n_ctx, c.progress)
        self.rows = spread_rows(ds.n_seq, n_seq)
        windows = np.asarray(ds.tokens[self.rows])  # [n_seq, n_ctx]
        groups = None
        try:
            groups, self.sources = token_sources(ds, self.model.tokenizer, self.rows)
        except UserError as e:
            self.source_reason = str(e)
        a = self.model.adapter
        chosen = pd.concat([self.unigram[["layer", "neuron"]], self.pred[["layer", "neuron"]],
                            self.topic[["layer", "neuron"]]])
        flat = (chosen["layer"].to_numpy(np.int64) * self.d_mlp
                + chosen["neuron"].to_numpy(np.int64))
        acc = NeuronSamples(self.model.name, windows, flat.tolist(), a.n_layers * self.d_mlp,
                            groups, len(self.sources))
        stream(SimpleNamespace(tokens=windows), [self.model], [acc],
               batch_ranges(len(self.rows), c.batch_size), tokenizer=self.model.tokenizer,
               device=c.device, progress=c.progress, desc="paper results")
        self.samples = acc.finalize()

    def source_neurons(self) -> Any:
        from universal_neurons.report.plots_paper_examples import plot_source_neurons

        if not self.sources:
            raise Skip(self.source_reason or "the dataset has no corpus sources")
        s = self.samples
        n = s["total"].shape[1]
        layer, neuron = np.divmod(np.arange(n), self.d_mlp)
        out = pa.source_table(s["count"], s["total"], s["squares"], self.sources, layer, neuron)
        out.insert(2, "neuron_name", _names(out["layer"].to_numpy(), out["neuron"].to_numpy()))
        return out, lambda p: plot_source_neurons(out, p)

    def unigram_roles(self) -> Any:
        from universal_neurons.report.plots_paper_examples import plot_unigram_roles

        if self.unigram.empty:
            raise Skip(f"no explanations with unigram features for {self.model.name} "
                       "(run explain)")
        s = self.samples
        norm = pd.Series(self.strings, dtype=object).str.strip().str.lower().to_numpy()
        feats = np.stack([norm == f.split(":", 1)[1] for f in self.unigram["feature"]])
        feats[:, _special_ids(self.model.tokenizer)] = False
        no_space = self.props["start_w_no_space"].to_numpy(bool)
        no_space_alpha = no_space & self.props["all_alpha"].to_numpy(bool)
        roles = pa.unigram_roles(s["acts"][:, self._columns("unigram")], s["token_ids"],
                                 s["next_ids"], feats, no_space, no_space_alpha)
        info = self.unigram.reset_index(drop=True)
        out = pd.concat([info.iloc[roles["index"].to_numpy()].reset_index(drop=True),
                         roles.drop(columns="index")], axis=1)
        return out, lambda p: plot_unigram_roles(out, p)

    def prediction_conditional(self) -> Any:
        from universal_neurons.report.plots_paper_examples import plot_prediction_conditional

        if self.pred.empty:
            raise Skip("no neuron has vocab moments")
        s = self.samples
        acts = s["acts"][:, self._columns("pred")]
        sets = np.zeros(self.cos.shape, dtype=bool)  # [k, vocab]
        n_set = min(self.config.token_set, self.cos.shape[1])
        for j, promotes in enumerate(self.pred["vocab_skew"].to_numpy() > 0):
            order = np.argsort(-self.cos[j] if promotes else self.cos[j], kind="stable")
            sets[j, order[:n_set]] = True
        cond = pa.prediction_conditional(acts, s["next_ids"], sets)
        info = self.pred.reset_index(drop=True)
        out = pd.concat([info.iloc[cond["index"].to_numpy()].reset_index(drop=True),
                         cond.drop(columns="index")], axis=1)
        known = s["next_ids"] >= 0
        inside = sets[:, s["next_ids"][known]].T  # [rows, k]
        titles = [f"{n} ({c or 'below cut'})" for n, c in
                  zip(info["neuron_name"], info["prediction_class"])]
        return out, lambda p: plot_prediction_conditional(acts[known], inside, titles, p)

    def topic_neurons(self) -> Any:
        from universal_neurons.analysis.paper_topics import top_token_table
        from universal_neurons.report.plots_paper_examples import plot_topic_neurons

        if self.topic.empty:
            raise Skip(f"no explanations with topic features for {self.model.name} (run "
                       "explain with --topics K, K > 0)")
        s = self.samples
        out = top_token_table(self.topic, s["acts"][:, self._columns("topic")],
                              s["token_ids"], self.strings, k=TOPIC_TOKENS,
                              min_count=self.config.topic_min_count,
                              exclude=_special_ids(self.model.tokenizer).tolist())
        return out, lambda p: plot_topic_neurons(out, p)


def _topic_neurons(run: Path, model: str, table: pd.DataFrame | None, cut: float, top: int
                   ) -> pd.DataFrame:
    """The ``top`` topic neurons of the explanations (``paper_topics.topic_candidates``);
    empty without explanations or topic features."""
    import pyarrow.parquet as pq

    from universal_neurons.analysis.paper_topics import CANDIDATE_COLUMNS, topic_candidates
    from universal_neurons.stages.explain import explanation_paths

    path = explanation_paths(run, model)["vr"]
    if not path.is_file():
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    names = pq.read_schema(path).names
    if not any(c.startswith("current/topic:") for c in names):
        return pd.DataFrame(columns=CANDIDATE_COLUMNS)
    vr = pd.read_parquet(path, columns=["layer", "neuron", *[c for c in names if "/" in c]])
    return topic_candidates(vr, table, cut, top)


def _special_ids(tokenizer: Any) -> np.ndarray:
    from universal_neurons.data.tokens import special_ids

    return np.asarray(special_ids(tokenizer), dtype=np.int64)


def _prediction_neurons(table: pd.DataFrame, kurtosis: float, top: int) -> pd.DataFrame:
    """The ``top`` neurons by vocab kurtosis among prediction/suppression neurons; when
    none passes the cut, the ``top`` neurons by vocab kurtosis, labelled so."""
    t = table.dropna(subset=["vocab_kurt", "vocab_skew"])
    heavy = t[t["vocab_kurt"] > kurtosis]
    selection = f"vocab_kurt > {kurtosis:g}"
    if heavy.empty:
        heavy, selection = t, f"highest vocab_kurt (none above {kurtosis:g})"
    pick = heavy.sort_values("vocab_kurt", ascending=False).head(top)
    cls = np.where(pick["vocab_kurt"] > kurtosis,
                   np.where(pick["vocab_skew"] > 0, "prediction", "suppression"), "")
    out = pick[["layer", "neuron", "vocab_skew", "vocab_kurt"]].reset_index(drop=True)
    out.insert(2, "neuron_name", _names(out["layer"].to_numpy(), out["neuron"].to_numpy()))
    out["prediction_class"] = cls
    out["selection"] = selection
    return out


def _unigram_neurons(run: Path, model: str, cut: float, top: int) -> pd.DataFrame:
    """Neurons whose best current-token unigram feature has VR > ``cut`` (the ``top`` best);
    when none passes, the ``top`` best, with ``passes_cut`` False."""
    from universal_neurons.stages.explain import explanation_paths

    cols = ["layer", "neuron", "neuron_name", "feature", "vr", "passes_cut"]
    path = explanation_paths(run, model)["vr"]
    if not path.is_file():
        return pd.DataFrame(columns=cols)
    import pyarrow.parquet as pq

    names = [c for c in pq.read_schema(path).names if c.startswith("current/unigram:")]
    if not names:
        return pd.DataFrame(columns=cols)
    vr = pd.read_parquet(path, columns=["layer", "neuron", *names])
    vals = vr[names].to_numpy(np.float64)
    best = np.nanargmax(np.nan_to_num(vals, nan=-np.inf), axis=1)
    out = pd.DataFrame({"layer": vr["layer"], "neuron": vr["neuron"],
                        "feature": [names[i].split("/", 1)[1] for i in best],
                        "vr": vals[np.arange(len(vals)), best]})
    out["passes_cut"] = out["vr"] > cut
    pick = out[out["passes_cut"]] if out["passes_cut"].any() else out
    pick = pick.sort_values("vr", ascending=False).head(top).reset_index(drop=True)
    pick.insert(2, "neuron_name", _names(pick["layer"].to_numpy(), pick["neuron"].to_numpy()))
    return pick[cols]
