"""The ``attention`` stage: attention-deactivation neurons (Gurnee et al. 2024, §5.3).

Three measurements, over one pass of the dataset:

* **Heuristic score** of every (neuron, later head) pair from weights and the BOS key
  (:mod:`~universal_neurons.analysis.attention_heuristic`), against a random baseline.
* **Path ablation** of the chosen pairs: the change in a head's attention to BOS and in
  its output norm when one neuron's contribution is removed from that head's query only
  (:mod:`~universal_neurons.analysis.attention_ablation`). By default as in the paper:
  the output norm is the head-space ``|z_h|``, its change a percentage, at positions
  64-255; ``norm_measure="model_abs"`` and ``positions=(1, None)`` give the absolute
  change of ``|z_h W_O^h|`` at every position after BOS instead.
* **BOS value norms** per head (same pass).

The attention modules come from the architecture adapters, so the stage runs on every
architecture that has one (GPT-2, GPT-NeoX, Llama-style).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from universal_neurons.analysis.attention_ablation import (
    PAPER_POSITIONS,
    AttentionPassResult,
    attention_pass,
)
from universal_neurons.analysis.attention_heuristic import (
    HeadPair,
    bos_keys,
    heuristic_scores,
    heuristic_tables,
    random_like_norms,
    top_pairs,
)
from universal_neurons.constants import (
    ATTENTION_BOS_VALUE_NORMS,
    ATTENTION_DIR,
    ATTENTION_HEURISTIC_HIST,
    ATTENTION_HEURISTIC_SUMMARY,
    ATTENTION_HEURISTIC_TOP,
    ATTENTION_PATH_ABLATION,
    ATTENTION_PATH_ABLATION_POINTS,
    FIG_ATTENTION_BOS_VALUE_NORMS,
    FIG_ATTENTION_HEURISTIC,
    FIG_ATTENTION_PATH_ABLATION,
    PLOTS_DIR,
    neuron_name,
    parse_neuron_name,
)
from universal_neurons.errors import UserError
from universal_neurons.options import dataset_opt, models_opt, opt, run_opt, tokens_opt


def parse_positions(text: str) -> tuple[int, int | None]:
    """``START:END`` (END optional) -> ``(start, end)``; argparse type of ``--positions``."""
    import argparse

    start, sep, end = text.partition(":")
    try:
        lo, hi = int(start), (int(end) if end.strip() else None)
    except ValueError:
        lo, hi = -1, None
    if not sep or lo < 1 or (hi is not None and hi <= lo):
        raise argparse.ArgumentTypeError(f"bad --positions {text!r}: expected START:END with "
                                         "1 <= START < END, e.g. 64:256, or START: for the end")
    return lo, hi


@dataclass(frozen=True)
class AttentionConfig:
    """Settings of the ``attention`` stage (saved in the run manifest)."""

    model: str = models_opt(one=True)
    """Model spec (alias, bundled member, HF id, folder), e.g. tiny-gpt2-a."""
    out: str = run_opt()
    """Run directory."""
    dataset: str | None = dataset_opt()
    """Token dataset folder; None = the bundled test split tokenized for the model."""
    tokens: int = tokens_opt(16_384)
    """Tokens streamed for path ablation and value norms, e.g. 1M (rounded up to whole
    sequences)."""
    n_ctx: int | None = None
    """Context of the default dataset (default ``min(512, model n_ctx)``)."""
    batch_size: int = 8
    """Sequences per forward pass."""
    device: str = "cpu"
    """Where to compute (cpu or cuda)."""
    pairs: tuple[str, ...] = opt((), metavar="L.N:L.H")
    """Neuron-head pairs to path-ablate (``L3.17:L5.2``); empty = the top heuristic pairs."""
    neurons: tuple[str, ...] = opt((), metavar="L.N")
    """Choose the top pairs among these neurons only (e.g. universal ones)."""
    top_pairs: int = 5
    """Pairs chosen per sign (most positive and most negative heuristic scores)."""
    table_k: int = 100
    """Pairs per sign listed in ``heuristic_top``."""
    seed: int = 0
    """Seed of the random-direction baseline."""
    max_points: int = 2000
    """Per-token points kept per pair for scatter plots."""
    norm_measure: Literal["head_pct", "head_abs", "model_abs"] = "head_pct"
    """Output-norm change: ``head_pct`` = % change of the head-space ``|z_h|`` (the paper's
    figure); ``head_abs`` = its absolute change (the paper's script); ``model_abs`` =
    absolute change of ``|z_h W_O^h|`` in model space."""
    positions: tuple[int, int | None] = opt(
        PAPER_POSITIONS, type=lambda text: parse_positions(text), nargs=None,
        metavar="START:END", help="query positions measured, END excluded and optional "
        "(default 64:256, the paper's; 1: = every position after BOS)")
    """Query positions measured, ``[start, end)`` (end None = to the sequence end); the
    paper's ``(64, 256)``."""
    plots: bool = opt(True, "--no-plots", help="skip the PNG plots")
    """Write the PNG plots."""
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(self.pairs))
        object.__setattr__(self, "neurons", tuple(self.neurons))
        for p in self.pairs:
            HeadPair.parse(p)
        if min(self.tokens, self.batch_size, self.table_k) < 1 or self.top_pairs < 0:
            raise ValueError(f"tokens, batch_size and table_k must be >= 1 and top_pairs >= 0, "
                             f"got {self.tokens}, {self.batch_size}, {self.table_k}, "
                             f"{self.top_pairs}")
        if self.max_points < 0:
            raise ValueError(f"max_points must be >= 0, got {self.max_points}")
        if self.norm_measure not in ("head_pct", "head_abs", "model_abs"):
            raise ValueError(f"norm_measure must be head_pct, head_abs or model_abs, got "
                             f"{self.norm_measure!r}")
        start, end = self.positions
        if start < 1 or (end is not None and end <= start):
            raise ValueError(f"positions must be [start, end) with 1 <= start < end, got "
                             f"{self.positions}")


@dataclass
class AttentionResult:
    """What :func:`run_attention` wrote (tables as DataFrames) and where."""

    heuristic_top: Any
    heuristic_hist: Any
    heuristic_summary: dict[str, float]
    pairs: list[HeadPair]
    passed: AttentionPassResult
    plots: list[Any]
    rundir: Any


def run_attention(config: AttentionConfig) -> AttentionResult:
    """The ``attention`` stage: heuristic scores of every (neuron, later head) pair vs a
    random baseline, path ablation of the chosen pairs and BOS value norms, over one pass.

    Writes to ``RUN/attention/``: ``heuristic_top``, ``heuristic_hist``, ``path_ablation``,
    ``path_ablation_points``, ``bos_value_norms`` (parquet + CSV) and
    ``heuristic_summary.json``; plots ``RUN/plots/attention_{heuristic,path_ablation,
    bos_value_norms}.png``; the ``attention`` stage of ``RUN/manifest.json``.
    """
    import time

    from universal_neurons.analysis.interventions import open_dataset, token_progress
    from universal_neurons.models.loading import load_model
    from universal_neurons.rundir import RunDir, write_json, write_table

    t0 = time.perf_counter()
    model = load_model(config.model, device=config.device)
    a = model.adapter
    a.attention_modules(0)  # an adapter without an attention layout fails before any work
    restrict = [parse_neuron_name(n) for n in config.neurons] or None
    chosen = [HeadPair.parse(p) for p in config.pairs]
    size = (f"{model.name} has {a.n_layers} layers of {a.d_mlp} neurons and "
            f"{a.n_heads} heads per layer")
    for layer, n in restrict or []:
        if not (layer < a.n_layers and n < a.d_mlp):
            raise UserError(f"neuron {neuron_name(layer, n)} does not exist: {size}")
    for p in chosen:
        if not (p.head_layer < a.n_layers and p.neuron < a.d_mlp and p.head < a.n_heads):
            raise UserError(f"pair {p.name} does not exist: {size}")

    w = a.processed_weights()
    k_bos = bos_keys(model)
    scores = heuristic_scores(w.W_out, w.W_Q, k_bos)
    base = heuristic_scores(random_like_norms(w.W_out, config.seed, center=a.normalization == "LN"),
                            w.W_Q, k_bos)
    top, hist, summary = heuristic_tables(scores, base, w.W_out.norm(dim=-1), config.table_k)
    pairs = chosen or top_pairs(scores, config.top_pairs, restrict)
    ds, n_seq = open_dataset(model, config.dataset, config.tokens, config.n_ctx, config.progress)
    if ds.n_ctx <= config.positions[0]:
        raise UserError(f"the dataset's sequences have {ds.n_ctx} tokens, so no query position "
                        f">= {config.positions[0]} to measure (the paper's 64-255); use longer "
                        "sequences (--n-ctx) or --positions 1: for every position after BOS")
    with token_progress(n_seq * ds.n_ctx, "path ablation", config.progress) as update:
        passed = attention_pass(model, ds.iter_batches(config.batch_size, 0, n_seq), pairs,
                                config.max_points, update, weights=w,
                                measure=config.norm_measure, positions=config.positions)

    run = RunDir(config.out)
    d = run / ATTENTION_DIR
    for df in (top, passed.path_ablation, passed.value_norms):
        df.insert(0, "model", model.name)
    write_table(d / ATTENTION_HEURISTIC_TOP, top)
    write_table(d / ATTENTION_HEURISTIC_HIST, hist)
    write_table(d / ATTENTION_PATH_ABLATION, passed.path_ablation)
    write_table(d / ATTENTION_PATH_ABLATION_POINTS, passed.points, csv=False)
    write_table(d / ATTENTION_BOS_VALUE_NORMS, passed.value_norms)
    summary["median_head_value_norm_ratio"] = float(passed.value_norms["ratio"].median())
    write_json(d / ATTENTION_HEURISTIC_SUMMARY, summary)
    plots = []
    if config.plots:
        from universal_neurons.report import plots_roles as pr

        pd_ = run / PLOTS_DIR
        plots = [pr.plot_heuristic_hist(hist, pd_ / FIG_ATTENTION_HEURISTIC, model.name),
                 pr.plot_path_ablation(passed.points, passed.path_ablation,
                                       pd_ / FIG_ATTENTION_PATH_ABLATION, model.name),
                 pr.plot_bos_value_norms(passed.value_norms, pd_ / FIG_ATTENTION_BOS_VALUE_NORMS,
                                         model.name)]
    run.record_stage(
        "attention", config, model=model.name, pairs=[p.name for p in pairs], summary=summary,
        tokens={"sequences": n_seq, "n_ctx": ds.n_ctx},
        dataset={"path": str(ds.path), "source": ds.meta.get("source"),
                 "tokenizer_fingerprint": ds.fingerprint},
        seconds=round(time.perf_counter() - t0, 2))
    return AttentionResult(top, hist, summary, list(pairs), passed, plots, run.path)
