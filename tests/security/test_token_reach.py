"""Issue 10 items 1 and 2: API tokens have scopes and a reach, and may be limited in whom they mail.

The attack of the report, repeated: token B read the payload of token A's task, listed A's tasks,
cancelled one and resubmitted another. Now a task out of a token's reach answers 404 everywhere
and nothing changes; a missing scope is a 403 JSON error; every task records the principal that
submitted it (``created_by`` cannot pass for it); tokens that existed before keep reaching every
task with every scope until an admin narrows them. A token restricted to some recipients gets
422 naming the field for any other address, and nothing is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, text
from werkzeug.test import TestResponse

from tests.security.support import changed_tables, failed_task, snapshot
from webapp.accounts.tokens import create_token, update_token
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import AsyncTask, TaskEvent


@dataclass
class Client:
    name: str
    secret: str
    http: FlaskClient

    def call(self, method: str, path: str, body: Any = None) -> TestResponse:
        return self.http.open(path, method=method, json=body, headers={"Authorization": f"Bearer {self.secret}"})


def _client(app: Flask, name: str, **permissions: Any) -> Client:
    with app.app_context():
        secret = create_token(name, **permissions)[1]
    return Client(name, secret, app.test_client())


def _json_error(response: TestResponse, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert error["code"] == code
    return error


@pytest.fixture
def app(make_app: Callable[..., Flask], backend: str) -> Flask:
    return make_app(backend)


def test_a_token_reaches_only_its_own_tasks(app: Flask) -> None:
    alice, mallory = _client(app, "alice"), _client(app, "mallory")
    submitted = alice.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {"secret": "alice-only"},
                                                  "run_at": "2999-01-01T00:00:00Z"})
    assert submitted.status_code == 202
    task_id = submitted.get_json()["id"]
    failed_id = failed_task(app)
    with app.app_context():  # a FAILURE task of alice's, to retry and resubmit
        db.session.execute(text("UPDATE async_task SET principal = 'token:alice' WHERE id = :id"), {"id": failed_id})
        db.session.commit()

    before = snapshot(app)
    for method, path, body in (("GET", f"/api/tasks/{task_id}", None),
                               ("POST", f"/api/tasks/{task_id}/cancel", None),
                               ("POST", f"/api/tasks/{failed_id}/retry", None),
                               ("POST", f"/api/tasks/{failed_id}/resubmit", {"payload": {"evil": 1}})):
        answer = mallory.call(method, path, body)
        error = _json_error(answer, 404, "not_found")
        assert "alice-only" not in answer.get_data(as_text=True), error
    listed = mallory.call("GET", "/api/tasks?limit=500")
    assert listed.status_code == 200 and listed.get_json()["items"] == []
    assert mallory.call("GET", "/api/tasks?created_by=alice").get_json()["items"] == []
    # Nothing acted on, nothing written (api_token: mallory's last use is stamped).
    assert [t for t in changed_tables(before, snapshot(app)) if t != "api_token"] == []

    mine = alice.call("GET", f"/api/tasks/{task_id}").get_json()
    assert mine["payload"] == {"secret": "alice-only"} and mine["principal"] == "token:alice"
    assert [item["id"] for item in alice.call("GET", "/api/tasks").get_json()["items"]] == [failed_id, task_id]
    resubmitted = alice.call("POST", f"/api/tasks/{failed_id}/resubmit", {"payload": {}})
    assert resubmitted.status_code == 202 and resubmitted.get_json()["principal"] == "token:alice"
    assert alice.call("POST", f"/api/tasks/{task_id}/cancel").status_code == 200

    # Granted explicitly at creation: every task.
    auditor = _client(app, "auditor", reach="all", scopes=["read"])
    assert auditor.call("GET", f"/api/tasks/{task_id}").status_code == 200
    assert {item["id"] for item in auditor.call("GET", "/api/tasks").get_json()["items"]} >= {task_id, failed_id}


def test_created_by_does_not_pass_for_the_principal(app: Flask) -> None:
    alice, mallory = _client(app, "alice"), _client(app, "mallory")
    forged = mallory.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {}, "created_by": "alice"})
    assert forged.status_code == 202
    body = forged.get_json()
    assert (body["created_by"], body["principal"]) == ("alice", "token:mallory")
    assert alice.call("GET", f"/api/tasks/{body['id']}").status_code == 404
    batch = mallory.call("POST", "/api/tasks/batch", {"tasks": [{"task_type": "NOOP", "payload": {}}] * 2})
    assert {item["principal"] for item in batch.get_json()["items"]} == {"token:mallory"}
    with app.app_context():
        actors = db.session.scalars(select(TaskEvent.actor).where(TaskEvent.kind == "SUBMITTED")).all()
    assert set(actors) == {"token:mallory"}  # the timeline names the principal, not created_by


def test_missing_scope_is_403_json_and_changes_nothing(app: Flask) -> None:
    reader = _client(app, "reader", scopes=["read"], reach="all")
    submitter = _client(app, "submitter", scopes=["submit"])
    with app.app_context():
        task_id = AsyncTaskService().submit_task("NOOP", {}, run_at="2999-01-01T00:00:00Z").id
    before = snapshot(app)
    error = _json_error(reader.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {}}), 403, "forbidden")
    assert "'submit' scope" in error["message"]
    _json_error(reader.call("POST", f"/api/tasks/{task_id}/cancel"), 403, "forbidden")
    _json_error(reader.call("POST", "/api/tasks/batch", {"tasks": []}), 403, "forbidden")
    _json_error(submitter.call("GET", "/api/tasks"), 403, "forbidden")
    _json_error(submitter.call("GET", "/api/task-types"), 403, "forbidden")
    assert [t for t in changed_tables(before, snapshot(app)) if t != "api_token"] == []
    assert reader.call("GET", f"/api/tasks/{task_id}").status_code == 200
    assert submitter.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {}}).status_code == 202


def test_tokens_from_before_the_migration_keep_every_scope_and_task(app: Flask) -> None:
    """A row written as the old schema wrote it (no scope or reach given) gets the server defaults."""
    legacy_secret = "tdk_legacy-token-from-before-scopes"
    with app.app_context():
        from webapp.accounts.tokens import hash_token

        db.session.execute(text("INSERT INTO api_token (name, token_hash, created_at) VALUES "
                                "('legacy', :hash, CURRENT_TIMESTAMP)"), {"hash": hash_token(legacy_secret)})
        task_id = AsyncTaskService().submit_task("NOOP", {}, run_at="2999-01-01T00:00:00Z").id
        db.session.commit()
    legacy = Client("legacy", legacy_secret, app.test_client())
    assert legacy.call("GET", f"/api/tasks/{task_id}").status_code == 200
    assert legacy.call("POST", f"/api/tasks/{task_id}/cancel").status_code == 200
    # An admin narrows it: from the next request on, it reaches its own tasks only.
    with app.app_context():
        update_token("legacy", actor="cli:admin", reach="own", scopes=["read"])
    _json_error(legacy.call("GET", f"/api/tasks/{task_id}"), 404, "not_found")
    _json_error(legacy.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {}}), 403, "forbidden")


def test_the_cli_grants_scopes_and_reach_explicitly(app: Flask) -> None:
    runner = app.test_cli_runner()
    created = runner.invoke(args=["tokens", "create", "billing", "--scope", "submit", "--scope", "read"])
    assert created.exit_code == 0, created.output
    assert "scopes submit,read, reach own" in created.output
    wide = runner.invoke(args=["tokens", "create", "ops", "--scope", "read", "--reach", "all"])
    assert wide.exit_code == 0, wide.output
    listed = runner.invoke(args=["tokens", "list"]).output
    assert "billing\tactive" in listed and "\tsubmit,read\town" in listed and "\tread\tall" in listed
    refused = runner.invoke(args=["tokens", "create", "bad", "--reach", "everything"])
    assert refused.exit_code != 0
    narrowed = runner.invoke(args=["tokens", "update", "ops", "--reach", "own", "--allow-recipient", "example.com",
                                   "--notifications-per-hour", "5"])
    assert narrowed.exit_code == 0, narrowed.output
    assert "reach own" in narrowed.output and "recipients example.com" in narrowed.output
    assert runner.invoke(args=["tokens", "update", "ops"]).exit_code == 1  # nothing to change
    assert runner.invoke(args=["tokens", "update", "nobody", "--reach", "all"]).exit_code == 1


def test_cli_submits_record_the_cli_principal(app: Flask) -> None:
    runner = app.test_cli_runner()
    done = runner.invoke(args=["tasks", "submit", "NOOP", "--created-by", "ops@example.com"])
    assert done.exit_code == 0, done.output
    with app.app_context():
        task = db.session.get(AsyncTask, int(done.output.strip().splitlines()[-1]))
        assert task is not None and (task.principal, task.created_by) == ("cli", "ops@example.com")


# -- item 2: whom a token may mail -------------------------------------------------------------


def test_a_restricted_token_may_only_name_allowed_recipients(app: Flask) -> None:
    billing = _client(app, "billing", allowed_recipients=["example.com", "boss@partner.org"])
    before = snapshot(app)
    for body, field in (
        ({"created_by": "target@victim.example"}, "created_by"),
        ({"created_by": "boss2@partner.org"}, "created_by"),
        ({"created_by": "x@example.com.evil.org"}, "created_by"),
        ({"notify_url": "https://hooks.victim.example/x"}, "notify_url"),
    ):
        error = _json_error(billing.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {}, **body}),
                            422, "invalid_argument")
        assert error["field"] == field
    batch = billing.call("POST", "/api/tasks/batch", {"tasks": [
        {"task_type": "NOOP", "payload": {}, "created_by": "ok@example.com"},
        {"task_type": "NOOP", "payload": {}, "created_by": "target@victim.example"}]})
    assert _json_error(batch, 422, "invalid_argument")["field"] == "tasks[1].created_by"
    assert [t for t in changed_tables(before, snapshot(app)) if t != "api_token"] == []

    for created_by in ("ok@example.com", "a@mail.example.com", "boss@partner.org", "no-address"):
        assert billing.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {},
                                                   "created_by": created_by}).status_code == 202
    # Unrestricted tokens are unchanged.
    assert _client(app, "free").call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {},
                                                            "created_by": "any@where.example"}).status_code == 202


def test_notifications_past_a_tokens_hourly_limit_are_skipped_with_the_reason(make_app: Callable[..., Flask]) -> None:
    from tests.conftest import wait_until
    from webapp.tasks.consumer import Consumer
    from webapp.tasks.models import Notification

    app = make_app("sqlite")
    limited = _client(app, "newsletter", notifications_per_hour=2)
    free = _client(app, "free")
    ids = [limited.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {},
                                               "created_by": f"user{i}@example.com"}).get_json()["id"]
           for i in range(4)]
    other = free.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {},
                                             "created_by": "someone@example.com"}).get_json()["id"]
    consumer = Consumer(app, concurrency=1).start()  # one at a time: the limit is exact then
    try:
        def notified() -> list[Notification]:
            with app.app_context():
                rows = list(db.session.scalars(select(Notification).order_by(Notification.task_id)))
                db.session.remove()
                return rows if len(rows) == 5 else []
        rows = wait_until(notified, timeout=30, message="five notifications written")
    finally:
        consumer.stop(grace=2)
    by_task = {row.task_id: row for row in rows}
    skipped = [task_id for task_id in ids if by_task[task_id].status == "SKIPPED"]
    assert len(skipped) == 2, [(row.task_id, row.status, row.last_error) for row in rows]
    for task_id in skipped:
        assert "token 'newsletter' may send 2 notification(s) per hour" in (by_task[task_id].last_error or "")
    assert by_task[other].status != "SKIPPED"  # another token's tasks are not counted


def test_the_console_shows_the_principal_and_the_tokens_permissions(app: Flask) -> None:
    from tests.console_support import logged_in_client

    alice = _client(app, "alice", scopes=["submit", "read"])
    task_id = alice.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {},
                                                "created_by": "someone@example.com"}).get_json()["id"]
    admin, _ = logged_in_client(app, "admin", "root")
    page = admin.get(f"/tasks/{task_id}").text
    assert "token:alice" in page and "someone@example.com" in page  # fields and the SUBMITTED actor
    tokens = admin.get("/admin/tokens").text
    assert "submit,read" in tokens and "own tasks" in tokens


def test_edit_and_retry_in_the_console_records_the_user_as_principal(app: Flask) -> None:
    from tests.console_support import logged_in_client

    failed_id = failed_task(app)
    operator, csrf = logged_in_client(app, "operator", "olga")
    answer = operator.post(f"/tasks/{failed_id}/edit-retry", data={"csrf_token": csrf, "payload": '{"fixed": 1}'})
    assert answer.status_code in (200, 302, 303), answer.text[:500]
    with app.app_context():
        child = db.session.scalars(select(AsyncTask).where(AsyncTask.parent_id == failed_id)).one()
        assert child.principal == "user:olga"
        event = db.session.scalars(select(TaskEvent).where(TaskEvent.task_id == child.id,
                                                           TaskEvent.kind == "SUBMITTED")).one()
        assert event.actor == "user:olga"


def test_task_type_counts_are_the_tokens_own_unless_it_reaches_all(app: Flask) -> None:
    alice, mallory = _client(app, "alice"), _client(app, "mallory")
    for _ in range(3):
        alice.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {}, "run_at": "2999-01-01T00:00:00Z"})
    mallory.call("POST", "/api/tasks", {"task_type": "NOOP", "payload": {}, "run_at": "2999-01-01T00:00:00Z"})

    def noop_pending(client: Client) -> int:
        items = client.call("GET", "/api/task-types").get_json()["items"]
        return next(item["counts"]["PENDING"] for item in items if item["task_type"] == "NOOP")

    assert (noop_pending(alice), noop_pending(mallory)) == (3, 1)
    assert noop_pending(_client(app, "ops", reach="all", scopes=["read"])) == 4
