"""The console is a thin layer: no database session, no SQL, no engine internals in its modules.

Every change goes through a service that owns its transaction (``AsyncTaskService``,
``BulkOperations``, ``accounts.users``, ``accounts.login``, the notification outbox); a view that
reaches for ``db.session`` (to roll back, to commit, to query) is in the wrong room.
"""

from __future__ import annotations

import ast
import re

from tests.conftest import ROOT
from webapp.console import CONSOLE_BLUEPRINTS

CONSOLE = ROOT / "webapp" / "console"
FORBIDDEN_MODULES = ("sqlalchemy", "webapp.extensions")


def _imported_modules(tree: ast.AST, package: str) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            found.add(f"{base}.{node.module}" if node.level and node.module else node.module or base)
    return found


def test_console_modules_use_no_database_session_or_sql() -> None:
    problems = []
    for path in sorted(CONSOLE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for module in _imported_modules(tree, "webapp.console"):
            if module.startswith(FORBIDDEN_MODULES):
                problems.append(f"{path.name} imports {module}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "session" and isinstance(node.value, ast.Name) \
                    and node.value.id == "db":
                problems.append(f"{path.name}:{node.lineno} uses db.session")
    assert problems == []


def test_every_console_page_module_registers_through_the_one_list() -> None:
    """No route is added to another module's blueprint by importing it for its side effect."""
    names = {blueprint.name for blueprint in CONSOLE_BLUEPRINTS}
    for path in sorted(CONSOLE.glob("*.py")):
        if path.name == "__init__.py":  # the one place that lists (and so imports) every blueprint
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is not None:
                assert not any(alias.name == "bp" for alias in node.names), \
                    f"{path.name} imports another module's blueprint from .{node.module}"
    assert {"auth", "console", "notifications", "account", "admin"} <= names


SELF_REFRESH = re.compile(r'hx-trigger="[^"]*(?:\bevery\s|\bload delay)')
TAG = re.compile(r"<[a-z][a-z0-9]*\b(?:[^<>{]|\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\})*>", re.DOTALL)


def test_every_self_refreshing_element_is_marked_as_a_poll() -> None:
    """``data-poll`` tells console.js to mark the request: a poll is not the user's activity
    (the idle session timeout), and a failed poll is retried."""
    unmarked = [f"{path.relative_to(ROOT)}: {tag[:120]}" for path in sorted((ROOT / "templates").rglob("*.html"))
                for tag in TAG.findall(path.read_text(encoding="utf-8"))
                if SELF_REFRESH.search(tag) and "data-poll" not in tag]
    assert unmarked == []
