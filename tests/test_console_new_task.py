"""The console's New task form (issue 16): a form generated from the payload dataclass, a JSON
editor for any-object types, priority and run-at, errors beside their fields, audited; on
SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from flask import Flask
from markupsafe import escape
from sqlalchemy import func, select

from tests.console_support import logged_in_client
from webapp.extensions import db
from webapp.tasks.models import AsyncTask, AuditEntry

PROCESSORS = ["tests.processors", "tests.masking_processors"]


@pytest.fixture
def app(make_app: Callable[..., Flask], backend: str) -> Flask:
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)


def _task_count(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(AsyncTask)) or 0


def test_form_generated_from_the_dataclass_submits_and_audits(app: Flask) -> None:
    client, token = logged_in_client(app, "operator", "nina")
    assert 'id="new-task-link"' in client.get("/tasks").text
    form = client.get("/tasks/new?task_type=ORDER").text
    assert 'name="payload.customer"' in form and 'type="text"' in form
    assert 'id="field-amount" name="payload.amount" value=""\n           type="number"' in form
    assert 'name="payload.rush" value="true"' in form            # bool: a checkbox
    assert 'name="payload.tags" rows="3"' in form and "[]</textarea>" in form  # list: JSON, its default
    assert "OrderPayload" in form

    response = client.post("/tasks/new", data={
        "csrf_token": token, "task_type": "ORDER", "payload.customer": "ACME", "payload.amount": "12",
        "payload.tags": '["a", "b"]', "payload.note": "", "payload.rush": "true", "priority": "7",
        "run_at": "2999-01-02T03:04:05"})
    assert response.status_code == 303, response.text
    task_id = int(response.headers["Location"].rsplit("/", 1)[1])
    with app.app_context():
        task = db.session.get(AsyncTask, task_id)
        assert task.payload == {"customer": "ACME", "amount": 12, "tags": ["a", "b"], "rush": True}
        assert task.priority == 7 and task.principal == "user:nina"
        assert task.next_run_at == datetime(2999, 1, 2, 3, 4, 5, tzinfo=UTC)
        audit = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "task.submit")).one()
        assert (audit.actor, audit.target_id, audit.detail) == ("nina", str(task_id), {"task_type": "ORDER"})


def test_errors_are_shown_beside_their_fields_and_keep_the_typed_text(app: Flask) -> None:
    client, token = logged_in_client(app, "operator")
    before = _task_count(app)
    response = client.post("/tasks/new", data={
        "csrf_token": token, "task_type": "ORDER", "payload.customer": "", "payload.amount": "lots",
        "payload.tags": "[1,", "priority": "high", "run_at": "tomorrow"})
    assert response.status_code == 422
    page = response.text
    assert 'id="error-payload-customer">customer is required' in page
    assert 'id="error-payload-amount">payload.amount must be a whole number' in page
    assert 'id="error-payload-tags">tags is not valid JSON' in page
    assert 'id="error-priority">priority must be a whole number' in page
    assert 'id="error-run_at">run at must be a date and time' in page
    assert 'value="lots"' in page and 'value="high"' in page and "[1,</textarea>" in page

    # The service's own check (a list of numbers where strings are expected), named and inline.
    wrong_type = client.post("/tasks/new", data={
        "csrf_token": token, "task_type": "ORDER", "payload.customer": "ACME", "payload.amount": "1",
        "payload.tags": "[1, 2]"})
    assert wrong_type.status_code == 422
    assert 'id="error-payload-tags">' in wrong_type.text and "tags" in wrong_type.text
    assert _task_count(app) == before


def test_any_object_types_get_a_json_editor_and_secrets_a_password_input(app: Flask) -> None:
    client, token = logged_in_client(app, "operator")
    editor = client.get("/tasks/new?task_type=NOOP").text
    assert 'id="payload-editor" name="payload"' in editor and 'name="payload.' not in editor
    bad = client.post("/tasks/new", data={"csrf_token": token, "task_type": "NOOP", "payload": '{"a": '})
    assert bad.status_code == 422 and "not valid JSON" in bad.text
    assert str(escape('{"a": ')) in bad.text
    good = client.post("/tasks/new", data={"csrf_token": token, "task_type": "NOOP", "payload": '{"a": 1}'})
    assert good.status_code == 303
    secret = client.get("/tasks/new?task_type=LOGIN_WITH_SECRET").text
    assert 'name="payload.password" value=""\n           type="password"' in secret


def test_viewers_cannot_and_unknown_types_are_named(app: Flask) -> None:
    viewer, viewer_token = logged_in_client(app, "viewer")
    assert 'id="new-task-link"' not in viewer.get("/tasks").text
    assert viewer.get("/tasks/new").status_code == 403
    assert viewer.post("/tasks/new", data={"csrf_token": viewer_token, "task_type": "NOOP"}).status_code == 403
    client, token = logged_in_client(app, "operator")
    unknown = client.get("/tasks/new?task_type=NOPE")
    assert unknown.status_code == 422 and "unknown task type NOPE" in unknown.text
    missing = client.post("/tasks/new", data={"csrf_token": token, "task_type": ""})
    assert missing.status_code == 422 and "choose a task type" in missing.text
