"""Unique submits and tightened idempotency on real SQLite and PostgreSQL (service and API)."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.errors import IdempotencyConflict
from webapp.tasks.models import AsyncTask, utcnow

PROCESSORS = ["tests.processors", "tests.limit_processors"]


@pytest.fixture
def limited_app(make_app, backend) -> Flask:
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)


def _count(app: Flask, task_type: str | None = None) -> int:
    with app.app_context():
        query = select(func.count()).select_from(AsyncTask)
        if task_type:
            query = query.where(AsyncTask.task_type == task_type)
        return int(db.session.scalar(query))


def _token(app: Flask) -> dict[str, str]:
    with app.app_context():
        _, secret = create_token("flow-client", reach="all")
    return {"Authorization": f"Bearer {secret}"}


# -- unique --------------------------------------------------------------------------------------


def test_unique_answers_a_matching_waiting_task_and_creates_otherwise(limited_app):
    with limited_app.app_context():
        service = AsyncTaskService()
        first = service.submit("DEBOUNCED_REPORT", {"report": "daily", "requested_by": "a"})
        again = service.submit("DEBOUNCED_REPORT", {"report": "daily", "requested_by": "b"})
        other = service.submit("DEBOUNCED_REPORT", {"report": "weekly"})
        assert (first.created, again.created, other.created) == (True, False, True)
        assert again.task.id == first.task.id and again.task.payload["requested_by"] == "a"
        # Once it started (not PENDING any more) the next request is a new task: a debounce.
        db.session.execute(update(AsyncTask).where(AsyncTask.id == first.task.id).values(status="PROCESSING"))
        db.session.commit()
        later = service.submit("DEBOUNCED_REPORT", {"report": "daily"})
        assert later.created and later.task.id != first.task.id
        # Outside the window: new as well.
        db.session.execute(update(AsyncTask).where(AsyncTask.id == later.task.id)
                           .values(created_at=utcnow().replace(year=2020)))
        db.session.commit()
        assert service.submit("DEBOUNCED_REPORT", {"report": "daily"}).created
    assert _count(limited_app, "DEBOUNCED_REPORT") == 4


def test_unique_over_the_api_answers_200_with_the_existing_task(limited_app):
    client, headers = limited_app.test_client(), _token(limited_app)
    body = {"task_type": "DEBOUNCED_REPORT", "payload": {"report": "daily"}}
    first = client.post("/api/tasks", json=body, headers=headers)
    again = client.post("/api/tasks", json=body, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.get_json()["id"] == first.get_json()["id"]


def test_twenty_concurrent_identical_unique_submits_make_one_task(limited_app):
    barrier = threading.Barrier(20)
    results: list[tuple[int, bool]] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            with limited_app.app_context():
                barrier.wait(timeout=20)
                outcome = AsyncTaskService().submit("DEBOUNCED_REPORT", {"report": "race"})
                results.append((outcome.task.id, outcome.created))
                db.session.remove()
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert len(results) == 20
    assert len({task_id for task_id, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * 19 + [True]
    assert _count(limited_app, "DEBOUNCED_REPORT") == 1


# -- idempotency keys ----------------------------------------------------------------------------


def test_reusing_a_key_for_another_payload_or_type_is_a_409_naming_the_key(limited_app):
    client, headers = limited_app.test_client(), _token(limited_app)
    first = client.post("/api/tasks", headers=headers,
                        json={"task_type": "NOOP", "payload": {"v": 1}, "idempotency_key": "order-42"})
    assert first.status_code == 202
    for body in ({"task_type": "NOOP", "payload": {"v": 2}, "idempotency_key": "order-42"},
                 {"task_type": "SLEEP", "payload": {}, "idempotency_key": "order-42"}):
        refused = client.post("/api/tasks", json=body, headers=headers)
        assert refused.status_code == 409
        error = refused.get_json()["error"]
        assert error["field"] == "idempotency_key" and "'order-42'" in error["message"]
    same = client.post("/api/tasks", headers=headers,
                       json={"task_type": "NOOP", "payload": {"v": 1}, "idempotency_key": "order-42"})
    assert same.status_code == 200 and same.get_json()["id"] == first.get_json()["id"]
    assert _count(limited_app) == 1


def test_a_retried_batch_with_keys_creates_nothing_twice(limited_app):
    client, headers = limited_app.test_client(), _token(limited_app)
    items: list[dict[str, Any]] = [{"task_type": "NOOP", "payload": {"i": i}, "idempotency_key": f"b-{i}"}
                                   for i in range(3)]
    first = client.post("/api/tasks/batch", json={"tasks": items}, headers=headers)
    assert first.status_code == 202
    ids = [task["id"] for task in first.get_json()["items"]]
    # The retry adds one new item and repeats one inside the batch: three old ids, one new.
    retry_items = items + [{"task_type": "NOOP", "payload": {"i": 3}, "idempotency_key": "b-3"},
                           {"task_type": "NOOP", "payload": {"i": 3}, "idempotency_key": "b-3"}]
    again = client.post("/api/tasks/batch", json={"tasks": retry_items}, headers=headers)
    assert again.status_code == 202
    again_ids = [task["id"] for task in again.get_json()["items"]]
    assert again_ids[:3] == ids and again_ids[3] == again_ids[4] and again_ids[3] not in ids
    assert _count(limited_app) == 4


def test_a_batch_reusing_a_key_differently_is_refused_whole(limited_app):
    client, headers = limited_app.test_client(), _token(limited_app)
    client.post("/api/tasks/batch", headers=headers,
                json={"tasks": [{"task_type": "NOOP", "payload": {"i": 0}, "idempotency_key": "k"}]})
    refused = client.post("/api/tasks/batch", headers=headers, json={"tasks": [
        {"task_type": "NOOP", "payload": {"i": 9}, "idempotency_key": "fresh"},
        {"task_type": "NOOP", "payload": {"i": 1}, "idempotency_key": "k"}]})
    assert refused.status_code == 409
    assert refused.get_json()["error"]["field"] == "tasks[1].idempotency_key"
    inside = client.post("/api/tasks/batch", headers=headers, json={"tasks": [
        {"task_type": "NOOP", "payload": {"i": 5}, "idempotency_key": "twice"},
        {"task_type": "NOOP", "payload": {"i": 6}, "idempotency_key": "twice"}]})
    assert inside.status_code == 409 and "'twice'" in inside.get_json()["error"]["message"]
    assert _count(limited_app) == 1


def test_the_service_names_the_key_in_the_conflict(limited_app):
    with limited_app.app_context():
        service = AsyncTaskService()
        service.submit("NOOP", {"n": 1}, idempotency_key="svc")
        with pytest.raises(IdempotencyConflict) as refused:
            service.submit("NOOP", {"n": 2}, idempotency_key="svc")
        assert refused.value.field == "idempotency_key" and "'svc'" in refused.value.message
