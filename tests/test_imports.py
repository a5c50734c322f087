"""The import graph of ``webapp/``: no cycles, and no import hidden inside a function to dodge one.

Read from the source with ``ast`` (nothing is imported): every ``import`` and ``from … import``
at module level and inside functions, except under ``if TYPE_CHECKING:`` (type hints only).
``from package import name`` counts as an import of ``package.name`` when that is a module.

A dependency points down (views → service → engine pieces → models); an import inside a
function is allowed only for the lazy, optional or heavy packages listed in
``LAZY_IMPORTS_ALLOWED``, each with its reason.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = "webapp"
PACKAGE_DIR = ROOT / PACKAGE

# (importing module, imported module) -> why importing it inside a function is right.
LAZY_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {
    ("webapp.console.i18n", "babel.messages.mofile"): "compiling translations is a maintenance command",
    ("webapp.console.i18n", "babel.messages.pofile"): "compiling translations is a maintenance command",
    # Start-up speed (issue 12): heavy packages imported only where they are used.
    ("webapp.schema", "flask_migrate"): "heavy (alembic, Mako, Pygments, every dialect's DDL): only a "
                                        "migration that runs needs it, not every command and web start",
    ("webapp.schema", "flask_migrate.cli"): "heavy (imports flask_migrate): only a `flask db …` sub-command needs it",
    ("webapp.tasks.locks", "redis"): "heavy (its asyncio and observability parts): only REDIS_URL's locks need it",
    ("webapp.accounts.login_counters", "redis"): "heavy: only login counters kept in Redis (REDIS_URL) need it",
    ("webapp.tasks.direct", "psycopg"): "heavy: only PostgreSQL needs psycopg; a SQLite process never loads it",
    ("webapp.tasks.direct", "psycopg.rows"): "with psycopg, on PostgreSQL only",
    ("webapp.tasks.wakeup", "psycopg"): "heavy: only PostgreSQL's LISTEN thread needs psycopg",
    ("webapp.health", "webapp.metrics"): "heavy (prometheus_client): only the /metrics view needs it",
    ("webapp.tasks.consumer", "apscheduler.schedulers.background"): "only a running consumer needs APScheduler, "
                                                                   "not every command that builds the app",
    ("webapp.config", "yaml"): "only an ASYNC_TASK_CONFIG_FILE needs a YAML parser, not every start",
    ("webapp.schedules.setting", "yaml"): "only a schedules file needs a YAML parser, not every start",
}


@dataclass(frozen=True)
class Import:
    """One import statement's target, where it is, and whether it runs inside a function."""

    module: str
    target: str
    line: int
    in_function: bool


def module_name(path: Path) -> str:
    """``webapp/tasks/service.py`` -> ``webapp.tasks.service``; a package's ``__init__`` is the package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package, by name."""
    return {module_name(path): path for path in sorted(PACKAGE_DIR.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, in_function: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Import statements under ``node``, skipping ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _walk(other, in_function)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, in_function
        inside = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _walk(child, inside)


def _resolve(module: str, path: Path, statement: ast.ImportFrom) -> str:
    """The absolute module a ``from`` import names (relative ones resolved against ``module``)."""
    if not statement.level:
        return statement.module or ""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(statement.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{statement.module}" if statement.module else package


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """Every import in ``module``'s source, resolved to module names."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for statement, in_function in _walk(tree, False):
        if isinstance(statement, ast.Import):
            targets = [alias.name for alias in statement.names]
        else:
            base = _resolve(module, path, statement)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in statement.names]
        found.extend(Import(module, target, statement.lineno, in_function) for target in dict.fromkeys(targets))
    return found


def import_graph() -> tuple[dict[str, set[str]], list[Import]]:
    """Edges between the package's own modules, and every import found."""
    known = modules()
    everything = [found for name, path in known.items() for found in imports_of(name, path, set(known))]
    graph: dict[str, set[str]] = {name: set() for name in known}
    for found in everything:
        if found.target in known and found.target != found.module:
            graph[found.module].add(found.target)
    return graph, everything


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def a_path(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """One concrete loop through a cycle's modules, for the failure message."""
    members = set(component)
    start = component[0]
    trail = [start]
    seen = {start}
    while True:
        step = sorted(target for target in graph[trail[-1]] if target in members)
        back = [target for target in step if target == start]
        if back and len(trail) > 1:
            return [*trail, start]
        fresh = [target for target in step if target not in seen]
        if not fresh:
            return [*trail, step[0] if step else start]
        trail.append(fresh[0])
        seen.add(fresh[0])


def test_the_walker_sees_module_and_function_imports_and_skips_type_checking(tmp_path: Path) -> None:
    source = tmp_path / "webapp" / "probe.py"
    source.parent.mkdir()
    source.write_text(
        "from typing import TYPE_CHECKING\nfrom . import sibling\n"
        "if TYPE_CHECKING:\n    from .hints import Hint\n"
        "def later():\n    from .lazy import thing\n    return thing\n",
        encoding="utf-8")
    found = imports_of("webapp.probe", source, {"webapp.sibling"})
    assert [(item.target, item.in_function) for item in found] == [
        ("typing", False), ("webapp.sibling", False), ("webapp.lazy", True)]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert a_path({"a": {"b"}, "b": {"a"}}, ["a", "b"]) == ["a", "b", "a"]


def test_webapp_has_no_import_cycle() -> None:
    graph, _ = import_graph()
    found = cycles(graph)
    assert found == [], "import cycles in webapp/:\n" + "\n".join(" -> ".join(a_path(graph, c)) for c in found)


def test_no_import_inside_a_function_except_the_documented_lazy_ones() -> None:
    _, everything = import_graph()
    hidden = [f"{item.module}:{item.line} imports {item.target}" for item in everything
              if item.in_function and (item.module, item.target) not in LAZY_IMPORTS_ALLOWED]
    assert hidden == [], ("imports inside functions (move them to the top of the module; a cycle they "
                          "dodge must be broken instead):\n" + "\n".join(hidden))
