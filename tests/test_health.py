"""``/healthz`` and ``/readyz`` against real dependencies: SQLite, PostgreSQL, Redis, SMTP.

Each dependency is checked up and down: a real aiosmtpd server and one that never answers, a
PostgreSQL URL on a port nobody listens on, Redis at its real address and at a dead port.
"""

from __future__ import annotations

import time

import pytest
from flask import Flask

from tests.conftest import base_config
from tests.smtp_server import SilentServer, SMTPServer, free_port
from webapp import create_app
from webapp.extensions import db

NOBODY = "127.0.0.1"
# Anyone gets readiness states only; the error's type comes with a token (issue 10 item 24).
OPS_TOKEN = "ops-token-5f0e9d8c7b6a5f4e3d2c1b0a"
OPS = {"ASYNC_TASK_METRICS_TOKEN": OPS_TOKEN}
WITH_TOKEN = {"Authorization": f"Bearer {OPS_TOKEN}"}


def app_on_unreachable_database(tmp_path, **config) -> Flask:
    """An app whose PostgreSQL URL points at a port nobody listens on (password included)."""
    url = f"postgresql://postgres:hunter2@{NOBODY}:{free_port()}/taskdeck"
    return create_app(base_config(SQLALCHEMY_DATABASE_URI=url, **config))


def test_healthz_answers_without_touching_anything(tmp_path):
    app = app_on_unreachable_database(tmp_path)
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_ready_when_every_configured_dependency_answers(make_app, backend):
    smtp = SMTPServer().start()
    try:
        app = make_app(backend, redis=backend == "postgres", **smtp.config())
        response = app.test_client().get("/readyz")
    finally:
        smtp.stop()
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["smtp"] == "ok"
    assert body["redis"] == ("ok" if backend == "postgres" else "not configured")
    assert body["checks"] == {key: body[key] for key in ("database", "redis", "smtp")}
    assert smtp.received() == []  # a greeting is read; nothing is sent


def test_unconfigured_redis_and_smtp_do_not_count(make_app):
    app = make_app("sqlite", MAIL_SERVER=None)
    response = app.test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["redis"] == "not configured"
    assert response.get_json()["smtp"] == "not configured"


def test_database_down_is_503_naming_only_the_error_type(tmp_path):
    app = app_on_unreachable_database(tmp_path, MAIL_SERVER=None, **OPS)
    response = app.test_client().get("/readyz", headers=WITH_TOKEN)
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["database"].startswith("error: ")
    assert "hunter2" not in response.get_data(as_text=True)


def test_redis_down_is_503(make_app):
    app = make_app("sqlite", REDIS_URL=f"redis://{NOBODY}:{free_port()}/0", MAIL_SERVER=None)
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["redis"].startswith("error")
    assert response.get_json()["database"] == "ok"


def test_smtp_refusing_is_503(make_app):
    app = make_app("sqlite", MAIL_SERVER=NOBODY, MAIL_PORT=free_port(), **OPS)
    response = app.test_client().get("/readyz", headers=WITH_TOKEN)
    assert response.status_code == 503
    assert response.get_json()["smtp"].startswith("error: ConnectionRefusedError")


def test_smtp_hanging_is_503_within_the_check_timeout(make_app):
    silent = SilentServer().start()
    try:
        app = make_app("sqlite", MAIL_SERVER=NOBODY, MAIL_PORT=silent.port, **OPS)
        began = time.monotonic()
        response = app.test_client().get("/readyz", headers=WITH_TOKEN)
        elapsed = time.monotonic() - began
    finally:
        silent.stop()
    assert response.status_code == 503
    assert response.get_json()["smtp"].startswith("error: ")
    assert elapsed < 5, f"readiness took {elapsed:.1f}s with a hanging SMTP server"


def test_operations_endpoints_need_no_login(make_app):
    """The console guards its own blueprints; the health blueprint stays open to probes
    (/metrics once ASYNC_TASK_METRICS_PUBLIC opens it explicitly)."""
    app = make_app("sqlite", MAIL_SERVER=None, ASYNC_TASK_METRICS_PUBLIC=True)
    client = app.test_client()
    for path in ("/healthz", "/readyz", "/metrics"):
        response = client.get(path)
        assert response.status_code == 200, (path, response.status_code, response.headers.get("Location"))


@pytest.mark.parametrize("query, expected", [("none", None), ("0", 0)])
def test_prepare_threshold_in_the_database_url_reaches_psycopg(pg_url, query, expected):
    """For PgBouncer < 1.21 in transaction mode (docs/deploy.md): ``?prepare_threshold=none``."""
    app = create_app(base_config(SQLALCHEMY_DATABASE_URI=f"{pg_url}?prepare_threshold={query}",
                                 MAIL_SERVER=None))
    try:
        for _ in range(7):  # past psycopg's default threshold of 5 runs
            assert app.test_client().get("/readyz").status_code == 200
        with app.app_context():
            connection = db.engine.raw_connection()
            try:
                assert connection.driver_connection.prepare_threshold == expected
            finally:
                connection.close()
    finally:
        with app.app_context():
            db.engine.dispose()
