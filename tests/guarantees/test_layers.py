"""The package's imports form no cycle, between modules or between packages, and every import goes down
the layers: foundation modules, then ``models`` and ``data`` (neither imports the other), ``evaluation``,
``inference``, ``training``, ``commands``, and the command line on top."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import ROOT

PACKAGE = ROOT / "medmae"
LAYERS = {
    "models": 1,
    "data": 1,
    "evaluation": 2,
    "inference": 3,
    "training": 4,
    "commands": 5,
    "cli": 6,
    "__main__": 7,
}
FOUNDATION = 0  # every other top-level module: errors, files, tasks, config, seeds, devices, checkpoint, medmae


def module_sources(package: Path = PACKAGE) -> dict[str, str]:
    """Dotted module name -> source, for every file of the package."""
    sources = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        sources[name] = path.read_text(encoding="utf-8")
    return sources


def imports(sources: dict[str, str]) -> dict[str, set[str]]:
    """Module -> the package modules it imports, at any depth of its code (function-level imports too)."""
    graph = {}
    for name, source in sources.items():
        found = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            found |= {_owner(target, sources) for target in targets if target.split(".")[0] == "medmae"}
        graph[name] = found - {name, None}
    return graph


def _owner(target: str, sources: dict[str, str]) -> str | None:
    """The module that ``target`` (a module, or a name inside one) belongs to."""
    while target and target not in sources:
        target = target.rpartition(".")[0]
    return target or None


def unit(module: str) -> str:
    """The package a module belongs to for the layer rule: ``medmae.models.mae`` -> ``models``; every
    top-level module but the command line is one foundation unit."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "foundation"


def layer(module: str) -> int:
    return LAYERS.get(unit(module), FOUNDATION)


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt, [*path, nxt])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same imports between packages (``models``, ``training``, ..., ``foundation``)."""
    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    return packages


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import that does not go to a lower layer (or stay inside its own package)."""
    return sorted(
        f"{module} imports {target}"
        for module, targets in graph.items()
        for target in targets
        if unit(target) != unit(module) and layer(target) >= layer(module)
    )


def test_no_module_imports_itself_back():
    assert cycle(imports(module_sources())) is None


def test_no_package_imports_itself_back():
    assert cycle(package_graph(imports(module_sources()))) is None


def test_every_import_goes_down_the_layers():
    assert upward_imports(imports(module_sources())) == []


def test_every_package_is_placed_in_a_layer():
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert packages == {name for name in LAYERS if name not in ("cli", "__main__")}


@pytest.mark.parametrize(
    "sources, problem",
    [
        ({"medmae.a": "import medmae.b", "medmae.b": "from medmae.a import x"}, "cycle"),
        ({"medmae.models.m": "from medmae.training.loop import fit", "medmae.training.loop": ""}, "upward"),
        ({"medmae.models.m": "def f():\n    from medmae.data import d", "medmae.data": ""}, "upward"),
        ({"medmae.data.x": "from medmae.models.y import z", "medmae.models.y": "from medmae.data.x import w"}, "both"),
    ],
)
def test_the_checks_find_a_reintroduced_cycle_or_upward_import(sources, problem):
    graph = imports(sources)
    assert (cycle(graph) is not None) == (problem in ("cycle", "both"))
    assert bool(upward_imports(graph)) == (problem in ("upward", "both"))
