"""Flow control over the API on real SQLite and PostgreSQL: GET /api/limits, runtime overrides (PUT)."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import select

from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.limit_models import TaskLimitOverride
from webapp.tasks.models import AuditEntry

from .conftest import wait_until

PROCESSORS = ["tests.processors", "tests.limit_processors"]


@pytest.fixture
def limited_app(make_app, backend) -> Flask:
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)


def _headers(app: Flask, name: str = "ops-client", scopes: str | None = None) -> dict[str, str]:
    with app.app_context():
        _, secret = create_token(name, reach="all", scopes=scopes)
    return {"Authorization": f"Bearer {secret}"}


def _claimed(app: Flask, worker: str = "w") -> list[int]:
    with app.app_context():
        ids = [task.id for task in AsyncTaskService().claim_due_tasks(worker, 50)]
        db.session.remove()
    return ids


def test_get_limits_shows_each_limit_with_what_runs_and_waits(limited_app):
    with limited_app.app_context():
        service = AsyncTaskService()
        for customer in (1, 1, 1, 2):
            service.submit_task("PER_CUSTOMER", {"customer_id": customer})
        db.session.remove()
    assert len(_claimed(limited_app)) == 3  # two of customer 1, one of customer 2
    client, headers = limited_app.test_client(), _headers(limited_app)
    listed = client.get("/api/limits", headers=headers)
    assert listed.status_code == 200
    by_type = {item["task_type"]: item for item in listed.get_json()["items"]}
    assert {"PER_CUSTOMER", "RATED", "ONE_AT_A_TIME", "DEBOUNCED_REPORT"} <= set(by_type)
    assert "NOOP" not in by_type  # no limit, no override
    per_customer = by_type["PER_CUSTOMER"]
    assert (per_customer["concurrency"], per_customer["concurrency_key"]) == (2, "customer_id")
    assert per_customer["running"] == [{"key": "1", "running": 2}, {"key": "2", "running": 1}]
    assert per_customer["waiting"] == 1 and per_customer["override"] is None
    rated = client.get("/api/task-types/RATED/limits", headers=headers).get_json()
    assert rated["rate"] == {"count": 3, "per_seconds": 1.0} and rated["starts_in_window"] == 0
    assert client.get("/api/task-types/NOPE/limits", headers=headers).status_code == 404


def test_an_override_is_stored_audited_and_followed_by_the_claim(limited_app):
    client, headers = limited_app.test_client(), _headers(limited_app)
    with limited_app.app_context():
        ids = [AsyncTaskService().submit_task("PER_CUSTOMER", {"customer_id": 5}).id for _ in range(4)]
        db.session.remove()
    answer = client.put("/api/task-types/PER_CUSTOMER/limits", json={"concurrency": 1}, headers=headers)
    assert answer.status_code == 200
    body = answer.get_json()
    assert body["concurrency"] == 1 and body["declared"]["concurrency"] == 2
    assert body["override"] == {"concurrency": 1, "rate": None, "time_limit": None,
                                "updated_by": "api:ops-client"}
    assert _claimed(limited_app) == ids[:1]
    # A type without limits can get a rate at runtime.
    assert client.put("/api/task-types/NOOP/limits", json={"rate": {"count": 2, "per_seconds": 60}},
                      headers=headers).status_code == 200
    with limited_app.app_context():
        noop = [AsyncTaskService().submit_task("NOOP", {}).id for _ in range(3)]
        db.session.remove()
    assert _claimed(limited_app) == noop[:2]
    # Every field null: back to the processor's limits.
    assert client.put("/api/task-types/PER_CUSTOMER/limits", json={"concurrency": None, "rate": None},
                      headers=headers).get_json()["concurrency"] == 2
    assert _claimed(limited_app) == ids[1:2]
    with limited_app.app_context():
        actions = db.session.scalars(select(AuditEntry.target_id).where(AuditEntry.action == "limits.override")
                                     .order_by(AuditEntry.id)).all()
        assert actions == ["PER_CUSTOMER", "NOOP", "PER_CUSTOMER"]
        assert db.session.scalars(select(TaskLimitOverride.task_type)).all() == ["NOOP"]


@pytest.mark.parametrize(("body", "field"), [
    ({"concurrency": 0}, "concurrency"),
    ({"concurrency": -2}, "concurrency"),
    ({"concurrency": 1.5}, "concurrency"),
    ({"concurrency": True}, "concurrency"),
    ({"rate": {"count": 0, "per_seconds": 1}}, "rate.count"),
    ({"rate": {"count": 5, "per_seconds": 0}}, "rate.per_seconds"),
    ({"rate": {"count": 5, "per_seconds": "1"}}, "rate.per_seconds"),
    ({"rate": 10}, "rate"),
    ({"time_limit": -1}, "time_limit"),
    ({"time_limit": 0}, "time_limit"),
    ({"time_limit": "5"}, "time_limit"),
    ({"soft_time_limit": 5}, "soft_time_limit"),
])
def test_a_bad_override_is_a_422_naming_the_field_and_nothing_changes(limited_app, body, field):
    client, headers = limited_app.test_client(), _headers(limited_app)
    answer = client.put("/api/task-types/PER_CUSTOMER/limits", json=body, headers=headers)
    assert answer.status_code == 422 and answer.get_json()["error"]["field"] == field
    with limited_app.app_context():
        assert db.session.scalars(select(TaskLimitOverride)).all() == []
        assert db.session.scalars(select(AuditEntry).where(AuditEntry.action == "limits.override")).all() == []


def test_overrides_need_the_operate_scope_and_a_known_type(limited_app):
    client = limited_app.test_client()
    reader = _headers(limited_app, "reader", scopes="read")
    assert client.get("/api/limits", headers=reader).status_code == 200
    assert client.put("/api/task-types/RATED/limits", json={"concurrency": 1}, headers=reader).status_code == 403
    operator = _headers(limited_app, "operator")
    assert client.put("/api/task-types/NOPE/limits", json={"concurrency": 1}, headers=operator).status_code == 404


def test_every_process_follows_an_override_within_seconds(make_app):
    changed, other = make_app("postgres", ASYNC_TASK_PROCESSORS=PROCESSORS), \
        make_app("postgres", ASYNC_TASK_PROCESSORS=PROCESSORS)
    with other.app_context():
        ids = [AsyncTaskService().submit_task("ONE_AT_A_TIME", {}).id for _ in range(3)]
        db.session.remove()
    assert _claimed(other) == ids[:1]  # the other process has read (and cached) the limits
    with changed.app_context():
        AsyncTaskService().set_limit_override("ONE_AT_A_TIME", {"concurrency": 3}, actor="ops")
        db.session.remove()
    assert sorted(wait_until(lambda: _claimed(other), timeout=5, interval=0.2, message="override followed")) == ids[1:]


def test_a_time_limit_override_applies_and_shows_beside_the_declared_one(limited_app):
    client, headers = limited_app.test_client(), _headers(limited_app)
    answer = client.put("/api/task-types/PER_CUSTOMER/limits", json={"time_limit": 30}, headers=headers)
    assert answer.status_code == 200
    body = answer.get_json()
    assert (body["time_limit"], body["declared"]["time_limit"], body["override"]["time_limit"]) == (30, None, 30)
    assert body["concurrency"] == 2  # the other limits keep the processor's values
    with limited_app.app_context():
        assert AsyncTaskService().limits_overview("PER_CUSTOMER")[0]["time_limit"] == 30
        db.session.remove()
