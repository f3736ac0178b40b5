"""No import cycles in ``chatctl/``: each module can be read (and imported) after the ones
it uses, so a new piece has one obvious place and nothing works only by import order.

Counted: every ``import``/``from … import`` of a chatctl module, at module level and inside
functions (a lazy import is still a dependency: hiding one in a function is not how a
cycle is broken). Not counted: ``if TYPE_CHECKING:`` blocks (annotations only), and the
packages above a module (every import of a submodule imports them first).
Where both sides need a piece, it moves to a module of its own (``server.decode`` for
edge, streams and bulk; ``server.hub_pg`` for the PostgreSQL notification format)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "chatctl"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    """The chatctl modules ``path`` (the module ``name``) imports, outside
    ``if TYPE_CHECKING:``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for orelse in child.orelse:
                    visit(orelse)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in child.names:
                    # ``from chatctl.server import edge`` imports the module ``edge``;
                    # ``from chatctl.server.edge import Edge``, the module ``edge``. (A
                    # submodule's packages are imported before it, by everyone: not counted.)
                    submodule = f"{base}.{alias.name}"
                    found.add(submodule if submodule in modules else base)
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return {m for m in found if m in modules and m != name}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    names = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    return {name: imports_of(path, name, set(names)) for name, path in names.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of modules that import each other, directly or not (Tarjan's strongly
    connected components of more than one module, or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while (member := stack.pop()) != node:
                group.append(member)
            group.append(node)
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(group: list[str], graph: dict[str, set[str]]) -> str:
    edges = [f"{a} -> {b}" for a in group for b in sorted(graph[a]) if b in group]
    return ", ".join(edges)


def test_chatctl_has_no_import_cycle() -> None:
    graph = import_graph()
    assert graph.get("chatctl.server.edge"), "nothing parsed"
    found = cycles(graph)
    assert not found, "import cycles in chatctl/: " + "; ".join(
        describe(group, graph) for group in found
    )


def test_the_check_sees_cycles_through_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a cycle made by an import inside a function, or by a relative
    one, is found; one through ``if TYPE_CHECKING:`` is not a cycle."""
    pkg = tmp_path / "chatctl"
    (pkg / "server").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "server" / "__init__.py").write_text("")
    (pkg / "server" / "a.py").write_text("from chatctl.server import b\n")
    (pkg / "server" / "b.py").write_text("def f():\n    from . import a\n")
    (pkg / "server" / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import x\n"
    )
    (pkg / "server" / "d.py").write_text("from .c import y\n")
    (pkg / "server" / "e.py").write_text("from chatctl.server.d import z\n")
    (pkg / "server" / "a.py").write_text("from chatctl.server import b\nimport chatctl.server.e\n")
    graph = import_graph(pkg)
    assert graph["chatctl.server.b"] == {"chatctl.server.a"}
    assert graph["chatctl.server.c"] == set()
    assert cycles(graph) == [["chatctl.server.a", "chatctl.server.b"]]
