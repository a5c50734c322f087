"""Shared pieces of the security suite: a populated app, every route with its parameters filled
in from ``app.url_map`` (so a route added later is walked without touching this suite), table
snapshots to prove that a refused request changed nothing, and the header checks.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from flask import Flask, got_request_exception
from sqlalchemy import select, text
from werkzeug.routing import Rule
from werkzeug.routing.converters import AnyConverter, IntegerConverter, PathConverter
from werkzeug.test import TestResponse

from tests.conftest import TABLES
from tests.console_support import PASSWORD
from webapp.accounts.tokens import create_token
from webapp.accounts.users import create_user
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.models import AuditEntry

FAR_FUTURE = "2999-01-01T00:00:00Z"
TARGET_USER = "target-user"
TOKEN_NAME = "probe-token"

# Endpoints anyone may call, and why. Everything else needs a login (console) or a token (API).
PUBLIC_ENDPOINTS = {
    "static": "static files (CSS, htmx, our script)",
    "health.healthz": "liveness probe",
    "health.readyz": "readiness probe; names no host, user or secret",
    "health.metrics": "open unless ASYNC_TASK_METRICS_TOKEN is set (then a bearer token; tested)",
    "auth.login": "the login form itself",
    "api.openapi_document": "the API's description: no task data, no secret (webapp/api/auth.py)",
    "i18n.choose_language": "the language switch (also on the login page): sets a cookie, CSRF-checked",
}
# Console endpoints any logged-in user may POST to: logging in again, logging out, the language,
# their own password.
# Every user changes their own password, language and clock (local time or UTC).
NOT_ROLE_GATED = {"auth.login", "auth.logout", "i18n.choose_language", "clock.choose_clock",
                  "account.change_password"}

# Form fields that make each known state-changing request one that *would* change something if
# it were allowed; the control test proves they do. Routes not listed get an empty form.
FORMS: dict[str, dict[str, str]] = {
    "console.bulk_apply": {"action": "cancel", "scope": "matching"},
    "admin.create_user_view": {"username": "mallory", "password": "mallory-password", "role": "admin"},
    "admin.change_role": {"role": "admin"},
    "admin.change_active": {"active": "0"},
    "admin.create_token": {"name": "mallory-token"},
    "auth.login": {"username": TARGET_USER, "password": PASSWORD},
}
# Ids of the elements the console swaps: htmx requests name one of them in HX-Target.
HTMX_TARGETS = ("task-results", "task-rows", "task-live", "task-notifications", "overview-live",
                "workers-live", "bulk-panel", "messages")


@dataclass
class World:
    """An app with one waiting task, one failed task, an extra user and an API token."""

    app: Flask
    pending_id: int
    failure_id: int
    token: str
    token_name: str = TOKEN_NAME
    target_user: str = TARGET_USER


@dataclass(frozen=True)
class Probe:
    """One request to make: a route, a method and a concrete path."""

    endpoint: str
    method: str
    path: str

    @property
    def area(self) -> str:
        """``api``, ``health``, ``static`` or ``console`` (every other blueprint is console)."""
        blueprint = (self.endpoint.rpartition(".")[0] or self.endpoint).split(".")[0]  # api.schedules: api
        return blueprint if blueprint in ("api", "health", "static") else "console"

    @property
    def is_public(self) -> bool:
        """Whether anyone may call it (see ``PUBLIC_ENDPOINTS``)."""
        return self.endpoint in PUBLIC_ENDPOINTS

    def __str__(self) -> str:
        return f"{self.method} {self.path} ({self.endpoint})"


def failed_task(app: Flask, task_type: str = "FATAL", payload: Any = None, error: str = "bad input",
                traceback: str | None = None, created_by: str | None = None) -> int:
    """A task in FAILURE, reached through the service the way a worker reaches it."""
    with app.app_context():
        service = AsyncTaskService()
        task_id = service.submit_task(task_type, payload if payload is not None else {},
                                      created_by=created_by).id
        # Waiting tasks of this type must not exist: the claim takes the oldest one.
        claimed = service.claim_due_tasks("security-worker", 1, [task_type])
        assert [info.id for info in claimed] == [task_id], f"task {task_id} was not the one claimed"
        service.finish_task(claimed[0], TaskResult.failure(error, retryable=False),
                            worker_id="security-worker", traceback=traceback)
        assert service.require_task(task_id).status == "FAILURE"
        return task_id


def build_world(app: Flask) -> World:
    """Populate ``app`` with what the route walks need: tasks, a target user, an API token."""
    with app.app_context():
        pending_id = AsyncTaskService().submit_task("NOOP", {"n": 1}, run_at=FAR_FUTURE).id
        create_user(TARGET_USER, PASSWORD, "viewer")
        _, secret = create_token(TOKEN_NAME, reach="all")
    return World(app, pending_id, failed_task(app), secret)


def _argument_values(rule: Rule, world: World) -> list[dict[str, Any]]:
    """Every combination of real values for the rule's path parameters."""
    choices: dict[str, list[Any]] = {}
    for name in sorted(rule.arguments):
        converter = rule._converters[name]
        if isinstance(converter, IntegerConverter):
            choices[name] = [world.pending_id, world.failure_id]
        elif isinstance(converter, AnyConverter):
            choices[name] = sorted(converter.items)
        elif isinstance(converter, PathConverter):
            choices[name] = ["console.css"]
        elif name == "username":
            choices[name] = [world.target_user]
        elif name == "name":
            choices[name] = [world.token_name]
        elif name == "task_type":
            choices[name] = ["NOOP"]
        else:  # a parameter this suite does not know yet: a plain value still reaches the guards
            choices[name] = ["1"]
    names = list(choices)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*choices.values())]


def probes(app: Flask, world: World) -> list[Probe]:
    """Every route of ``app.url_map`` x every method it answers x real path parameters."""
    adapter = app.url_map.bind("localhost")
    found: list[Probe] = []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            for values in _argument_values(rule, world):
                path = adapter.build(rule.endpoint, values, method=method)
                found.append(Probe(rule.endpoint, method, path))
    return found


def snapshot(app: Flask, tables: tuple[str, ...] = TABLES) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to compare before and after a request."""
    with app.app_context():
        try:
            return {table: [tuple(row) for row in db.session.execute(text(f"SELECT * FROM {table} ORDER BY 1"))]
                    for table in tables}
        finally:
            db.session.remove()


def changed_tables(before: dict[str, list[tuple[Any, ...]]], after: dict[str, list[tuple[Any, ...]]]) -> list[str]:
    """Names of the tables whose rows differ."""
    return [table for table in before if before[table] != after[table]]


def new_audit_actions(app: Flask, before: dict[str, list[tuple[Any, ...]]]) -> set[str]:
    """Actions of the audit entries written since the ``before`` snapshot."""
    last_id = max((row[0] for row in before["audit_log"]), default=0)
    with app.app_context():
        try:
            return set(db.session.scalars(select(AuditEntry.action).where(AuditEntry.id > last_id)))
        finally:
            db.session.remove()


@contextmanager
def server_errors(app: Flask) -> Iterator[list[str]]:
    """Collect the exceptions behind 500 answers (the app must not propagate them)."""
    seen: list[str] = []

    def record(sender: Flask, exception: BaseException, **extra: Any) -> None:
        seen.append(f"{type(exception).__name__}: {str(exception)[:300]}")

    got_request_exception.connect(record, app)
    try:
        yield seen
    finally:
        got_request_exception.disconnect(record, app)


def assert_security_headers(response: TestResponse, what: object) -> None:
    """CSP without inline code, nosniff, no framing, a referrer policy: on every response."""
    headers = response.headers
    csp = headers.get("Content-Security-Policy", "")
    for directive in ("default-src 'self'", "script-src 'self'", "object-src 'none'", "frame-ancestors 'none'"):
        assert directive in csp, f"{what}: CSP {csp!r} lacks {directive}"
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, f"{what}: CSP {csp!r}"
    assert headers.get("X-Content-Type-Options") == "nosniff", f"{what}: {dict(headers)}"
    assert headers.get("X-Frame-Options") == "DENY", f"{what}: {dict(headers)}"
    assert headers.get("Referrer-Policy") in ("same-origin", "no-referrer", "strict-origin",
                                              "strict-origin-when-cross-origin"), f"{what}: {dict(headers)}"
