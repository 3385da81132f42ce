"""``universal-neurons correlate`` on the bundled suite, checked against brute-force numpy.

The oracle captures every model's activations on the same tokens, drops the same tokens,
and recomputes the paper's definitions in float64: Pearson correlations with every neuron
of each partner, the baseline by explicitly rotating the partner's activations with the
run's bases, excess correlation and universality.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from universal_neurons.models.registry import BUNDLED_MEMBERS, bundled_member_path


def bundled_ready() -> bool:
    return all((bundled_member_path(m) / "model.safetensors").is_file() for m in BUNDLED_MEMBERS)


pytestmark = pytest.mark.skipif(
    not bundled_ready(),
    reason="bundled suite tiny-gpt2 is not built (no model.safetensors in "
           "src/universal_neurons/zoo/bundled/tiny-gpt2-{a..e}/); build it with "
           "`universal-neurons zoo build`")


def corr64(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x, y = x.astype(np.float64), y.astype(np.float64)
    xc, yc = x - x.mean(0), y - y.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (xc.T @ yc) / np.outer(np.linalg.norm(xc, axis=0), np.linalg.norm(yc, axis=0))


def nanmax_rows(c: np.ndarray) -> np.ndarray:
    c = np.where(np.isnan(c), -np.inf, c)
    m = c.max(1)
    return np.where(np.isinf(m), np.nan, m)


def brute_force(specs: list[str], dataset_path: str, n_seq: int, seed: int = 0) -> dict:
    """Per-neuron max correlation and rotated baseline of the first model against the others."""
    from universal_neurons.data.dataset import open_token_dataset
    from universal_neurons.data.tokens import keep_mask
    from universal_neurons.engine.rotation import baseline_basis
    from universal_neurons.models.loading import load_model

    ds = open_token_dataset(dataset_path)
    tokens = np.asarray(ds.tokens[:n_seq], dtype=np.int64)
    acts, names, d = {}, [], {}
    for spec in specs:
        m = load_model(spec)
        keep = keep_mask(tokens, m.tokenizer).reshape(-1)
        out = []
        for s in range(0, n_seq, 8):
            a = m.adapter.capture(torch.from_numpy(tokens[s:s + 8]))["post"]  # [L, b, p, d]
            out.append(a.permute(1, 2, 0, 3).reshape(-1, a.shape[0] * a.shape[3]))
        acts[m.name] = torch.cat(out).numpy()[keep]
        names.append(m.name)
        d[m.name] = (m.adapter.n_layers, m.adapter.d_mlp)
    ref, partners = names[0], names[1:]
    corr, base, best = [], [], {}
    for p in partners:
        c = corr64(acts[ref], acts[p])
        corr.append(nanmax_rows(c))
        best[p] = np.argmax(np.where(np.isnan(c), -np.inf, c), 1)
        L, dm = d[p]
        rot = np.concatenate([acts[p][:, i * dm:(i + 1) * dm].astype(np.float64)
                              @ baseline_basis("rotation", seed, p, i, dm).numpy()
                              for i in range(L)], 1)
        base.append(nanmax_rows(corr64(acts[ref], rot)))
    corr, base = np.stack(corr, 1), np.stack(base, 1)
    return {"ref": ref, "partners": partners, "corr": corr, "base": base, "best": best,
            "excess": corr.mean(1) - base.mean(1), "n_kept": len(acts[ref]), "d": d}


def check_run(run: Path, want: dict, threshold: float = 0.5) -> None:
    import pandas as pd

    table = pd.read_parquet(run / "neurons" / f"{want['ref']}.parquet")
    np.testing.assert_allclose(table["excess_corr"], want["excess"], atol=1e-4)
    np.testing.assert_allclose(table["mean_corr"], want["corr"].mean(1), atol=1e-4)
    np.testing.assert_allclose(table["max_baseline"], want["base"].max(1), atol=1e-4)
    sure = np.abs(want["excess"] - threshold) > 1e-4
    np.testing.assert_array_equal(table["is_universal"][sure], (want["excess"] > threshold)[sure])
    for j, p in enumerate(want["partners"]):
        np.testing.assert_allclose(table[f"{p}_corr"], want["corr"][:, j], atol=1e-4)
        dm = want["d"][p][1]
        agree = np.mean([b == f"L{i // dm}.{i % dm}" for b, i in zip(table[f"{p}_best"],
                                                                      want["best"][p])])
        assert agree > 0.99  # near-ties may swap under float32 rounding
    stage = json.loads((run / "manifest.json").read_text())["stages"]["correlate"]
    assert stage["tokens"]["kept_tokens"] == want["n_kept"]
    assert stage["seeds"]["rotation"] == 0


def test_correlate_bundled_suite_matches_brute_force(tmp_path, monkeypatch, capsys):
    from universal_neurons.cli import main

    monkeypatch.setenv("UNIVERSAL_NEURONS_CACHE", str(tmp_path / "cache"))  # default dataset
    run = tmp_path / "run"
    code = main(["correlate", "--models", "tiny-gpt2", "--out", str(run), "--max-tokens", "4096",
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    stage = json.loads((run / "manifest.json").read_text())["stages"]["correlate"]
    n_seq = stage["tokens"]["sequences"]
    want = brute_force(list(BUNDLED_MEMBERS), stage["dataset"]["path"], n_seq)
    check_run(run, want)
    for m in BUNDLED_MEMBERS[1:]:
        assert (run / "correlations" / f"tiny-gpt2-a__{m}.safetensors").exists()
        assert (run / "correlations" / f"{m}__tiny-gpt2-a.safetensors").exists()
