"""The report's CSS/JS assets must ship in the wheel (an editable install hides their absence)."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest

from universal_neurons.report.html import asset

ROOT = Path(__file__).resolve().parents[3]
ASSETS = ("report.css", "browser.js")


@pytest.mark.parametrize("name", ASSETS)
def test_asset_loads(name):
    assert len(asset(name)) > 100


def test_assets_are_package_data():
    tomllib = pytest.importorskip("tomllib")
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not run from a source checkout")
    config = tomllib.loads(pyproject.read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["universal_neurons"]
    for name in ASSETS:
        assert any(fnmatch.fnmatch(f"report/assets/{name}", p) for p in patterns), (
            f"report/assets/{name} is not package data: add \"report/assets/*\" to "
            "[tool.setuptools.package-data] universal_neurons in pyproject.toml")
