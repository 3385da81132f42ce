"""The report stage: the static HTML report and neuron browser of a run.

``run_report(ReportStageConfig(...))`` is what ``universal-neurons report`` runs: build
``RUN/report/`` (or ``report_dir``) from whatever the run holds, with the page settings of
:class:`~universal_neurons.report.build.ReportConfig`. The report reads the run directory
only; stages that did not run show as "not computed".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from universal_neurons.options import NO_CLI, opt, run_opt

if TYPE_CHECKING:
    from universal_neurons.report.build import ReportConfig

STAGE = "report"


def _default_settings() -> ReportConfig:
    from universal_neurons.report.build import ReportConfig

    return ReportConfig()


@dataclass(frozen=True)
class ReportStageConfig:
    """Options of the report stage."""

    out: str = run_opt()
    """Run directory (the --out of earlier stages)."""
    report_dir: str | None = opt(None, metavar="DIR")
    """Where to write the site (default RUN/report)."""
    settings: ReportConfig = field(default_factory=_default_settings, metadata=NO_CLI)
    """Which neurons get pages and what they show."""
    progress: bool = True


def run_report(config: ReportStageConfig) -> Path:
    """Build the report; returns the path of its ``index.html``."""
    from universal_neurons.report.build import build_report

    progress = None
    if config.progress:
        from tqdm.auto import tqdm

        def progress(jobs):  # type: ignore[no-untyped-def]
            return tqdm(jobs, desc="neuron pages", unit="page")
    return build_report(config.out, config.report_dir, config.settings, progress=progress)
