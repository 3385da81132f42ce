"""The threshold-curve figure: drawn by the properties plots from the correlate stage's
table, shown in the report's properties section."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from universal_neurons.analysis.calibration import threshold_curve_table
from universal_neurons.constants import FIG_THRESHOLD_CURVE, THRESHOLD_CURVE, figure_section
from universal_neurons.rundir import write_table


def test_threshold_curve_is_plotted_into_the_properties_section(tmp_path):
    pytest.importorskip("matplotlib")
    from universal_neurons.report.plots_properties import _threshold_curve

    assert _threshold_curve(tmp_path, 0.5) == []  # no table: no figure
    rng = np.random.default_rng(0)
    excess = rng.uniform(-0.1, 0.9, 500)
    loo = excess[:, None] + rng.normal(0, 0.05, (500, 4))
    table = threshold_curve_table({"m-a": (excess, loo), "m-b": (excess * 0.8, None)})
    write_table(tmp_path / THRESHOLD_CURVE, table, csv=False)
    curve = pd.read_parquet(tmp_path / THRESHOLD_CURVE)
    assert list(curve.columns) == ["model", "threshold", "share", "share_ci_low",
                                   "share_ci_high"]
    assert len(curve) == 34
    a = curve[curve["model"] == "m-a"]
    assert (a["share_ci_low"] <= a["share"]).all() and (a["share"] <= a["share_ci_high"]).all()
    assert curve.loc[curve["model"] == "m-b", "share_ci_low"].isna().all()
    assert _threshold_curve(tmp_path, 0.5) == [f"plots/{FIG_THRESHOLD_CURVE}"]
    assert (tmp_path / "plots" / FIG_THRESHOLD_CURVE).read_bytes()[:4] == b"\x89PNG"
    assert figure_section(FIG_THRESHOLD_CURVE) == "properties"
