"""``run`` after its inputs or outputs changed behind its back: the stage reruns.

The correlate stage runs for real (on the tiny suite); the later stages are stand-ins that
write their outputs, so these tests stay small."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from correlate_helpers import make_dataset
from fault_helpers import write_outputs

from universal_neurons.errors import UserError
from universal_neurons.pipeline import STAGE_NAMES, RunConfig, run_pipeline


class Stages:
    """A runner for run_pipeline: the real correlate stage, the rest stand-ins."""

    def __init__(self, run):
        self.run, self.calls = run, []

    def __call__(self, name: str, config) -> None:
        from dataclasses import replace

        from universal_neurons.pipeline import run_stage

        self.calls.append(name)
        if name == "correlate":
            run_stage(name, replace(config, batch_size=4))
            return
        write_outputs(self.run, name)


@pytest.fixture
def study(suite, tmp_path):
    ds = tmp_path / "tokens"
    make_dataset(ds, suite["tokenizer"], n_ctx=32, tokens=32 * 24, seed=0)
    cfg = RunConfig(models=tuple(suite["models"]), dataset=str(ds), tokens=32 * 24,
                    out=str(tmp_path / "run"))
    run_pipeline(cfg, Stages(tmp_path / "run"), quiet=True)
    return cfg, tmp_path / "run", ds


def table(run):
    return pd.read_parquet(run / "neurons" / "fa.parquet")  # the reference model


def test_rebuilt_dataset_reruns_every_stage(suite, study, caplog):
    cfg, run, ds = study
    before = table(run)
    shutil.rmtree(ds)  # rebuilt at the same path, like `tokenize --seed 7 --overwrite`
    make_dataset(ds, suite["tokenizer"], n_ctx=32, tokens=32 * 24, seed=7)
    stages = Stages(run)
    with caplog.at_level("INFO", logger="universal_neurons.pipeline"):
        record = run_pipeline(cfg, stages, quiet=True)
    assert stages.calls == list(STAGE_NAMES)
    assert f"[1/{len(STAGE_NAMES)}] correlate (dataset changed)" in caplog.text
    assert f"[2/{len(STAGE_NAMES)}] weights (an earlier stage reran)" in caplog.text
    assert list(record["last_run"]["ran"]) == list(STAGE_NAMES)
    assert not table(run)["max_corr"].equals(before["max_corr"])  # new numbers


def test_deleted_outputs_rerun_their_stage(study, caplog):
    cfg, run, _ = study
    shutil.rmtree(run / "neurons")
    shutil.rmtree(run / "report")
    stages = Stages(run)
    with caplog.at_level("INFO", logger="universal_neurons.pipeline"):
        run_pipeline(cfg, stages, quiet=True)
    assert stages.calls == list(STAGE_NAMES)
    assert f"[1/{len(STAGE_NAMES)}] correlate (outputs missing: neurons/*.parquet)" in caplog.text
    assert (run / "report" / "index.html").is_file() and len(table(run)) == 32
    stages = Stages(run)
    assert run_pipeline(cfg, stages, quiet=True)["last_run"]["ran"] == {}
    assert stages.calls == []


def test_run_never_reports_success_with_outputs_missing(study):
    cfg, run, _ = study

    def forgets_the_report(name, config):
        return None  # finishes but writes nothing

    (run / "report" / "index.html").unlink()
    with pytest.raises(UserError, match="stage report finished but wrote no report/index.html"):
        run_pipeline(cfg, forgets_the_report, quiet=True)
