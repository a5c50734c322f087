"""Secrets masked (issue 16): processor-declared sensitive payload fields leave the database as
``•••`` (API, console, webhook bodies, logs, error texts) and edit-and-retry keeps them."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from markupsafe import escape

from tests.conftest import wait_until
from tests.console_support import logged_in_client
from tests.masking_processors import ApiCallProcessor, LoginProcessor
from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.consumer import Consumer
from webapp.tasks.masking import (
    MASK,
    declared_sensitive_fields,
    mask_json_text,
    mask_payload,
    restore_masked,
    secret_values,
)
from webapp.tasks.models import AsyncTask, AuditEntry, Notification

PROCESSORS = ["tests.processors", "tests.masking_processors"]
PASSWORD = "hunter2-correct-horse"
API_KEY = "sk-live-0123456789"


@pytest.fixture
def app(make_app: Callable[..., Flask], backend: str) -> Flask:
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)


def _bearer(app: Flask) -> dict[str, str]:
    with app.app_context():
        _, secret = create_token("masking-client", reach="all")
    return {"Authorization": f"Bearer {secret}"}


def _fail(app: Flask, task_id: int, message: str) -> None:
    """Claim the task as a fake worker and end it in FAILURE with ``message``."""
    with app.app_context():
        service = AsyncTaskService()
        claimed = service.claim_due_tasks("test-worker", 50, [service.require_task(task_id).task_type])
        assert [t.id for t in claimed] == [task_id]
        service.finish_task(claimed[0], TaskResult.failure(message, retryable=False), worker_id="test-worker",
                            traceback=f"Traceback (most recent call last):\nRuntimeError: {message}")


# -- the rules, without a database ---------------------------------------------------------------


def test_declared_by_metadata_and_by_attribute() -> None:
    assert declared_sensitive_fields(LoginProcessor()) == {"password"}
    assert declared_sensitive_fields(ApiCallProcessor()) == {"api_key", "auth.token"}
    assert declared_sensitive_fields(None) == frozenset()


def test_mask_payload_masks_present_paths_and_leaves_the_original_alone() -> None:
    payload = {"api_key": API_KEY, "auth": {"token": "t0k3n-value", "user": "ann"}, "n": 1}
    masked = mask_payload(payload, {"api_key", "auth.token", "absent.path"})
    assert masked == {"api_key": MASK, "auth": {"token": MASK, "user": "ann"}, "n": 1}
    assert payload["api_key"] == API_KEY and payload["auth"]["token"] == "t0k3n-value"
    assert mask_payload([1, 2], {"api_key"}) == [1, 2]


def test_restore_masked_keeps_a_mask_sent_back_and_takes_a_replacement() -> None:
    stored = {"api_key": API_KEY, "auth": {"token": "old-token"}, "n": 1}
    assert restore_masked(stored, {"api_key": MASK, "auth": {"token": MASK}, "n": 2},
                          {"api_key", "auth.token"}) == {"api_key": API_KEY, "auth": {"token": "old-token"}, "n": 2}
    assert restore_masked(stored, {"api_key": "new-key", "n": 1}, {"api_key", "auth.token"}) == {
        "api_key": "new-key", "n": 1}  # replaced kept, removed stays removed


@pytest.mark.parametrize(("text", "expected"), [
    ('{"api_key": "sk-1", "n": 1}', '{"api_key": "•••", "n": 1}'),
    ('{"n": 1, "api_key": "sk-live-01', '{"n": 1, "api_key": "•••"'),           # cut inside the value
    ('{"api_key": 123456, "x": 2}', '{"api_key": "•••", "x": 2}'),
    ('{"auth": {"token": {"a": [1, "}"]}, "u": 1}}', '{"auth": {"token": "•••", "u": 1}}'),
    ('{"note": "the \\"api_key\\": here"}', '{"note": "the \\"api_key\\": here"}'),  # inside a string
    ('{"n": 1, "api_key": ', '{"n": 1, "api_key": "•••"'),
])
def test_mask_json_text_of_a_cut_preview(text: str, expected: str) -> None:
    assert mask_json_text(text, {"api_key", "auth.token"}) == expected


def test_secret_values_include_the_json_escaped_form() -> None:
    values = secret_values({"password": 'pa"ss\\word'}, {"password"})
    assert 'pa"ss\\word' in values and 'pa\\"ss\\\\word' in values
    assert secret_values({"password": "abc"}, {"password"}) == []  # too short to scrub from text


# -- API, console, webhook, on both databases --------------------------------------------------


def test_api_answers_mask_and_the_database_keeps_the_value(app: Flask) -> None:
    client, headers = app.test_client(), _bearer(app)
    body = {"task_type": "LOGIN_WITH_SECRET", "payload": {"username": "ann", "password": PASSWORD}}
    submitted = client.post("/api/tasks", json=body, headers=headers)
    assert submitted.status_code == 202, submitted.text
    assert submitted.json["payload"] == {"username": "ann", "password": MASK}
    task_id = submitted.json["id"]
    one = client.get(f"/api/tasks/{task_id}", headers=headers)
    assert one.json["payload"]["password"] == MASK and PASSWORD not in one.text
    listed = client.get("/api/tasks?task_type=LOGIN_WITH_SECRET", headers=headers)
    item = listed.json["items"][0]
    assert item["payload"]["password"] == MASK and MASK in item["payload_preview"]
    assert PASSWORD not in listed.text
    with app.app_context():
        assert db.session.get(AsyncTask, task_id).payload["password"] == PASSWORD  # for the processor


def test_error_texts_and_webhook_bodies_are_scrubbed(app: Flask) -> None:
    with app.app_context():
        task_id = AsyncTaskService().submit_task(
            "CALL_WITH_KEY", {"api_key": API_KEY, "auth": {"token": "bearer-xyz-123"}, "q": "weather"},
            notify_url="https://hooks.example.com/done").id
    _fail(app, task_id, f"401 for key {API_KEY}")
    client, headers = app.test_client(), _bearer(app)
    answer = client.get(f"/api/tasks/{task_id}", headers=headers)
    assert answer.json["error"] == f"401 for key {MASK}" and API_KEY not in answer.text
    listed = client.get("/api/tasks?task_type=CALL_WITH_KEY", headers=headers)
    assert API_KEY not in listed.text and "bearer-xyz-123" not in listed.text
    with app.app_context():
        webhook = db.session.query(Notification).filter_by(task_id=task_id, type="WEBHOOK").one()
        body = json.loads(webhook.content)
    assert body["payload"] == {"api_key": MASK, "auth": {"token": MASK}, "q": "weather"}
    assert API_KEY not in webhook.content and body["error"] == f"401 for key {MASK}"


def test_the_default_mail_masks_a_secret_quoted_by_the_error(app: Flask) -> None:
    with app.app_context():
        task_id = AsyncTaskService().submit_task(
            "LOGIN_WITH_SECRET", {"username": "ann", "password": PASSWORD}, created_by="ann@example.com").id
    _fail(app, task_id, f"login refused for password {PASSWORD}")
    with app.app_context():
        mail = db.session.query(Notification).filter_by(task_id=task_id, type="EMAIL").one()
    assert f"login refused for password {MASK}" in mail.content and PASSWORD not in mail.content
    assert PASSWORD not in (mail.html or "")


def test_console_detail_and_edit_and_retry_keep_the_secret_hidden(app: Flask) -> None:
    with app.app_context():
        task_id = AsyncTaskService().submit_task(
            "LOGIN_WITH_SECRET", {"username": "ann", "password": PASSWORD}).id
    _fail(app, task_id, f"login refused for password {PASSWORD}")
    client, token = logged_in_client(app, "operator", "olga")
    detail = client.get(f"/tasks/{task_id}").text
    assert PASSWORD not in detail
    assert str(escape(f'"password": "{MASK}"')) in detail           # the payload block
    assert f"login refused for password {MASK}" in detail             # error, attempts, timeline
    search = client.get("/tasks", query_string={"search": "ann"}).text
    assert PASSWORD not in search

    form = client.get(f"/tasks/{task_id}/edit-retry").text
    assert PASSWORD not in form and str(escape(f'"password": "{MASK}"')) in form
    edited = json.dumps({"username": "ann-2", "password": MASK})
    response = client.post(f"/tasks/{task_id}/edit-retry", data={"csrf_token": token, "payload": edited})
    assert response.status_code == 303
    kept_id = int(response.headers["Location"].rsplit("/", 1)[1])
    _fail(app, kept_id, "again")
    replaced = json.dumps({"username": "ann-3", "password": "a-new-password"})
    response = client.post(f"/tasks/{kept_id}/edit-retry", data={"csrf_token": token, "payload": replaced})
    assert response.status_code == 303
    replaced_id = int(response.headers["Location"].rsplit("/", 1)[1])
    with app.app_context():
        kept = db.session.get(AsyncTask, kept_id)
        assert kept.payload == {"username": "ann-2", "password": PASSWORD}
        assert db.session.get(AsyncTask, replaced_id).payload["password"] == "a-new-password"
        audit_text = " ".join(json.dumps(e.detail or {}) for e in db.session.query(AuditEntry).all())
        assert PASSWORD not in audit_text


def test_api_resubmit_sending_the_mask_back_keeps_the_value(app: Flask) -> None:
    with app.app_context():
        task_id = AsyncTaskService().submit_task("CALL_WITH_KEY", {"api_key": API_KEY, "q": "a"}).id
    _fail(app, task_id, "no")
    client, headers = app.test_client(), _bearer(app)
    original = client.get(f"/api/tasks/{task_id}", headers=headers).json
    edited = {**original["payload"], "q": "b"}
    answer = client.post(f"/api/tasks/{task_id}/resubmit", json={"payload": edited}, headers=headers)
    assert answer.status_code == 202 and answer.json["payload"] == {"api_key": MASK, "q": "b"}
    with app.app_context():
        assert db.session.get(AsyncTask, answer.json["id"]).payload == {"api_key": API_KEY, "q": "b"}


# -- logs, with a real consumer ------------------------------------------------------------------


def test_log_lines_of_the_running_task_are_scrubbed(sqlite_template: Any, make_app: Callable[..., Flask],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    app = make_app("sqlite", ASYNC_TASK_PROCESSORS=PROCESSORS)
    caplog.set_level(logging.INFO)
    with app.app_context():
        task_id = AsyncTaskService().submit_task("LOGIN_WITH_SECRET", {"username": "ann", "password": PASSWORD}).id
    Consumer(app, concurrency=1, poll_interval=0.05).start()

    def ended() -> bool:
        with app.app_context():
            task = db.session.get(AsyncTask, task_id, populate_existing=True)
            return task is not None and task.status == "FAILURE"

    wait_until(ended, timeout=15, message="the task failed")
    lines = [r for r in caplog.records if getattr(r, "task_id", None) == task_id]
    assert any("logging in ann with" in r.getMessage() for r in lines)
    assert any("raised RuntimeError" in r.getMessage() for r in lines)
    assert all(PASSWORD not in r.getMessage() for r in lines)
    assert all(MASK in r.getMessage() for r in lines if "logging in ann" in r.getMessage())
