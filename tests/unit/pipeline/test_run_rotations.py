"""``run``'s ``rotations`` option reaches the correlate stage (and only when set)."""

from __future__ import annotations

from universal_neurons.pipeline import RunConfig, load_config_file, stage_commands


def test_rotations_reach_correlate(tmp_path):
    argv = dict(stage_commands(RunConfig(out=str(tmp_path), rotations=20), "tiny-gpt2-a"))
    corr = argv["correlate"]
    assert corr[corr.index("--rotations") + 1] == "20"
    plain = dict(stage_commands(RunConfig(out=str(tmp_path)), "tiny-gpt2-a"))
    assert "--rotations" not in plain["correlate"]  # default: the cached argv is unchanged
    p = tmp_path / "run.toml"
    p.write_text("rotations = 5\n")
    assert load_config_file(p) == {"rotations": 5}
