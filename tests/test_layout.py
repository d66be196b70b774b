"""The house's rules, read from the code's own imports (every import that runs, lazy ones inside
functions too): no import cycles, the core imports no backend, and a production plugin reaches
neither an emulator nor another plugin. For cycles, ``if TYPE_CHECKING:`` imports count too:
they never run, but two modules that name each other's types are still one circle to read."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("raydog_core", "raydog_backends")
SHARED = "raydog_backends.process_nodes"
"""Machinery for nodes that are processes on this machine: a library, not a plugin."""


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = module_files()


def imported(module: str, path: Path, type_only: bool = False) -> Iterator[str]:
    """The project's modules that ``module`` imports anywhere in its text: the imports that
    run, and with ``type_only`` those under ``if TYPE_CHECKING:`` too."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree) if type_only else _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a.b import c` imports the module a.b.c if there is one, else a name of a.b.
            names = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                for alias in node.names
            ]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` except what is under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for other in node.orelse:
                yield other
                yield from _runtime_nodes(other)
            continue
        yield node
        yield from _runtime_nodes(node)


GRAPH = {module: set(imported(module, path)) for module, path in MODULES.items()}
WITH_TYPES = {
    module: set(imported(module, path, type_only=True)) for module, path in MODULES.items()
}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(GRAPH[module])
    return seen


def cycle_through(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A shortest import path from ``start`` back to itself, if there is one."""
    paths = {target: [start, target] for target in graph[start]}
    todo = list(paths)
    while todo:
        module = todo.pop(0)
        if module == start:
            return paths[module]
        for target in graph[module]:
            if target not in paths:
                paths[target] = [*paths[module], target]
                todo.append(target)
    return None


def test_the_graph_sees_the_imports() -> None:
    """A test that reads imports must read them: known edges are there, a lazy one (inside a
    function) included, and a type-only one only where those count."""
    assert "raydog_core.interfaces" in GRAPH["raydog_backends.local.backend"]
    assert "raydog_backends.process_nodes.processes" in GRAPH["raydog_backends.local.backend"]
    assert "raydog_core.simulation" in GRAPH["raydog_core.cli"]
    typed = "raydog_backends.keyvalue.valkey_store"
    assert typed in WITH_TYPES["raydog_backends.keyvalue"] - GRAPH["raydog_backends.keyvalue"]


@pytest.mark.parametrize("graph", [GRAPH, WITH_TYPES], ids=["run", "with-types"])
def test_no_import_cycles(graph: dict[str, set[str]]) -> None:
    cycles = {" -> ".join(path) for m in sorted(graph) if (path := cycle_through(m, graph))}
    assert not cycles, "import cycles:\n" + "\n".join(sorted(cycles))


def test_the_core_imports_no_backend() -> None:
    reaches = {
        module: sorted(m for m in reachable(module) if m.startswith("raydog_backends"))
        for module in GRAPH
        if module.startswith("raydog_core")
    }
    assert {module: found for module, found in reaches.items() if found} == {}


def plugin_modules() -> dict[str, str]:
    """Entry point name -> module, for RayDog's own plugins that are not test products."""
    found = {}
    for group in ("raydog.compute", "raydog.tag_stores", "raydog.transports"):
        for entry in metadata.entry_points(group=group):
            if entry.dist is not None and entry.dist.name == "raydog":
                module = entry.value.split(":")[0]
                if "emulat" not in module:
                    found[f"{group}:{entry.name}"] = module
    return found


def plugin_home(module: str) -> str:
    """The package (or module) directly under ``raydog_backends`` that holds ``module``."""
    return ".".join(module.split(".")[:2])


@pytest.mark.parametrize(("plugin", "module"), sorted(plugin_modules().items()))
def test_a_production_plugin_reaches_no_emulator_and_no_other_plugin(
    plugin: str, module: str
) -> None:
    home = plugin_home(module)
    foreign = sorted(
        found
        for found in reachable(module)
        if (found.startswith("raydog_backends.") and plugin_home(found) not in (home, SHARED))
        or "emulat" in found
    )
    assert foreign == [], f"{plugin} ({module}) imports {foreign}"


def test_the_yellowdog_plugin_needs_no_local_process_machinery() -> None:
    """A YellowDog user installs neither Linux ``/proc`` machinery nor a test server."""
    foreign = sorted(
        m
        for m in reachable("raydog_backends.yellowdog")
        if m.startswith("raydog_backends.") and plugin_home(m) != "raydog_backends.yellowdog"
    )
    assert foreign == []


def test_benchmarks_import_nothing_from_the_tests() -> None:
    """What benchmarks share with tests lives in the package (``raydog_core.testing``, a
    backend's ``testing`` module), so a benchmark runs without the test suite."""
    found = {}
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found[path.name] = found.get(path.name, []) + [
                n for n in names if n == "tests" or n.startswith("tests.")
            ]
    assert {name: imports for name, imports in found.items() if imports} == {}
