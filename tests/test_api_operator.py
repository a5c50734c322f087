"""API of the operator features: cancel of running tasks, progress, edit and retry, task types, search."""

from __future__ import annotations

import pytest
from flask import Flask

from tests.test_api import Api, _api_for
from webapp.tasks import AsyncTaskService, TaskResult


@pytest.fixture
def api(app: Flask) -> Api:
    return _api_for(app, "ops-service")


def _claim(app: Flask):
    with app.app_context():
        return AsyncTaskService().claim_due_tasks("api-test-worker", 1)[0]


def test_cancel_of_a_running_task_is_accepted_as_a_request(app: Flask, api: Api) -> None:
    task_id = api.submit().get_json()["id"]
    _claim(app)
    reply = api.post(f"/api/tasks/{task_id}/cancel")
    assert reply.status_code == 202
    body = reply.get_json()
    assert body["status"] == "PROCESSING" and body["cancel_requested_at"] is not None
    assert api.get(f"/api/tasks/{task_id}").get_json()["cancel_requested_at"] == body["cancel_requested_at"]


def test_progress_fields_are_in_the_task_json(app: Flask, api: Api) -> None:
    body = api.submit().get_json()
    assert body["progress"] is None and body["progress_message"] is None


def test_resubmit_creates_a_linked_task(app: Flask, api: Api) -> None:
    original = api.submit(task_type="ORDER", payload={"customer": "c", "amount": 1}).get_json()["id"]
    refused = api.post(f"/api/tasks/{original}/resubmit", {"payload": {"customer": "c", "amount": 2}})
    assert refused.status_code == 409
    claimed = _claim(app)
    with app.app_context():
        AsyncTaskService().finish_task(claimed, TaskResult.failure("no", retryable=False))
    bad = api.post(f"/api/tasks/{original}/resubmit", {"payload": {"customer": "c", "amount": "two"}})
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "payload.amount"
    assert api.post(f"/api/tasks/{original}/resubmit", {"payload": {}, "extra": 1}).status_code == 422
    reply = api.post(f"/api/tasks/{original}/resubmit", {"payload": {"customer": "c", "amount": 2}})
    assert reply.status_code == 202
    new = reply.get_json()
    assert new["parent_id"] == original and new["payload"]["amount"] == 2
    assert reply.headers["Location"].endswith(f"/api/tasks/{new['id']}")
    assert api.get(f"/api/tasks/{original}").get_json()["payload"]["amount"] == 1
    assert api.post("/api/tasks/999999/resubmit", {"payload": {}}).status_code == 404


def test_task_types_show_pause_state_and_counts(app: Flask, api: Api) -> None:
    api.submit()
    api.submit()
    with app.app_context():
        AsyncTaskService().pause_task_type("NOOP", actor="ops")
    items = {item["task_type"]: item for item in api.get("/api/task-types").get_json()["items"]}
    assert items["NOOP"]["paused"] is True and items["NOOP"]["counts"]["PENDING"] == 2
    assert items["SLEEP"]["paused"] is False and items["SLEEP"]["counts"]["PENDING"] == 0
    assert items["FLAKY"]["retry"] == {"max_retry_count": 3, "strategy": "FIXED", "base_interval": 0.3,
                                       "max_delay": None, "jitter": 0.0}
    assert api.client.get("/api/task-types").status_code == 401


def test_search_parameter(app: Flask, api: Api) -> None:
    hit = api.submit(payload={"customer": "zebra-industries"}).get_json()["id"]
    api.submit(payload={"customer": "other"})
    found = api.get("/api/tasks?search=zebra").get_json()["items"]
    assert [task["id"] for task in found] == [hit]
    assert api.get("/api/tasks?search=" + "x" * 201).status_code == 422


def test_progress_of_a_running_task_through_the_api(app: Flask, api: Api) -> None:
    from tests.conftest import wait_until
    from webapp.tasks.consumer import Consumer

    task_id = api.submit(task_type="STEPS", payload={"steps": 8, "step_seconds": 0.25}).get_json()["id"]
    consumer = Consumer(app, concurrency=1).start()
    try:
        def partial() -> dict | None:
            body = api.get(f"/api/tasks/{task_id}").get_json()
            running = body["status"] == "PROCESSING" and body["progress"] is not None
            return body if running and 0 < body["progress"] < 1 else None

        body = wait_until(partial, timeout=10, message="partial progress in the API")
        assert body["progress_message"].startswith("step ")
        wait_until(lambda: api.get(f"/api/tasks/{task_id}").get_json()["status"] == "SUCCESS",
                   timeout=10, message="success")
    finally:
        consumer.stop(grace=2)
