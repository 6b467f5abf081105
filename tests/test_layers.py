"""The package's import structure: no two files import each other (directly or through others),
and lower layers never import upper ones.

Imports are read from the source (every ``import`` statement, also those inside functions, which
run later but still tie the two files together). An import of a module's own ancestor package
(``import busseg`` for the version, a registry importing its package so that every model
registers) is not counted: the package's ``__init__`` is the package itself, not a peer file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import busseg

PACKAGE_DIR = Path(busseg.__file__).parent

#: the layers, bottom first: a folder may import its own files and folders of lower layers.
LAYERS = [
    {"errors", "console"},
    {"fileio", "schema"},
    {"data", "models", "metrics", "postprocess", "viz"},
    {"losses"},
    {"inference"},
    {"engine"},
    {"report"},
    {"demo"},
    {"serve"},
    {"cli"},
    {"__main__"},
]


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = ("busseg", *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                # `from pkg import sub` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and not name.startswith(target + "."):
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _folder(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root (its public facade)


def test_no_import_cycles_between_files():
    cycles = _cycles(_import_graph())
    assert not cycles, "files importing each other (directly or through others): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_lower_layers_never_import_upper_ones():
    rank = {folder: level for level, folders in enumerate(LAYERS) for folder in folders}
    graph = _import_graph()
    folders = {_folder(m) for m in graph} - {None}
    assert folders <= set(rank), f"folders without a layer: {sorted(folders - set(rank))}"
    wrong = []
    for module, targets in graph.items():
        source = _folder(module)
        for target in targets:
            dest = _folder(target)
            if source is None or dest is None or source == dest:
                continue
            if rank[dest] >= rank[source]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports of the same or an upper layer: " + "; ".join(sorted(wrong))


def test_the_cycle_finder_sees_circles():
    graph = {"busseg.engine.a": {"busseg.engine.b"}, "busseg.engine.b": {"busseg.engine.c"},
             "busseg.engine.c": {"busseg.engine.a", "busseg.fileio"}, "busseg.fileio": set()}
    assert _cycles(graph) == [["busseg.engine.a", "busseg.engine.b", "busseg.engine.c"]]
    assert _cycles({**graph, "busseg.engine.c": {"busseg.fileio"}}) == []
