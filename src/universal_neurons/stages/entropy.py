"""The entropy stage: entropy neurons found from weights and swept (paper §5.2).

``run_entropy(EntropyConfig(...))`` is what ``universal-neurons entropy`` runs: rank
candidates from the weights (:func:`~universal_neurons.analysis.entropy.find_entropy_candidates`),
fix the targets and baseline neurons to each value (:func:`~universal_neurons.analysis.entropy.entropy_sweep`),
write ``RUN/entropy/`` tables and ``RUN/plots/entropy_<neuron>.png``, record the stage. The
definitions and the paper's choices are in :mod:`universal_neurons.analysis.entropy`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from universal_neurons.analysis.entropy import (
    baseline_neurons,
    baseline_pool,
    entropy_sweep,
    find_entropy_candidates,
)
from universal_neurons.constants import neuron_name
from universal_neurons.options import dataset_opt, models_opt, opt, run_opt, tokens_opt

log = logging.getLogger(__name__)

STAGE = "entropy"


@dataclass(frozen=True)
class EntropyConfig:
    """Settings of the ``entropy`` stage (saved in the run manifest)."""

    model: str = models_opt(one=True)
    """Model spec (alias, bundled member, HF id, folder), e.g. tiny-gpt2-a."""
    out: str = run_opt()
    """Run directory."""
    neurons: tuple[str, ...] = opt((), metavar="L.N")
    """Target neurons (``L{layer}.{neuron}``); empty = find candidates, sweep the best."""
    values: tuple[float, ...] = opt((-0.17, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0), metavar="V")
    """Activation values each neuron is fixed to (the paper's)."""
    find: bool = False
    """Rank candidates from weights even when ``neurons`` are given."""
    dataset: str | None = dataset_opt()
    """Token dataset folder; None = the bundled test split tokenized for the model."""
    tokens: int = tokens_opt(16_384)
    """Tokens to run, e.g. 100k (rounded up to whole sequences)."""
    n_ctx: int | None = None
    """Context of the default dataset (default ``min(512, model n_ctx)``)."""
    batch_size: int = 8
    """Sequences per forward pass."""
    device: str = "cpu"
    """Where to compute (cpu or cuda)."""
    n_baseline: int = opt(20, "--baseline", metavar="K")
    """Random baseline neurons (fixed to the same values)."""
    baseline_layers: int = 2
    """The baseline neurons come from the last this-many layers."""
    seed: int = 0
    """Seed of the baseline neurons."""
    baseline_draw: Literal["filtered", "uniform"] = "filtered"
    """``filtered`` (the paper): l2 penalty <= its 90th percentile and vocab_var >= its 10th;
    ``uniform``: any neuron of the last layers."""
    count_special: bool = False
    """Count rows whose token is BOS/EOS/pad in the means (the paper does not)."""
    null_energy: float = 0.01
    """Share of W_U's spectrum energy (sum S²) the effective null space may hold."""
    find_layers: int | None = opt(2, metavar="K")
    """Rank candidates in the last this-many layers (0 or None = all layers)."""
    top_k: int = 20
    """Candidates whose pairwise w_out cosines are reported."""
    n_targets: int = 2
    """Best candidates swept when no neurons are given."""
    keep_tokens: bool = opt(False, "--per-token")
    """Also save per-token metrics of the clean and target runs."""
    plots: bool = opt(True, "--no-plots", help="skip the PNG plots")
    """Write the PNG plots."""
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "neurons", tuple(self.neurons))
        object.__setattr__(self, "values", tuple(float(v) for v in self.values))
        if self.find_layers == 0:
            object.__setattr__(self, "find_layers", None)
        if not self.values:
            raise ValueError("values must not be empty; pass e.g. --values 0 1 2 3 4 5 6")
        if len(set(self.values)) != len(self.values):
            raise ValueError(f"values must be distinct, got {self.values}")
        if self.n_baseline < 0 or self.baseline_layers < 1:
            raise ValueError(f"n_baseline must be >= 0 and baseline_layers >= 1, got "
                             f"{self.n_baseline} and {self.baseline_layers}")
        if not 0.0 < self.null_energy < 1.0:
            raise ValueError(f"null_energy must be in (0, 1), got {self.null_energy}")
        if min(self.tokens, self.batch_size, self.top_k, self.n_targets) < 1:
            raise ValueError(f"tokens, batch_size, top_k and n_targets must be >= 1, got "
                             f"{self.tokens}, {self.batch_size}, {self.top_k}, {self.n_targets}")
        if self.baseline_draw not in ("filtered", "uniform"):
            raise ValueError(f"baseline_draw must be filtered or uniform, got "
                             f"{self.baseline_draw!r}")
        if self.find_layers is not None and self.find_layers < 1:
            raise ValueError(f"find_layers must be >= 1 (or None for all), got {self.find_layers}")



@dataclass
class EntropyResult:
    """What :func:`run_entropy` wrote: candidate tables (None unless searched), the sweep
    (:class:`InterventionResults`), the targets swept, plot paths and the run directory."""

    candidates: Any
    pairs: Any
    sweep: Any
    targets: list[tuple[int, int]]
    plots: list[Path]
    rundir: Path


def run_entropy(config: EntropyConfig) -> EntropyResult:
    """The ``entropy`` stage: find candidates (if asked or no neurons given), sweep fixed
    activation values of the targets and baseline neurons, save tables and plots.

    Writes ``RUN/entropy/{candidates,candidate_pairs,sweep}.parquet`` (+ CSV copies),
    ``RUN/entropy/sweep_tokens.parquet`` (``keep_tokens``), ``RUN/plots/entropy_<neuron>.png``
    and the ``entropy`` stage of ``RUN/manifest.json``.
    """
    from universal_neurons.analysis.interventions import open_dataset, token_progress
    from universal_neurons.constants import (
        ENTROPY_CANDIDATE_PAIRS,
        ENTROPY_CANDIDATES,
        ENTROPY_DIR,
        ENTROPY_SWEEP,
        FIG_ENTROPY,
        PLOTS_DIR,
        parse_neuron_name,
    )
    from universal_neurons.errors import UserError
    from universal_neurons.models.loading import load_model
    from universal_neurons.rundir import RunDir, write_table

    t0 = time.perf_counter()
    targets = [parse_neuron_name(n) for n in config.neurons]
    model = load_model(config.model, device=config.device)
    a = model.adapter
    for layer, n in targets:
        if not (0 <= layer < a.n_layers and 0 <= n < a.d_mlp):
            raise UserError(f"neuron {neuron_name(layer, n)} does not exist in {model.name} "
                            f"({a.n_layers} layers of {a.d_mlp} neurons)")
    run = RunDir(config.out)
    out_dir = run / ENTROPY_DIR
    candidates = pairs = None
    if config.find or not targets:
        first = 0 if config.find_layers is None else max(a.n_layers - config.find_layers, 0)
        candidates, pairs = find_entropy_candidates(
            a.processed_weights(), range(first, a.n_layers), config.null_energy, config.top_k)
        candidates.insert(0, "model", model.name)
        write_table(out_dir / ENTROPY_CANDIDATES, candidates)
        write_table(out_dir / ENTROPY_CANDIDATE_PAIRS, pairs)
        if not targets:
            targets = [(int(r.layer), int(r.neuron))
                       for r in candidates.head(config.n_targets).itertuples()]
            log.info("sweeping the best candidates: %s",
                     ", ".join(neuron_name(*t) for t in targets))
    pool = (baseline_pool(a.processed_weights(), config.baseline_layers)
            if config.baseline_draw == "filtered" and config.n_baseline else None)
    n_pool = (len(pool) if pool is not None
              else a.d_mlp * min(config.baseline_layers, a.n_layers))
    n_base = min(config.n_baseline, max(0, n_pool - len(targets)))
    baseline = baseline_neurons(a.n_layers, a.d_mlp, n_base, config.baseline_layers,
                                config.seed, exclude=targets, pool=pool)
    ds, n_seq = open_dataset(model, config.dataset, config.tokens, config.n_ctx, config.progress)
    n_runs = 1 + (len(targets) + len(baseline)) * len(config.values)
    log.info("entropy sweep: %d runs x %d tokens", n_runs, n_seq * ds.n_ctx)
    with token_progress(n_seq * ds.n_ctx, "entropy sweep", config.progress) as update:
        from universal_neurons.data.tokens import special_ids

        skip = () if config.count_special else special_ids(model.tokenizer).tolist()
        sweep = entropy_sweep(model, ds.iter_batches(config.batch_size, 0, n_seq), targets,
                              config.values, baseline, config.keep_tokens, update, skip)
    sweep.summary.insert(0, "model", model.name)
    sweep.save(out_dir, ENTROPY_SWEEP)
    plots: list[Path] = []
    if config.plots:
        from universal_neurons.report.plots_roles import plot_entropy_sweep

        for t in targets:
            name = neuron_name(*t)
            path = run / PLOTS_DIR / FIG_ENTROPY.format(neuron=name)
            plots.append(plot_entropy_sweep(sweep.summary, name, path, model.name))
    run.record_stage(
        STAGE, config, model=model.name, targets=[neuron_name(*t) for t in targets],
        baseline=[neuron_name(*b) for b in baseline],
        null_dims=candidates.attrs.get("null_dims") if candidates is not None else None,
        tokens={"sequences": n_seq, "n_ctx": ds.n_ctx, "evaluated": int(sweep.summary["n_tokens"].iloc[0])},
        dataset={"path": str(ds.path), "source": ds.meta.get("source"),
                 "tokenizer_fingerprint": ds.fingerprint},
        seconds=round(time.perf_counter() - t0, 2))
    return EntropyResult(candidates, pairs, sweep, targets, plots, run.path)
