"""Fixtures for the engine tests: a tiny random GPT-2 suite and token datasets, built once."""

from __future__ import annotations

import pytest
import torch
from correlate_helpers import make_dataset, make_model, make_tokenizer


@pytest.fixture(scope="session")
def tiny_suite(tmp_path_factory):
    """Three 2-layer GPT-2 folders (d_mlp 64) sharing a tokenizer, and a dataset; b and c are
    noisy permuted copies of a, so some neurons are universal and others not."""
    root = tmp_path_factory.mktemp("tiny-suite")
    tok = make_tokenizer(root / "tokenizer")
    a = make_model(root / "ma", tok, seed=0)
    b = make_model(root / "mb", tok, seed=1, base=a, noise=0.1)
    c = make_model(root / "mc", tok, seed=2, base=a, noise=0.2)
    models = [str(a), str(b), str(c)]
    ds = make_dataset(root / "tokens", tok, n_ctx=32, tokens=32 * 48)
    return {"root": root, "tokenizer": tok, "models": models, "dataset": str(ds.path)}


@pytest.fixture(scope="session")
def other_tokenizer_suite(tmp_path_factory):
    """A model and a dataset made with a different tokenizer."""
    root = tmp_path_factory.mktemp("other-tok")
    tok = make_tokenizer(root / "tokenizer", seed=7, vocab_size=530)
    model = str(make_model(root / "mx", tok, seed=9))
    ds = make_dataset(root / "tokens", tok, n_ctx=32, tokens=32 * 8, seed=3)
    return {"model": model, "dataset": str(ds.path), "tokenizer": tok}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a small shared machine, spinning thread pools cost more than they
    give on these tiny tensors."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
