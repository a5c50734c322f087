"""Start-by deadlines on real SQLite and PostgreSQL: refused input, skipped by the claim, expired by the sweep."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask

from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, ValidationError
from webapp.tasks.consumer import Consumer
from webapp.tasks.models import AsyncTask, utcnow

from . import processors
from .conftest import wait_until


def _status(task_id: int) -> str:
    db.session.rollback()  # a fresh snapshot: SQLite's WAL reader would keep seeing the old one
    return db.session.get(AsyncTask, task_id).status


@pytest.mark.parametrize(("options", "field", "words"), [
    ({"start_by": "2030-01-01T00:00:00Z", "expires_in": 5}, "expires_in", "not both"),
    ({"expires_in": 0}, "expires_in", "above 0"),
    ({"expires_in": -3}, "expires_in", "above 0"),
    ({"expires_in": True}, "expires_in", "seconds"),
    ({"expires_in": "10"}, "expires_in", "seconds"),
    ({"start_by": "2030-01-01T00:00:00"}, "start_by", "time zone"),
    ({"start_by": "2001-01-01T00:00:00Z"}, "start_by", "already past"),
    ({"start_by": "2030-01-01T00:00:00Z", "run_at": "2031-01-01T00:00:00Z"}, "start_by", "after run_at"),
])
def test_bad_deadlines_are_refused_naming_the_field(app_ctx, options, field, words):
    with pytest.raises(ValidationError, match=words) as refused:
        AsyncTaskService().submit("NOOP", {}, **options)
    assert refused.value.field == field
    assert AsyncTask.query.count() == 0


def test_a_task_past_its_deadline_is_never_claimed_and_the_sweep_cancels_it(app_ctx):
    service = AsyncTaskService()
    soon = service.submit_task("NOOP", {"n": 1}, start_by=utcnow() + timedelta(seconds=0.3))
    later = service.submit_task("NOOP", {"n": 2}, expires_in=3600)
    assert soon.start_by is not None and later.start_by > utcnow() + timedelta(seconds=3500)
    wait_until(lambda: utcnow() > soon.start_by, timeout=5, message="deadline")
    assert [t.id for t in service.claim_due_tasks("w", 10)] == [later.id]  # never the late one
    assert service.expire_start_deadlines() == [soon.id]
    assert service.expire_start_deadlines() == []
    expired = service.require_task(soon.id)
    assert (expired.status, expired.error) == ("CANCELLED", "start deadline passed")
    [last] = service.events_for(soon.id)[-1:]
    assert (last.kind, last.to_status, last.message) == ("CANCELLED", "CANCELLED", "start deadline passed")


def test_expires_in_while_paused_then_resumed_never_runs(app: Flask):
    runs_before = len(processors.RUN_LOG)  # the log is the module's, shared with earlier tests (ids repeat)
    with app.app_context():
        service = AsyncTaskService()
        service.pause_task_type("NOOP", actor="ops")
        task_id = service.submit_task("NOOP", {"deadline": True}, expires_in=1).id
        kept_id = service.submit_task("NOOP", {"deadline": False}).id
        db.session.remove()
    Consumer(app, concurrency=1, poll_interval=0.1, heartbeat_interval=0.3).start()
    with app.app_context():
        wait_until(lambda: _status(task_id) == "CANCELLED", timeout=10, message="the sweep cancels it")
        AsyncTaskService().resume_task_type("NOOP", actor="ops")
        wait_until(lambda: _status(kept_id) == "SUCCESS", timeout=10, message="the other task runs")
        assert _status(task_id) == "CANCELLED"
        assert task_id not in {ran for ran, _ in processors.RUN_LOG[runs_before:]}
        db.session.remove()


def test_the_api_takes_deadlines_on_submits_and_batch_items(app: Flask):
    with app.app_context():
        _, secret = create_token("deadline-client", reach="all")
    client, headers = app.test_client(), {"Authorization": f"Bearer {secret}"}
    one = client.post("/api/tasks", json={"task_type": "NOOP", "payload": {}, "expires_in": 60}, headers=headers)
    assert one.status_code == 202 and one.get_json()["start_by"] is not None
    batch = client.post("/api/tasks/batch", headers=headers, json={"tasks": [
        {"task_type": "NOOP", "payload": {}, "start_by": "2031-01-01T00:00:00Z"},
        {"task_type": "NOOP", "payload": {}}]})
    assert batch.status_code == 202
    assert [t["start_by"] for t in batch.get_json()["items"]] == ["2031-01-01T00:00:00Z", None]
    refused = client.post("/api/tasks", headers=headers,
                          json={"task_type": "NOOP", "payload": {}, "expires_in": -1})
    assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "expires_in"
    bad_item = client.post("/api/tasks/batch", headers=headers,
                           json={"tasks": [{"task_type": "NOOP", "payload": {}, "expires_in": 0}]})
    assert bad_item.status_code == 422 and bad_item.get_json()["error"]["field"] == "tasks[0].expires_in"
