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


# ----------------------------------------------------------------------------- whole vocabulary
V_BIG, N_BIG = 600, 5  # a vocabulary far past the old cut (179 tokens at GPT-2-small shape)


@pytest.fixture
def big():
    """Zipf-like token stream over ``V_BIG`` ids (many seen once or never) with activations
    whose mean depends on the token."""
    rng = np.random.default_rng(5)
    n_seq, n_ctx = 40, 32
    p = 1.0 / np.arange(1, V_BIG + 1)
    tokens = rng.choice(V_BIG, size=(n_seq, n_ctx), p=p / p.sum())
    offset = rng.normal(size=(V_BIG, N_BIG)) + 2.0
    acts = (offset[tokens] + rng.normal(size=(n_seq, n_ctx, N_BIG))).astype(np.float32)
    keep = rng.random((n_seq, n_ctx)) > 0.1
    return tokens, acts, keep


def _vocab_oracle(tokens, acts, keep):
    """``(count [V], mean [V, N])`` in float64 with numpy (NaN for unseen ids)."""
    t, a = tokens[keep], acts[keep].astype(np.float64)
    count = np.bincount(t, minlength=V_BIG)
    sums = np.zeros((V_BIG, a.shape[1]))
    np.add.at(sums, t, a)
    with np.errstate(invalid="ignore"):
        return count, sums / count[:, None]


def _vocab_run(tokens, acts, keep, seqs=slice(None), **kw):
    from universal_neurons.engine.vocab_means import VocabMeans

    acc = VocabMeans("m", V_BIG, N_BIG, **kw)
    off = seqs.start or 0
    for b in iter_array_batches("m", tokens[seqs], acts[seqs], keep[seqs], 4, off):
        acc.update(b)
    return acc


def _check_top(ids, vals, count, mean, k, min_count):
    """Our per-neuron top-k against the oracle, robust to near-ties."""
    m = np.where(count[:, None] >= min_count, mean, -np.inf)
    expect = -np.sort(-m, axis=0)[:k].T  # [N, k]
    np.testing.assert_allclose(vals, np.where(np.isfinite(expect), expect, np.nan),
                               rtol=1e-6, atol=1e-6)
    for n in range(ids.shape[0]):
        got = ids[n][ids[n] >= 0]
        assert np.all(count[got] >= min_count)
        np.testing.assert_allclose(mean[got, n], vals[n, :len(got)], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("spill", [False, True])
def test_vocab_means_equal_numpy_oracle(big, tmp_path, spill):
    """Every id of a 600-token vocabulary, through a 16-row staging buffer (many flushes),
    stored in RAM or in a memory-mapped file under ``tmp_path``."""
    tokens, acts, keep = big
    acc = _vocab_run(tokens, acts, keep, buffer_bytes=16 * 8 * N_BIG,
                     store_ram_bytes=0 if spill else 1 << 30, spill_dir=str(tmp_path))
    assert acc.on_disk == spill
    assert any(tmp_path.iterdir()) == spill
    count, mean = _vocab_oracle(tokens, acts, keep)
    assert (count > 0).sum() > 179 and (count == 0).any()  # past the old cut; some unseen
    assert np.array_equal(acc.count.numpy(), count)
    tol = 1e-6 if spill else 1e-12  # float32 store on disk; float64 in RAM (it fits)
    np.testing.assert_allclose(acc.means(slice(None)).numpy(), mean, rtol=tol, atol=tol)
    for rows in (None, 7, 1000):  # sqrt(V / k) rows per block, a ragged tail, one block
        ids, vals = acc.top_k(4, min_count=3, block_rows=rows)
        _check_top(ids.numpy(), vals.numpy(), count, mean, 4, 3)
    assert acc.nbytes < 16 * 8 * N_BIG + 8 * 3 * V_BIG + 2000 if spill else True


def test_vocab_means_merge_and_checkpoint_equal_one_pass(big, tmp_path):
    tokens, acts, keep = big
    kw = dict(buffer_bytes=10 * 8 * N_BIG, store_ram_bytes=0, spill_dir=str(tmp_path))
    one = _vocab_run(tokens, acts, keep, **kw)
    a = _vocab_run(tokens, acts, keep, seqs=slice(0, 25), **kw)
    b = _vocab_run(tokens, acts, keep, seqs=slice(25, None), **kw)
    a.merge(b)
    from universal_neurons.engine.vocab_means import VocabMeans

    c = VocabMeans("m", V_BIG, N_BIG, **kw)
    torch.save(a.state_dict(), tmp_path / "ck.pt")
    c.load_state_dict(torch.load(tmp_path / "ck.pt", weights_only=True))
    for acc in (a, c):
        assert torch.equal(acc.count, one.count)
        torch.testing.assert_close(acc.means(slice(None)), one.means(slice(None)),
                                   rtol=1e-6, atol=1e-6, equal_nan=True)


def test_activation_stats_keep_every_token(big, tmp_path):
    """ActivationStats with the whole vocabulary: counts of every id and per-neuron top
    tokens equal the oracle; frequent ids come from the exact float64 table."""
    from universal_neurons.engine.activation_stats import ActivationStats

    tokens, acts, keep = big
    frequent = np.argsort(-np.bincount(tokens[keep], minlength=V_BIG), kind="stable")[:20]
    st = ActivationStats("m", 1, N_BIG, token_ids=frequent, vocab_size=V_BIG, vocab_top_k=6,
                         vocab_min_count=2, vocab_buffer_bytes=8 * 8 * N_BIG, vocab_ram_bytes=0,
                         spill_dir=str(tmp_path))
    for b in iter_array_batches("m", tokens, acts, keep, 4):
        b.acts["m"]["pre"] = b.acts["m"]["post"]
        st.update(b)
    res = st.finalize()
    count, mean = _vocab_oracle(tokens, acts, keep)
    assert np.array_equal(res.vocab_token_count, count)
    assert res.token_top_ids.shape == (1, N_BIG, 6) and res.token_top_ids.dtype == np.int32
    _check_top(res.token_top_ids[0], res.token_top_mean[0], count, mean, 6, 2)
    assert np.isin(res.token_top_ids, frequent).any()  # frequent ids compete too
    assert not st.vocab.store[torch.as_tensor(frequent)].any()  # ... from the exact table
    path = tmp_path / "r.safetensors"
    res.save(path)
    back = type(res).load(path)
    assert np.array_equal(back.token_top_ids, res.token_top_ids)


def test_activation_stats_vocab_table_is_never_partial(big):
    """Merging with a stats object lacking the table raises; resuming from a checkpoint
    without it turns it off instead of missing the earlier tokens."""
    from universal_neurons.engine.activation_stats import ActivationStats

    tokens, acts, keep = big

    def fed(**kw):
        st = ActivationStats("m", 1, N_BIG, **kw)
        for b in iter_array_batches("m", tokens[:8], acts[:8], keep[:8], 4):
            b.acts["m"]["pre"] = b.acts["m"]["post"]
            st.update(b)
        return st

    with_vocab, without = fed(vocab_size=V_BIG), fed()
    with pytest.raises(ValueError, match="whole-vocabulary"):
        with_vocab.merge(without)
    resumed = ActivationStats("m", 1, N_BIG, vocab_size=V_BIG)
    resumed.load_state_dict(without.state_dict())
    assert resumed.vocab is None and resumed.finalize().token_top_ids.size == 0
