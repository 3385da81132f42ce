"""The report's "Universality over training" section."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from universal_neurons.analysis.trajectory import checkpoint_summary, neuron_trajectories
from universal_neurons.report.trajectory_section import trajectory_section


def write_trajectory(run, labels=("step10", "<b>main</b>")) -> pd.DataFrame:
    """Three neurons over two checkpoints: L0.0 universal throughout, L0.1 from the second,
    L0.2 never."""
    excess = {0: [0.6, 0.7], 1: [0.1, 0.55], 2: [0.0, 0.2]}
    rows = [{"layer": 0, "neuron": n, "checkpoint": labels[c], "checkpoint_index": c,
             "step": 10 if c == 0 else None, "tokens": None, "excess_corr": e[c],
             "is_universal": e[c] > 0.5} for n, e in excess.items() for c in range(2)]
    frame = pd.DataFrame(rows)
    (run / "trajectory").mkdir(parents=True)
    neuron_trajectories(frame).to_parquet(run / "trajectory" / "neurons.parquet")
    summary = checkpoint_summary(frame)
    summary.insert(2, "step", pd.array([10, None], dtype="Int64"))
    summary.insert(3, "tokens", pd.array([None, None], dtype="Int64"))
    summary.to_parquet(run / "trajectory" / "summary.parquet")
    return summary


def test_section_shows_the_summary_escaped_and_the_early_neurons(tmp_path):
    write_trajectory(tmp_path)
    html = trajectory_section(tmp_path, [("plots/trajectory_scatter.png", "trajectory_scatter.png"),
                                         ("plots/families_a.png", "families_a.png")])
    assert html.startswith('<section id="trajectory"><h2>Universality over training</h2>')
    assert "&lt;b&gt;main&lt;/b&gt;" in html and "<b>main</b>" not in html
    cells = re.findall(r"<td>(.*?)</td>", html)
    first = cells[:11]  # step10: 1 of 3 universal, 1 new, it persists, predicts 1 of 2
    assert first[:4] == ["step10", "10 step", "1", "33.33%"]
    assert first[5:7] == ["1", "100.00%"]
    assert first[9:11] == ["1", "0.5"]
    assert "<td>L0.0</td><td>step10</td>" in html and "L0.2" not in html
    assert "trajectory_scatter.png" in html and "families_a.png" not in html
    assert np.isclose(float(first[7]), 1.0)  # ranks agree: 0.6 > 0.1 > 0.0 vs 0.7 > 0.55 > 0.2


def test_section_is_empty_without_a_trajectory_and_reports_damaged_tables(tmp_path):
    assert trajectory_section(tmp_path) == ""
    (tmp_path / "trajectory").mkdir()
    (tmp_path / "trajectory" / "summary.parquet").write_text("not parquet")
    problems: list[str] = []
    assert trajectory_section(tmp_path, problems=problems) == ""
    assert problems and "summary.parquet" in problems[0]


def test_report_front_page_places_trajectory_figures_in_their_section(tmp_path):
    from universal_neurons.report.build import build_report

    write_trajectory(tmp_path)
    (tmp_path / "plots").mkdir()
    png = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                        "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")
    (tmp_path / "plots" / "trajectory_universality.png").write_bytes(png)
    index = build_report(tmp_path).read_text()
    body = index.split('<section id="trajectory">')[1].split("</section>")[0]
    assert "trajectory_universality.png" in body and "step10" in body
    other = index.split('<section id="figures">')[1].split("</section>")[0]
    assert "trajectory_universality.png" not in other
