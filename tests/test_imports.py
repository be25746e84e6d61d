"""The import graph of our own modules (bench/ and methods/), read from the source with ``ast``:
no import cycles, and only the command line and the executors call the orchestrator.

Imports inside functions count as much as those at the top: a cycle hidden in a function still
ties two modules together, it only fails later.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods")
ORCHESTRATOR = "bench.harness"  # the module that runs a whole `bench run`
ORCHESTRATOR_IMPORTERS = {"bench.cli", "bench.executors"}  # the only modules under bench/ that may import it


def module_files() -> dict[str, Path]:
    """Every module of our packages by dotted name (a package by its own name, for its __init__.py)."""
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported_names(name: str, path: Path) -> set[str]:
    """Every dotted name an ``import`` in the file could mean, relative imports resolved."""
    is_package = path.name == "__init__.py"
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + is_package]
                base = ".".join(anchor + ([base] if base else []))
            names.update(f"{base}.{alias.name}" for alias in node.names)  # `from bench import results`
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports. ``import a.b.c`` and ``from a.b import c`` point at
    the deepest name that is one of our modules: ``from bench.perf import run_perf`` at bench.perf,
    ``from bench.perf import cost`` at bench.perf.cost alone. The parent packages Python initialises
    on the way are left out: a package's __init__.py importing its own submodules, which import
    each other by ``from package import sibling``, is how packages are built, not a cycle."""
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(name, path):
            parts = imported.split(".")
            for end in range(len(parts), 0, -1):
                candidate = ".".join(parts[:end])
                if candidate in modules:
                    targets.add(candidate)
                    break
        graph[name] = targets - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_sees_our_modules_and_their_imports() -> None:
    modules = module_files()
    graph = import_graph(modules)
    assert {"bench.cli", "bench.perf", "bench.perf.measure", "methods", "methods.registry"} <= set(modules)
    assert "bench.perf.measure" in graph["bench.perf.command"]  # a module-level import
    assert "bench.perf.one_pass" in graph["bench.perf.command"]  # an import inside run_perf
    assert "bench.results" in graph["bench.perf.measure"]  # `from bench import results`
    assert "bench.perf.command" in graph["bench.perf"]  # the package's __init__.py


def test_relative_and_function_level_imports_are_read(tmp_path) -> None:
    source = tmp_path / "mod.py"
    source.write_text("from . import sibling\nfrom ..other import thing\n\ndef f():\n    import a.b\n")
    assert imported_names("pkg.sub.mod", source) == {"pkg.sub.sibling", "pkg.other.thing", "a.b"}
    package = tmp_path / "__init__.py"
    package.write_text("from .child import name\n")
    assert imported_names("pkg.sub", package) == {"pkg.sub.child.name"}


def test_no_import_cycle() -> None:
    cycle = find_cycle(import_graph(module_files()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_the_modules_of_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_only_the_cli_and_executors_import_the_orchestrator() -> None:
    graph = import_graph(module_files())
    inside = lambda name: name == ORCHESTRATOR or name.startswith(ORCHESTRATOR + ".")  # noqa: E731
    offenders = sorted(name for name, targets in graph.items() if name.split(".")[0] == "bench" and not inside(name)
                       and name not in ORCHESTRATOR_IMPORTERS and any(inside(t) for t in targets))
    assert offenders == [], f"{', '.join(offenders)} import {ORCHESTRATOR}; only {sorted(ORCHESTRATOR_IMPORTERS)} may"
