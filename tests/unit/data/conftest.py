"""Fixtures for the data-layer tests: tiny tokenizers and documents (no network)."""

from __future__ import annotations

import pytest
from data_helpers import make_documents, train_tokenizer


@pytest.fixture(scope="session")
def documents() -> list[str]:
    return make_documents()


@pytest.fixture(scope="session")
def tokenizer_pair(documents):
    return train_tokenizer(make_documents(300, seed=1), vocab_size=300)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_pair):
    return tokenizer_pair[0]


@pytest.fixture(scope="session")
def raw_tokenizer(tokenizer_pair):
    """The underlying ``tokenizers.Tokenizer``: an oracle independent of transformers."""
    return tokenizer_pair[1]


@pytest.fixture(scope="session")
def other_tokenizer():
    return train_tokenizer(make_documents(300, seed=2), vocab_size=280)[0]
