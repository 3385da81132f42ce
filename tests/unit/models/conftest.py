"""Fixtures for the models/ tests: offline hub, fixed seed, a saved tiny model folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_builders import save_model_folder


@pytest.fixture(autouse=True)
def _offline_and_seeded(monkeypatch):
    """Hub offline (fail fast instead of retrying for 20 s) and a fixed torch seed."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def model_folder(tmp_path_factory) -> Path:
    """One saved tiny GPT-2 folder shared by the loading tests (read-only)."""
    return save_model_folder(tmp_path_factory.mktemp("models") / "tiny-local", "gpt2")
