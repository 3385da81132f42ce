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


ANALYSIS_FORBIDDEN = ("stages", "report", "commands", "pipeline", "cli", "models.loading")
ANALYSIS_WRITERS = {"families.py", "features.py", "interventions.py", "neuron_table.py",
                    "universality.py", "weights.py"}
"""analysis/ modules that still write their own results into the run directory (through
``rundir``) or open a dataset; every other analysis module is pure (docs/ARCHITECTURE.md)."""


@pytest.mark.parametrize("path", sorted((ROOT / "analysis").glob("*.py")), ids=lambda p: p.name)
def test_analysis_loads_no_model_and_draws_nothing(path):
    mods = imported_modules(path)
    upper = {m for m in mods if any(m == f"universal_neurons.{f}" or
                                    m.startswith(f"universal_neurons.{f}.")
                                    for f in ANALYSIS_FORBIDDEN)}
    assert not upper, f"analysis/{path.name} imports {sorted(upper)}"
    io = {m for m in mods if m.startswith(("universal_neurons.rundir",
                                           "universal_neurons.data.dataset"))}
    assert not io or path.name in ANALYSIS_WRITERS, f"analysis/{path.name} imports {sorted(io)}"


def _package_imports() -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere except under ``TYPE_CHECKING``."""
    names = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph = {}
    for name, p in names.items():
        tree = ast.parse(p.read_text())
        hidden = {id(x) for n in ast.walk(tree) if isinstance(n, ast.If)
                  and "TYPE_CHECKING" in ast.dump(n.test) for x in ast.walk(n)}
        deps = set()
        for n in ast.walk(tree):
            if id(n) not in hidden and isinstance(n, ast.ImportFrom) and n.module in names:
                deps.add(n.module)
                deps.update(f"{n.module}.{a.name}" for a in n.names
                            if f"{n.module}.{a.name}" in names)
        graph[name] = deps - {name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    return next((c for u in sorted(graph) if u not in state and (c := visit(u))), None)


def test_no_import_cycles():
    assert _cycle(_package_imports()) is None
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
