"""The data flow between layers: engine/ is pure, stages/ sit above analysis/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import universal_neurons

ROOT = Path(universal_neurons.__file__).parent
UPPER = ("analysis", "stages", "report", "commands", "pipeline", "cli")


def imported_modules(path: Path) -> set[str]:
    """Every ``universal_neurons`` module a file imports (at module level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return {m for m in out if m.startswith("universal_neurons.")}


@pytest.mark.parametrize("path", sorted((ROOT / "engine").glob("*.py")), ids=lambda p: p.name)
def test_engine_imports_no_upper_layer(path):
    upper = {m for m in imported_modules(path) if m.split(".")[1] in UPPER}
    assert not upper, f"engine/{path.name} imports {sorted(upper)}"


def test_the_import_scan_sees_function_level_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def g():\n    from universal_neurons.analysis.universality import x\n")
    assert "universal_neurons.analysis.universality" in imported_modules(f)
