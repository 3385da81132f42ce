"""TokenTableAccumulator against a numpy float64 oracle; merge, checkpoint, memory plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from universal_neurons.engine.accumulator import Accumulator
from universal_neurons.engine.token_table import (
    RowLabels,
    TokenTableAccumulator,
    iter_array_batches,
    plan_neuron_tiles,
    token_table_bytes,
)
from universal_neurons.errors import UserError

V, N_SEQ, N_CTX, N_ALL = 13, 6, 9, 7


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, V, size=(N_SEQ, N_CTX))
    acts = (rng.normal(size=(N_SEQ, N_CTX, N_ALL)) + 3.0).astype(np.float32)  # mean >> std
    keep = rng.random((N_SEQ, N_CTX)) > 0.2
    keep[:, 0] = False  # BOS
    codes = np.stack([rng.integers(0, 3, (N_SEQ, N_CTX)), rng.random((N_SEQ, N_CTX)) < 0.3],
                     axis=-1).astype(np.uint8)
    labels = RowLabels(codes, ("colour", "flag"), (("none", "red", "blue"), ("no", "yes")))
    return tokens, acts, keep, labels


def _run(tokens, acts, keep, labels, neurons=None, batch_seqs=2, seqs=slice(None), **kw):
    acc = TokenTableAccumulator("m", V, acts.shape[-1], neurons, labels,
                                compute_dtype=torch.float64, **kw)
    off = seqs.start or 0
    for b in iter_array_batches("m", tokens[seqs], acts[seqs], keep[seqs], batch_seqs, off):
        acc.update(b)
    return acc


def _oracle(tokens, acts, keep, neurons):
    """Rows as a flat list: (token, prev token or -1, codes, acts[neurons]) in float64."""
    prev = np.full_like(tokens, -1)
    prev[:, 1:] = tokens[:, :-1]
    return tokens[keep], prev[keep], acts[keep][:, neurons].astype(np.float64), keep


def test_is_accumulator(data):
    assert isinstance(_run(*data), Accumulator)


def test_matches_numpy_oracle(data):
    tokens, acts, keep, labels = data
    neurons = [5, 0, 3]
    t = _run(tokens, acts, keep, labels, neurons).finalize()
    tok, prev, a, _ = _oracle(tokens, acts, keep, neurons)
    assert t.n_rows == len(tok)
    np.testing.assert_allclose(t.mean.numpy(), a.mean(0), rtol=1e-12)
    np.testing.assert_allclose(t.var.numpy(), a.var(0), rtol=1e-10)
    for v in range(V):
        for key, ids in (("current", tok), ("previous", prev)):
            g = getattr(t, key)
            rows = a[ids == v]
            assert int(g.count[v]) == len(rows)
            if len(rows):
                np.testing.assert_allclose(t.group_mean(g)[v].numpy(), rows.mean(0), rtol=1e-12)
                c = (g.sumsq[v] - g.sum[v] ** 2 / len(rows)).numpy()  # within-group SS
                np.testing.assert_allclose(c, ((rows - rows.mean(0)) ** 2).sum(0), atol=1e-9)
                np.testing.assert_array_equal(g.max[v].numpy(), rows.max(0).astype(np.float32))
            else:
                assert torch.isinf(g.max[v]).all()
    # previous-token table: position-0 rows have no previous token and are left out
    assert int(t.previous.count.sum()) == int((prev >= 0).sum()) < len(tok) or not keep[:, 0].any()
    codes = labels.codes[keep]
    for s, name in enumerate(labels.schemes):
        g = t.sequence[name]
        for code in range(len(labels.labels[s])):
            rows = a[codes[:, s] == code]
            assert int(g.count[code]) == len(rows)
            np.testing.assert_allclose(t.group_mean(g)[code].numpy(), rows.mean(0), rtol=1e-10)
            np.testing.assert_allclose(g.fire[code].numpy(), (rows > 0).sum(0))


def test_no_previous_token_across_sequences():
    """Row 0 of every sequence must not see the last token of the sequence before."""
    tokens = np.array([[1, 2, 3], [4, 5, 6]])
    acts = np.zeros((2, 3, 1), np.float32)
    acts[1, 0, 0] = 10.0  # only position 0 of sequence 1 fires; its "previous" would be 3
    t = _run(tokens, acts, np.ones_like(tokens, bool), None, batch_seqs=2).finalize()
    assert int(t.previous.count[3]) == 0 and int(t.previous.count.sum()) == 4
    assert float(t.group_mean(t.previous)[1:3].max()) == 0.0


def test_merge_is_exact(data):
    tokens, acts, keep, labels = data
    whole = _run(tokens, acts, keep, labels).finalize()
    a = _run(tokens, acts, keep, labels, seqs=slice(0, 2))
    b = _run(tokens, acts, keep, labels, seqs=slice(2, None))
    assert not torch.equal(a.shift, b.shift)  # the shift conversion is exercised
    a.merge(b)
    merged = a.finalize()
    assert merged.n_rows == whole.n_rows
    for key in ("current", "previous"):
        gw, gm = getattr(whole, key), getattr(merged, key)
        assert torch.equal(gw.count, gm.count)
        assert torch.equal(gw.max, gm.max)
        torch.testing.assert_close(merged.group_mean(gm), whole.group_mean(gw), rtol=1e-12,
                                   atol=1e-12, equal_nan=True)
        ssw = gw.sumsq - gw.sum ** 2 / gw.count.clamp(min=1)[:, None]
        ssm = gm.sumsq - gm.sum ** 2 / gm.count.clamp(min=1)[:, None]
        torch.testing.assert_close(ssm, ssw, rtol=1e-9, atol=1e-9)
    for name in labels.schemes:
        torch.testing.assert_close(merged.group_mean(merged.sequence[name]),
                                   whole.group_mean(whole.sequence[name]), rtol=1e-12, atol=1e-12)
        assert torch.equal(merged.sequence[name].fire, whole.sequence[name].fire)
    torch.testing.assert_close(merged.var, whole.var, rtol=1e-12, atol=0)


def test_merge_into_empty_and_checkpoint_roundtrip(data, tmp_path):
    tokens, acts, keep, labels = data
    full = _run(tokens, acts, keep, labels)
    empty = TokenTableAccumulator("m", V, N_ALL, None, labels, compute_dtype=torch.float64)
    empty.merge(full)
    path = tmp_path / "ckpt.pt"
    torch.save(empty.state_dict(), path)
    restored = TokenTableAccumulator("m", V, N_ALL, None, labels, compute_dtype=torch.float64)
    restored.load_state_dict(torch.load(path, weights_only=True))
    a, b = full.finalize(), restored.finalize()
    assert torch.equal(a.current.sum, b.current.sum) and torch.equal(a.previous.max, b.previous.max)
    with pytest.raises(ValueError):
        TokenTableAccumulator("m", V, N_ALL, [0], labels).merge(full)


def test_float32_kernel_close_to_float64(data):
    tokens, acts, keep, labels = data
    t64 = _run(tokens, acts, keep, labels).finalize()
    acc = TokenTableAccumulator("m", V, N_ALL, None, labels, compute_dtype=torch.float32)
    for b in iter_array_batches("m", tokens, acts, keep, 2):
        acc.update(b)
    t32 = acc.finalize()
    torch.testing.assert_close(t32.var, t64.var, rtol=1e-5, atol=0)
    torch.testing.assert_close(t32.current.sum, t64.current.sum, rtol=1e-5, atol=1e-5)


def test_memory_budget_refuses_and_tiles():
    need = token_table_bytes(50_000, 100)
    assert need == 2 * 50_000 * 20 * 100
    with pytest.raises(UserError, match="memory budget"):
        TokenTableAccumulator("m", 50_000, 100, memory_budget_bytes=need - 1)
    tiles = plan_neuron_tiles(50_000, 100, need // 3)
    assert len(tiles) == 4 and tiles[0] == slice(0, 25) and tiles[-1].stop == 100
    with pytest.raises(UserError, match="raise --max-memory"):
        plan_neuron_tiles(50_000, 100, 10)
