"""Shared fixtures: apps on real SQLite and PostgreSQL, a private Redis key prefix per run.

Each test run creates its own PostgreSQL database (dropped at the end) and uses its own Redis
key prefix. A test that needs PostgreSQL or Redis fails when CI=true and the service is down,
and is skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text

from webapp import create_app
from webapp.extensions import db

# The ``pool`` fixture of worker subprocesses (tests/process_pool.py).
pytest_plugins = ["tests.process_pool"]

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RUN_ID = f"{os.getpid()}_{uuid.uuid4().hex[:6]}"
IN_CI = os.environ.get("CI", "").lower() == "true"
ROOT = Path(__file__).resolve().parent.parent


def _service_missing(what: str, detail: str) -> None:
    message = f"{what} is not reachable ({detail})"
    if IN_CI:
        pytest.fail(f"{message}; CI=true requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database of this run's own, migrated with the project's migrations."""
    import psycopg

    name = f"taskdeck_test_{RUN_ID}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3)
    except Exception as exc:
        _service_missing("PostgreSQL", str(exc).strip())
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    _migrate(url)
    yield url
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:
        _service_missing("Redis", str(exc))
    return REDIS_URL


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file; each test copies it (faster than migrating per test)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.sqlite3"
    _migrate(f"sqlite:///{path}")
    return path


def _migrate(url: str) -> None:
    from flask_migrate import upgrade

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade()
        db.engine.dispose()


TABLES = ("notification", "task_event", "audit_log", "async_task", "worker", "task_type_state",
          "api_token", "console_user", "login_failure_counter", "task_limit_start", "task_limit_override")


def base_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "TESTING": True,
        "SECRET_KEY": "test-secret",
        "WTF_CSRF_ENABLED": True,
        "ASYNC_TASK_PROCESSORS": ["tests.processors"],
        "ASYNC_TASK_POLL_INTERVAL": 0.2,
        "ASYNC_TASK_HEARTBEAT_INTERVAL": 0.5,
        "ASYNC_TASK_SHUTDOWN_GRACE": 5,
        "ASYNC_TASK_REDIS_LOCK_PREFIX": f"test-{RUN_ID}:",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": 1,
        "MAIL_DEFAULT_SENDER": "tasks@example.com",
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Flask]]:
    """Factory: ``make_app(backend="sqlite"|"postgres", redis=False, **config)``; cleans up after."""
    made: list[Flask] = []

    def factory(backend: str = "sqlite", redis: bool = False, **overrides: Any) -> Flask:
        if backend == "postgres":
            url = request.getfixturevalue("pg_url")
        else:
            template = request.getfixturevalue("sqlite_template")
            target = tmp_path / f"db{len(made)}.sqlite3"
            if not target.exists():
                target.write_bytes(template.read_bytes())
            url = f"sqlite:///{target}"
        config = base_config(SQLALCHEMY_DATABASE_URI=url, **overrides)
        if redis:
            config["REDIS_URL"] = request.getfixturevalue("redis_url")
        app = create_app(config)
        if backend == "postgres" and not made:
            with app.app_context():
                db.session.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
                db.session.commit()
        made.append(app)
        return app

    yield factory
    for app in made:
        for consumer in list(app.extensions["async_task"].local_consumers):
            consumer.stop(grace=2)
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def app(make_app: Callable[..., Flask], backend: str) -> Flask:
    """An app on each backend in turn (SQLite and PostgreSQL)."""
    return make_app(backend)


@pytest.fixture
def app_ctx(app: Flask) -> Iterator[Flask]:
    with app.app_context():
        yield app


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
