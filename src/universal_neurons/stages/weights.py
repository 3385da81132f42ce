"""The weights stage: per-neuron weight statistics of every model (paper §4.2).

``run_weights(WeightsConfig(...))`` is what ``universal-neurons weights`` runs: for each
model, take the TransformerLens-processed weights (fold_ln, center_writing_weights,
center_unembed; the model itself is not modified), compute the statistics of
:func:`~universal_neurons.analysis.weights.compute_weight_stats`, write
``stats/<model>/weights.safetensors`` and ``weight_tokens.parquet``, join the columns into
``neurons/<model>.parquet`` and record the stage in the manifest.
"""

from __future__ import annotations

import logging
import time
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Literal

from universal_neurons.errors import UserError
from universal_neurons.options import opt

log = logging.getLogger(__name__)

STAGE = "weights"
PROCESSING = "fold_ln, center_writing_weights, center_unembed"


@dataclass(frozen=True)
class WeightsConfig:
    """Options of the weights stage (the CLI flags, one for one)."""

    models: tuple[str, ...] = opt(MISSING, "--model", "--models", metavar="M")
    """Models or suites (aliases, HF ids, folders)."""
    out: str = opt(MISSING, metavar="RUN")
    """Run directory."""
    top_k: int = 10
    """Tokens / neurons kept per list and neuron."""
    device: str = "cpu"
    """Where to compute (cpu or cuda)."""
    precision: Literal["fp32", "fp64"] = "fp32"
    """dtype of the cosine matrix products (fp32: cosines within 1e-6 and vocab moments
    within 1e-5 relative of float64; fp64: exact to rounding, ~3x slower)."""
    compositions: bool = False
    """Also embedding tokens, neuron and attention compositions."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        if not self.models:
            raise UserError("weights needs at least one model, e.g. --model tiny-gpt2-a")
        if self.top_k < 1:
            raise UserError(f"--top-k must be at least 1, got {self.top_k}")
        if self.precision not in ("fp32", "fp64"):
            raise UserError(f"--precision must be fp32 or fp64, got {self.precision!r}")


@dataclass
class WeightsResult:
    """What a weights run wrote: the run directory, model names (with their layer and
    neuron counts) and the files."""

    rundir: Path
    models: list[str] = field(default_factory=list)
    shapes: dict[str, tuple[int, int]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_weights(config: WeightsConfig) -> WeightsResult:
    """Run the weights stage for every model of ``config.models`` (suites expanded)."""
    import torch

    from universal_neurons.analysis.neuron_table import write_weight_stats
    from universal_neurons.analysis.weights import compute_weight_stats
    from universal_neurons.models.loading import load_model
    from universal_neurons.models.registry import expand_model_specs
    from universal_neurons.rundir import RunDir

    dtype = torch.float64 if config.precision == "fp64" else torch.float32
    run_dir = RunDir(config.out)
    result = WeightsResult(run_dir.path)
    t0 = time.perf_counter()
    for spec in expand_model_specs(list(config.models)):
        model = load_model(spec)
        pw = model.adapter.processed_weights()
        stats = compute_weight_stats(pw, top_k=config.top_k, device=config.device,
                                     matmul_dtype=dtype, compositions=config.compositions)
        result.files += write_weight_stats(run_dir.path, model.name, stats,
                                           tokenizer=model.tokenizer,
                                           meta={"model": model.name, "processing": PROCESSING})
        result.models.append(model.name)
        result.shapes[model.name] = (pw.n_layers, pw.d_mlp)
        log.info("%s: weight statistics of %d x %d neurons", model.name, pw.n_layers, pw.d_mlp)
    result.seconds = time.perf_counter() - t0
    run_dir.record_stage(STAGE, {"models": list(config.models), "top_k": config.top_k,
                                 "precision": config.precision,
                                 "compositions": config.compositions},
                         models=result.models, outputs=result.files,
                         timings={"total_s": result.seconds})
    return result
