"""No import circle anywhere in the package: every import of a cnn_aliasing module counts, at module level,
inside functions (lazy imports) and under ``TYPE_CHECKING`` alike, read from the source with ``ast``."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import cnn_aliasing

PACKAGE = Path(cnn_aliasing.__file__).parent


def module_names() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that the module ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_module_of_the_package_imports_itself_through_others() -> None:
    known = module_names()
    assert "cnn_aliasing.training.recipes" in known and "cnn_aliasing.report" in known
    graph = {name: imported(name, path, known) for name, path in known.items()}
    assert "cnn_aliasing.training.objectives" in graph["cnn_aliasing.training.recipes"]  # lazy ones count
    assert cycles(graph) == []


# Importing the recipes runs recipes.py alone: the parent packages' __init__ modules are stood in for by
# empty packages (the root's imports the measuring half, the probe among it; training's the loop), so what
# is seen is what recipes.py itself imports. Then looking a recipe up checks it, which needs the registries.
RECIPES_ALONE = """
import importlib.util, sys
from pathlib import Path
for name, folder in (("cnn_aliasing", Path(PACKAGE)), ("cnn_aliasing.training", Path(PACKAGE) / "training")):
    spec = importlib.util.spec_from_file_location(
        name, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    sys.modules[name] = importlib.util.module_from_spec(spec)  # not executed
import cnn_aliasing.training.recipes as recipes
def loaded():
    return sorted({".".join(m.split(".")[:2]) for m in sys.modules if m.startswith("cnn_aliasing.")})
print(loaded())
print(recipes.list_recipes())
recipes.get_recipe("pgd-at")
print(loaded())
"""
REGISTRIES = ["cnn_aliasing.antialias", "cnn_aliasing.attacks", "cnn_aliasing.models", "cnn_aliasing.probe"]


def test_importing_the_recipes_imports_no_registry_and_checks_nothing() -> None:
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    done = subprocess.run(
        [sys.executable, "-c", f"PACKAGE = {str(PACKAGE)!r}\n{RECIPES_ALONE}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    on_import, names, on_lookup = done.stdout.splitlines()
    assert not set(ast.literal_eval(on_import)) & set(REGISTRIES), on_import
    assert "pgd-at" in ast.literal_eval(names)
    assert {"cnn_aliasing.antialias", "cnn_aliasing.models"} <= set(ast.literal_eval(on_lookup))
