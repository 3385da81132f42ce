"""``engine.neuron_samples.NeuronSamples`` on hand-made batches: kept columns, next tokens
looked up in the token array, and per-group moments recomputed with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from universal_neurons.engine import neuron_samples as ns
from universal_neurons.engine.batch import ActivationBatch
from universal_neurons.engine.neuron_samples import NeuronSamples


def _batch(rng, tokens, seqs, keep, n_neurons):
    seq_idx, pos = np.nonzero(keep)
    seq_idx = np.asarray(seqs)[seq_idx]
    acts = rng.normal(size=(len(pos), n_neurons)).astype(np.float32)
    return ActivationBatch(
        acts={"m": {"post": torch.from_numpy(acts)}},
        token_ids=torch.from_numpy(tokens[seq_idx, pos].astype(np.int64)),
        prev_token_ids=torch.zeros(len(pos), dtype=torch.long),
        positions=torch.from_numpy(pos.astype(np.int64)),
        seq_index=torch.from_numpy(seq_idx.astype(np.int64))), acts, seq_idx, pos


@pytest.mark.parametrize("rows", [1024, 5])
def test_samples_and_group_moments(rows, monkeypatch):
    monkeypatch.setattr(ns, "ROWS", rows)  # 5: the moments are folded in several chunks
    rng = np.random.default_rng(0)
    n_seq, n_ctx, n_neurons = 6, 9, 7
    tokens = rng.integers(0, 50, (n_seq, n_ctx))
    groups = rng.integers(-1, 3, (n_seq, n_ctx))
    acc = NeuronSamples("m", tokens, [4, 1], n_neurons, groups, 3)
    all_acts, all_seq, all_pos = [], [], []
    for seqs in ([0, 1, 2], [3, 4, 5]):
        keep = rng.random((3, n_ctx)) < 0.7
        keep[:, 0] = False
        batch, acts, seq_idx, pos = _batch(rng, tokens, seqs, keep, n_neurons)
        acc.update(batch)
        all_acts.append(acts)
        all_seq.append(seq_idx)
        all_pos.append(pos)
    out = acc.finalize()
    acts, seq_idx, pos = (np.concatenate(x) for x in (all_acts, all_seq, all_pos))
    np.testing.assert_array_equal(out["acts"], acts[:, [4, 1]])
    np.testing.assert_array_equal(out["token_ids"], tokens[seq_idx, pos])
    expect_next = [tokens[s, p + 1] if p + 1 < n_ctx else -1 for s, p in zip(seq_idx, pos)]
    np.testing.assert_array_equal(out["next_ids"], expect_next)
    g = groups[seq_idx, pos]
    for k in range(3):
        rows = acts[g == k].astype(np.float64)
        assert out["count"][k] == len(rows)
        np.testing.assert_allclose(out["total"][k], rows.sum(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(out["squares"][k], (rows ** 2).sum(axis=0), rtol=1e-12,
                                   atol=1e-12)
    assert out["count"].sum() == (g >= 0).sum()


def test_merge_equals_one_accumulator():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 20, (4, 5))
    groups = rng.integers(0, 2, (4, 5))
    keep = np.ones((2, 5), bool)
    b1 = _batch(rng, tokens, [0, 1], keep, 3)[0]
    b2 = _batch(rng, tokens, [2, 3], keep, 3)[0]
    one = NeuronSamples("m", tokens, [2], 3, groups, 2)
    one.update(b1)
    one.update(b2)
    a, b = NeuronSamples("m", tokens, [2], 3, groups, 2), NeuronSamples("m", tokens, [2], 3,
                                                                         groups, 2)
    a.update(b1)
    b.update(b2)
    a.merge(b)
    x, y = one.finalize(), a.finalize()
    for k in x:
        np.testing.assert_allclose(x[k], y[k], rtol=1e-12, atol=1e-12)
