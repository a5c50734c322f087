"""Issue 10 item 14: a failure after the answer (the session's connection killed before its
teardown ROLLBACK) never turns a finished answer into a 500, and every ``/api/`` answer is JSON,
even for an exception that escapes Flask's own error handling.

The app runs as in production (``PROPAGATE_EXCEPTIONS=False``). Before the fix the killed
connection's failing ROLLBACK in Flask-SQLAlchemy's teardown left ``wsgi_app`` as an exception
(gunicorn answered its HTML 500 page).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from flask import Flask, request
from sqlalchemy import text

from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.tasks.models import AsyncTask, utcnow

KILL_HEADER = "X-Test-Kill-Session"


def _kill_the_session_after_answering(app: Flask, database_url: str) -> list[int]:
    """After each request carrying KILL_HEADER: terminate the backend of the request's session."""
    killed: list[int] = []

    @app.after_request
    def kill(response: Any) -> Any:
        if request.headers.get(KILL_HEADER):
            pid = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()  # opens a transaction
            with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://"),
                                 autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
            killed.append(pid)
        return response

    return killed


def _task(app: Flask) -> int:
    with app.app_context():
        row = AsyncTask(task_type="NOOP", payload={"n": 1}, created_at=utcnow(), updated_at=utcnow(),
                        next_run_at=utcnow())
        db.session.add(row)
        db.session.commit()
        return int(row.id)


def test_a_killed_connection_at_teardown_leaves_the_answer_as_it_was(make_app: Callable[..., Flask]) -> None:
    app = make_app("postgres", PROPAGATE_EXCEPTIONS=False)
    with app.app_context():
        token = create_token("teardown-probe", reach="all")[1]
    task_id = _task(app)
    killed = _kill_the_session_after_answering(app, app.config["SQLALCHEMY_DATABASE_URI"])
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token}", KILL_HEADER: "1"}
    for _ in range(3):  # and again: the next requests get a fresh session and connection
        response = client.get(f"/api/tasks/{task_id}", headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)
        assert response.get_json()["id"] == task_id
    assert len(killed) == 3 and len(set(killed)) == 3
    assert client.get(f"/api/tasks/{task_id}", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_an_exception_escaping_flask_is_a_json_500_under_api(make_app: Callable[..., Flask]) -> None:
    app = make_app("sqlite", PROPAGATE_EXCEPTIONS=False)
    last_resort = app.wsgi_app

    def broken(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        raise RuntimeError("a layer below the app failed")

    last_resort.wsgi_app = broken  # type: ignore[attr-defined]  # what the net wraps: fail there
    client = app.test_client()
    response = client.get("/api/tasks")
    assert response.status_code == 500
    assert response.mimetype == "application/json"
    assert response.get_json() == {"error": {"code": "internal_error",
                                             "message": "internal server error; the details are in the server log"}}
    for path in ("/api/nope", "/api/tasks/1/cancel"):  # the same net for any /api path and method
        assert client.delete(path).get_json()["error"]["code"] == "internal_error"
