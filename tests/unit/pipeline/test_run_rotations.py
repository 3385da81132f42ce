"""``run``'s ``rotations`` option reaches the correlate stage."""

from __future__ import annotations

from universal_neurons.pipeline import stage_configs
from universal_neurons.run_config import RunConfig, load_config_file


def test_rotations_reach_correlate(tmp_path):
    configs = dict(stage_configs(RunConfig(out=str(tmp_path), rotations=20), "tiny-gpt2-a"))
    assert configs["correlate"].rotations == 20
    plain = dict(stage_configs(RunConfig(out=str(tmp_path)), "tiny-gpt2-a"))
    assert plain["correlate"].rotations == 1
    p = tmp_path / "run.toml"
    p.write_text("rotations = 5\n")
    assert load_config_file(p) == {"rotations": 5}
