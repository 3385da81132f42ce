"""The run-directory names in ``constants``: figure sections and path helpers."""

from __future__ import annotations

import pytest

from universal_neurons import constants as c


@pytest.mark.parametrize(("name", "section"), [
    ("properties_percentiles.png", "properties"), ("universal_by_layer.png", "properties"),
    ("corr_vs_baseline_org--toy-b.png", "properties"), ("families_toy-a.png", "families"),
    ("prediction_curves.png", "prediction"), ("entropy_L3.17.png", "entropy"),
    ("attention_heuristic.png", "attention"), ("attention_path_ablation.png", "attention"),
    ("attention_bos_value_norms.png", "attention"),
    ("trajectory_universality.png", "trajectory"), ("trajectory_scatter.png", "trajectory"),
    ("universality.png", None), ("my_attn_plot.png", None), ("families_.png", None),
])
def test_figure_section(name, section):
    assert c.figure_section(name) == section


def test_every_figure_template_resolves_to_its_section():
    for template, section in c.FIGURE_SECTIONS.items():
        name = template.format(model="EleutherAI--pythia-160m", neuron="L1.2")
        assert c.figure_section(name) == section


def test_path_helpers():
    assert c.neuron_table("org/m") == "neurons/org--m.parquet"
    assert c.correlations_file("a", "org/b") == "correlations/a__org--b.safetensors"
    assert c.trajectory_file(c.TRAJECTORY_SUMMARY) == "trajectory/summary.parquet"
    assert c.trajectory_checkpoint_dir("org/rev") == "trajectory/org--rev"
