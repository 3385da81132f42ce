"""The bundled suite: loads offline, five genuinely different models that learned the corpus."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from universal_neurons.models.registry import SUITES, bundled_member_path, is_bundled_built

MEMBERS = SUITES["tiny-gpt2"]
pytestmark = pytest.mark.skipif(not is_bundled_built(), reason="bundled suite not built")


@pytest.fixture(scope="module")
def models():
    from universal_neurons.models.loading import load_model

    load_model(MEMBERS[0])  # warm-up: the first load pays for importing transformers
    out = {}
    for name in MEMBERS:
        t0 = time.perf_counter()
        out[name] = load_model(name)
        out[name].load_seconds = time.perf_counter() - t0
    return out


def test_members_load_offline_and_fast(models):
    assert list(MEMBERS) == [f"tiny-gpt2-{c}" for c in "abcde"]
    for name, m in models.items():
        assert m.adapter.n_layers >= 4 and m.adapter.d_mlp >= 512
        # A generous bound for a loaded CI machine; typically ~0.1-0.2 s.
        assert m.load_seconds < 5, (name, m.load_seconds)


def test_cards_record_distinct_seeds_and_close_losses():
    cards = [json.loads((bundled_member_path(n) / "card.json").read_text()) for n in MEMBERS]
    assert len({c["seed"] for c in cards}) == len(cards)
    losses = [c["test_loss"] for c in cards]
    assert (max(losses) - min(losses)) / min(losses) < 0.05


def test_seeds_differ_and_learned_the_corpus(models):
    from universal_neurons.data.bundled import bundled_corpus_path, read_jsonl_xz

    a, b = models["tiny-gpt2-a"], models["tiny-gpt2-b"]
    wa = a.hf_model.transformer.h[0].mlp.c_fc.weight
    wb = b.hf_model.transformer.h[0].mlp.c_fc.weight
    assert not torch.allclose(wa, wb)
    tok = a.tokenizer
    texts = []
    for t in read_jsonl_xz(bundled_corpus_path("test")):
        texts.append(t)
        if sum(map(len, texts)) > 40_000:
            break
    ids = [i for t in texts for i in [tok.bos_token_id] + tok(t)["input_ids"]]
    n_ctx = 128
    x = torch.tensor(ids[: (len(ids) // n_ctx) * n_ctx]).view(-1, n_ctx)
    x[:, 0] = tok.bos_token_id
    with torch.no_grad():
        loss = float(a.hf_model(input_ids=x, labels=x).loss)
        acts = [m.adapter.capture(x)["post"][0].reshape(-1, m.adapter.d_mlp).double().numpy()
                for m in (a, b)]
    counts = np.bincount(x.flatten().numpy(), minlength=len(tok)) + 1.0
    p = counts / counts.sum()
    unigram_entropy = float(-(p * np.log(p)).sum())
    assert loss < unigram_entropy - 1.0, (loss, unigram_entropy)
    # Neuron i of seed a vs neuron i of seed b: no reason to align, so far from 1.
    xa, xb = (v - v.mean(0) for v in acts)
    denom = np.sqrt((xa**2).sum(0) * (xb**2).sum(0))
    same_index = (xa * xb).sum(0) / np.where(denom > 0, denom, np.inf)
    assert np.median(np.abs(same_index)) < 0.3
