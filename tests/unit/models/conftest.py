"""Fixtures for the models/ tests: a saved tiny model folder (the hub is offline and every
test seeded by the root conftest)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import save_model_folder


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> Path:
    """One saved tiny GPT-2 folder shared by the loading tests (read-only)."""
    return save_model_folder(tmp_path_factory.mktemp("models") / "tiny-local", "gpt2")
