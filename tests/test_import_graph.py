"""The package's import graph has no circle (issue 14), read from the source with ``ast``.

Every import statement counts, wherever it stands: at module level, inside a function (lazy
imports) and under ``if TYPE_CHECKING:``. A circle through type-only imports still means two
modules that cannot be understood (or moved) one without the other, which is what this guards.
An import of ``a.b.c`` that names a module of the package counts as an edge to that module; an
import of a name defined in a package (``from a.b import X``) counts as an edge to ``a.b``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "mnist_mlops"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imported(module: str, path: Path, node: ast.AST) -> list[str]:
    """Dotted names an import statement may refer to (modules, or modules plus a member)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:  # relative: from the module's package, one level up per extra dot
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        package = package[: len(package) - (node.level - 1)]
        base = ".".join([*package, *([node.module] if node.module else [])])
    else:
        base = node.module or ""
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (every import statement in its source)."""
    paths = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for module, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _imported(module, path, node):
                while name and name not in paths:  # longest prefix that is one of our modules
                    name = name.rpartition(".")[0]
                if name and name != module:
                    graph[module].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of the graph (its modules in order, first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_graph_covers_the_whole_package() -> None:
    graph = import_graph()
    files = list(PACKAGE_ROOT.rglob("*.py"))
    assert len(graph) == len(files) > 50
    assert "mnist_mlops.training.trainer" in graph
    # edges are found at every place an import can stand
    assert "mnist_mlops.training.loop" in graph["mnist_mlops.training.backends.local"]
    assert "mnist_mlops.training.module" in graph["mnist_mlops.training.loop"]  # TYPE_CHECKING
    assert "mnist_mlops.training.streaming" in graph["mnist_mlops.train"]  # inside a function


def test_the_package_has_no_import_circle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize(
    ("edges", "circle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": set(), "c": {"c2"}, "c2": {"c"}}, ["c", "c2", "c"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_find_cycle_finds_circles_and_only_circles(
    edges: dict[str, set[str]], circle: list[str] | None
) -> None:
    assert find_cycle(edges) == circle


def test_relative_and_type_only_imports_make_edges(tmp_path: Path) -> None:
    """The circle trainer <-> callbacks of issue 14 went through TYPE_CHECKING imports."""
    package = tmp_path / "mnist_mlops"
    (package / "training").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "training" / "__init__.py").write_text("")
    (package / "training" / "trainer.py").write_text("from .callbacks import Callback\n")
    (package / "training" / "callbacks.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from mnist_mlops.training.trainer import Trainer\n"
    )
    cycle = find_cycle(import_graph(package))
    assert cycle is not None and set(cycle) == {
        "mnist_mlops.training.trainer",
        "mnist_mlops.training.callbacks",
    }


def test_the_sweeper_plugin_imports_nothing_from_training() -> None:
    """The pruning callback is reached through config (``_target_``), never by an import: Hydra
    re-executes plugin modules when it scans ``hydra_plugins``, and a sweep must not need the
    training package to be importable in the sweeper's process."""
    plugin_root = PACKAGE_ROOT.parent / "hydra_plugins"
    plugins = list(plugin_root.rglob("*.py"))
    assert plugins
    for path in plugins:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _imported("hydra_plugins.x", path, node):
                assert not name.startswith("mnist_mlops.training"), f"{path}: imports {name}"
