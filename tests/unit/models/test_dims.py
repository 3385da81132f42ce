"""Model dimensions from configs alone, and `universal-neurons plan` built on them."""

from __future__ import annotations

import json

import pytest

from universal_neurons.cli import main
from universal_neurons.errors import UserError
from universal_neurons.models.dims import dims_from_config, model_dims


def test_known_aliases_have_their_published_shapes():
    small, medium = model_dims("stanford-gpt2-small-c"), model_dims("stanford-gpt2-medium-a")
    assert (small.n_layers, small.d_model, small.d_mlp, small.d_vocab) == (12, 768, 3072, 50257)
    assert (medium.n_layers, medium.d_mlp) == (24, 4096)
    assert 120e6 < small.n_params < 130e6 and 345e6 < medium.n_params < 365e6  # 124M, 355M
    p = model_dims("pythia-160m-seed3@step1000")
    assert (p.n_layers, p.d_mlp, p.d_vocab) == (12, 3072, 50304)
    assert 155e6 < p.n_params < 170e6  # 162M with untied embeddings


def test_local_configs_of_each_family(tmp_path):
    gpt2 = {"model_type": "gpt2", "n_layer": 4, "n_embd": 160, "n_head": 5, "n_inner": 512,
            "vocab_size": 4096, "n_positions": 256}
    neox = {"model_type": "gpt_neox", "num_hidden_layers": 6, "hidden_size": 128,
            "intermediate_size": 512, "num_attention_heads": 4, "vocab_size": 50304,
            "max_position_embeddings": 2048}
    llama = {**neox, "model_type": "llama", "intermediate_size": 344}
    for name, cfg in (("g", gpt2), ("n", neox), ("l", llama)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(cfg))
    g, n, ll = (model_dims(str(tmp_path / x)) for x in "gnl")
    assert (g.n_layers, g.d_mlp, g.n_ctx) == (4, 512, 256)
    assert (n.d_mlp, n.gated) == (512, False) and (ll.d_mlp, ll.gated) == (344, True)
    with pytest.raises(UserError, match="num_hidden_layers"):
        dims_from_config({"model_type": "mystery"})


def test_unknown_hub_model_is_a_clear_error():
    with pytest.raises(UserError, match="unknown offline.*local folder"):
        model_dims("some-org/not-a-cached-model")


def test_plan_command_gpt2_small_and_medium_from_configs(capsys):
    assert main(["plan", "--models", "stanford-gpt2-small", "--max-memory", "10G",
                 "--peak-tflops", "0.15", "--json"]) == 0
    small = json.loads(capsys.readouterr().out)
    assert small["plan"]["total_bytes"] <= 10 * 2**30 and small["plan"]["n_passes"] > 1
    assert small["projected_seconds"] > 0
    assert main(["plan", "--models", "stanford-gpt2-small", "--device", "cuda",
                 "--max-memory", "80GB", "--precision", "bf16", "--json"]) == 0
    gpu = json.loads(capsys.readouterr().out)
    assert gpu["plan"]["n_passes"] == 1 and gpu["peak_source"].startswith("A100")
    assert main(["plan", "--models", "stanford-gpt2-medium", "--device", "cuda",
                 "--max-memory", "80GB", "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "memory plan" in out and "projected for 100,000,000 tokens" in out
