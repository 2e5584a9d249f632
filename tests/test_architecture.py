"""The package's shape: data flows one way (server -> engine -> inputs/models ->
pooling -> config -> tasks), with no import cycles and no import from a lower layer
to a higher one. Imports under ``TYPE_CHECKING`` are for annotations and do not count."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import cenote

PACKAGE = Path(cenote.__file__).parent

# Higher layers may import lower ones (and their own), never the other way.
LAYERS = {
    "cenote": 9, "cenote.__main__": 9, "cenote.cli": 8, "cenote.arguments": 8,
    "cenote.batch": 8, "cenote.launch": 8, "cenote.integrations": 8,
    "cenote.server": 7, "cenote.llm": 7,
    "cenote.engine": 6,
    "cenote.inputs": 5, "cenote.models": 5,
    "cenote.pooling": 4, "cenote.outputs": 4,
    "cenote.config": 3, "cenote.compat": 3,
    "cenote.params": 2,
    "cenote.tasks": 1, "cenote.machine": 1, "cenote.version": 1, "cenote.exceptions": 1,
}
# Modules that may be long, and why.
LONG_MODULES = {}
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> int:
    while name not in LAYERS:
        name = name.rpartition(".")[0]
    return LAYERS[name]


def runtime_imports(path: Path) -> set[str]:
    """The cenote modules ``path`` imports at run time (anywhere but TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for node in ast.walk(tree)
               if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for node in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "cenote" and _exists(n))
    return found


def _exists(name: str) -> bool:
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: runtime_imports(path) - {name} for name, path in MODULES.items()}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_only_its_own_layer_or_lower_ones(name):
    higher = sorted(dep for dep in GRAPH[name] if layer_of(dep) > layer_of(name))
    assert not higher, f"{name} (layer {layer_of(name)}) imports higher layers: {higher}"


def test_no_import_cycles():
    # Packages import their submodules by design; a cycle through modules is a defect.
    graph = {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in GRAPH.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_readable(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES or name in LONG_MODULES, (
        f"{name} has {lines} lines; split it, or say in LONG_MODULES why it may not be")
