"""No import cycle inside the package, counting every import the source names.

The walk is over the source (``ast``), not over what Python happens to execute, so it sees
imports under ``if TYPE_CHECKING:`` and inside functions too: a cycle hidden behind either is
still a cycle between the modules (issue 10). An edge ``a -> b`` means module ``a`` names
module ``b`` in an import statement: ``from .pkg import name`` is an edge to ``pkg.name`` when
that is a submodule, else to ``pkg`` (whose namespace ``name`` comes from). The implicit
import of a module's parent packages is not an edge (a package importing its own submodules,
and they importing each other, is not a cycle).
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = "tun2proxy"
ROOT = pathlib.Path(__file__).resolve().parent.parent / PACKAGE


def _module_names(root: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every module of the package at ``root`` by dotted name (``tun2proxy.driver.loop``)."""
    out: dict[str, pathlib.Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    """The absolute name of a (possibly relative) ``from`` target seen in ``module``."""
    if level == 0:
        return target or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, target] if target else base)


def import_graph(root: pathlib.Path = ROOT) -> dict[str, set[str]]:
    """Module -> the package modules it imports (anywhere in its source)."""
    modules = _module_names(root)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in modules:
                        edges.add(sub)  # a submodule: the package's own names are not used
                    elif base in modules:
                        edges.add(base)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
    return sorted(found)


def _a_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete cycle through the first module of ``component`` (for the message)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                return [*paths[v], start]
            if w not in paths:
                paths[w] = [*paths[v], w]
                todo.append(w)
    return component  # pragma: no cover - a component always has a cycle through start


def test_the_walk_sees_the_package() -> None:
    graph = import_graph()
    assert len(graph) > 50
    assert "tun2proxy.stack.netstack" in graph["tun2proxy.stack"]
    # A relative import two levels up resolves.
    assert "tun2proxy.errors" in graph["tun2proxy.stack.netstack"]


def test_the_walk_sees_type_checking_and_function_level_imports(tmp_path: pathlib.Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import A\n",
        "a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\n",
        "b.py": "from .a import A\nfrom . import sub\n",
        "c.py": "def f():\n    from .sub import d\n",
        "sub/__init__.py": "",
        "sub/d.py": "import pkg.c\n",
        "e.py": "from .sub.d import x\nfrom .. import elsewhere\nfrom . import A, c\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.a", "pkg.sub"}
    assert graph["pkg.c"] == {"pkg.sub.d"}
    assert graph["pkg.e"] == {"pkg", "pkg.c", "pkg.sub.d"}
    assert find_cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.c", "pkg.sub.d"]]
    assert _a_cycle(graph, ["pkg.a", "pkg.b"]) == ["pkg.a", "pkg.b", "pkg.a"]


def test_no_import_cycles() -> None:
    graph = import_graph()
    cycles = find_cycles(graph)
    shown = [
        f"  {' -> '.join(_a_cycle(graph, c))}   (all of: {', '.join(c)})" for c in cycles
    ]
    assert not cycles, "import cycles in the package:\n" + "\n".join(shown)
