"""The JSON API on real SQLite and PostgreSQL: every endpoint and every error status."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from webapp.accounts.tokens import create_token, revoke_token
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.models import AsyncTask, AuditEntry, TaskEvent, utcnow
from webapp.tasks.serialize import iso


@dataclass
class Api:
    """A test client that sends one token's bearer header."""

    app: Flask
    client: FlaskClient
    token: str
    name: str

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}", **extra}

    def get(self, path: str, **kwargs: Any) -> TestResponse:
        return self.client.get(path, headers=self.headers(), **kwargs)

    def post(self, path: str, body: Any = None, **kwargs: Any) -> TestResponse:
        if body is not None:
            kwargs["json"] = body
        return self.client.post(path, headers=self.headers(), **kwargs)

    def submit(self, **fields: Any) -> TestResponse:
        body = {"task_type": "NOOP", "payload": {}, **fields}
        return self.post("/api/tasks", body)


def _api_for(app: Flask, name: str) -> Api:
    with app.app_context():
        _, secret = create_token(name, reach="all")  # the behaviour of every token before scopes
    return Api(app, app.test_client(), secret, name)


@pytest.fixture
def api(app: Flask) -> Api:
    return _api_for(app, "billing-service")


def _task_count(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(AsyncTask)) or 0


def _error(response: TestResponse, status: int, code: str | None = None, field: str | None = None) -> dict:
    """Assert a JSON error of the API's one shape, and return its inner object."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    assert b"<html" not in response.data.lower()
    error = response.get_json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    if field is not None:
        assert error.get("field") == field
    return error


def _failed_task(app: Flask) -> int:
    """A task in FAILURE, reached through the service the way a worker reaches it."""
    with app.app_context():
        service = AsyncTaskService()
        task_id = service.submit_task("FATAL", {}).id
        [claimed] = service.claim_due_tasks("test-worker", 1, ["FATAL"])
        service.finish_task(claimed, TaskResult.failure("bad input", retryable=False), worker_id="test-worker")
        assert service.require_task(task_id).status == "FAILURE"
        return task_id


# -- submit ------------------------------------------------------------------------------------


def test_submit_returns_202_the_task_and_its_location(api: Api) -> None:
    response = api.submit(payload={"n": 1}, priority=5)
    assert response.status_code == 202
    task = response.get_json()
    assert response.headers["Location"] == f"/api/tasks/{task['id']}"
    assert task["task_type"] == "NOOP" and task["status"] == "PENDING" and task["priority"] == 5
    assert task["payload"] == {"n": 1} and task["retry_count"] == 0 and task["result"] is None
    assert task["created_at"].endswith("Z") and task["next_run_at"].endswith("Z")
    for column in ("id", "task_type", "status", "priority", "payload", "result", "retry_count",
                   "max_retry_count", "retry_strategy", "retry_interval", "created_by", "created_at",
                   "updated_at", "started_at", "finished_at", "next_run_at", "error"):
        assert column in task
    read_back = api.get(response.headers["Location"]).get_json()
    # Only a single task's GET says why it waits (it costs queries a submit should not pay).
    assert read_back.pop("waiting_reason") is None
    assert read_back == task


def test_created_by_defaults_to_the_token_name(api: Api) -> None:
    assert api.submit().get_json()["created_by"] == "billing-service"
    assert api.submit(created_by=None).get_json()["created_by"] == "billing-service"
    assert api.submit(created_by="ops@example.com").get_json()["created_by"] == "ops@example.com"


def test_submit_with_a_payload_type_and_derived_priority(api: Api) -> None:
    rush = api.post("/api/tasks", {"task_type": "ORDER", "payload": {"customer": "ada", "amount": 3, "rush": True}})
    assert rush.status_code == 202 and rush.get_json()["priority"] == 10
    plain = api.post("/api/tasks", {"task_type": "ORDER", "payload": {"customer": "bob", "amount": 1}})
    assert plain.get_json()["priority"] == 0
    assert plain.get_json()["payload"] == {"customer": "bob", "amount": 1}


def test_run_at_and_notify_url_are_kept(api: Api) -> None:
    later = (utcnow() + timedelta(hours=2)).replace(microsecond=0)
    task = api.submit(run_at=iso(later), notify_url="https://hooks.example.com/done").get_json()
    assert task["next_run_at"] == iso(later)
    assert task["notify_url"] == "https://hooks.example.com/done"


def test_same_idempotency_key_from_the_same_token_returns_the_existing_task(app: Flask, api: Api) -> None:
    first = api.submit(idempotency_key="order-42", payload={"v": 1})
    assert first.status_code == 202
    again = api.submit(idempotency_key="order-42", payload={"v": 1})
    assert again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Location"] == first.headers["Location"]

    other = _api_for(app, "other-service")
    theirs = other.submit(idempotency_key="order-42", payload={"v": 1})
    assert theirs.status_code == 202 and theirs.get_json()["id"] != first.get_json()["id"]
    assert api.submit(idempotency_key="order-43").status_code == 202
    assert _task_count(app) == 3


def test_concurrent_submits_with_one_idempotency_key_create_one_task(app: Flask, api: Api) -> None:
    barrier = threading.Barrier(6)
    results: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def submit() -> None:
        try:
            client = app.test_client()
            barrier.wait(timeout=10)
            response = client.post("/api/tasks", headers=api.headers(),
                                   json={"task_type": "NOOP", "payload": {}, "idempotency_key": "race"})
            results.append((response.status_code, response.get_json()["id"]))
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)

    threads = [threading.Thread(target=submit) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert sorted(status for status, _ in results) == [200] * 5 + [202]
    assert len({task_id for _, task_id in results}) == 1
    assert _task_count(app) == 1


# -- read --------------------------------------------------------------------------------------


def test_get_task_200_and_404(api: Api) -> None:
    task_id = api.submit().get_json()["id"]
    assert api.get(f"/api/tasks/{task_id}").get_json()["id"] == task_id
    _error(api.get(f"/api/tasks/{task_id + 1000}"), 404, "not_found")
    _error(api.get("/api/tasks/99999999999999999999999"), 404, "not_found")
    _error(api.get("/api/tasks/abc"), 404, "not_found")


def _all_pages(api: Api, query: str, limit: int) -> list[int]:
    ids: list[int] = []
    url = f"/api/tasks?limit={limit}{query}"
    for _ in range(100):  # bounded: a cursor that never ends must fail the test, not hang it
        page = api.get(url)
        assert page.status_code == 200, page.get_json()
        body = page.get_json()
        assert len(body["items"]) <= limit
        ids.extend(item["id"] for item in body["items"])
        if body["next_cursor"] is None:
            return ids
        url = f"/api/tasks?limit={limit}{query}&cursor={body['next_cursor']}"
    raise AssertionError("pagination did not end")


def test_pagination_walks_every_task_once_newest_first(app: Flask, api: Api) -> None:
    with app.app_context():
        AsyncTaskService().submit_many([{"task_type": "NOOP", "payload": {"i": i}} for i in range(23)])
    ids = _all_pages(api, "", limit=5)
    assert len(ids) == 23 and len(set(ids)) == 23
    assert ids == sorted(ids, reverse=True)
    assert _all_pages(api, "", limit=23) == ids
    assert _all_pages(api, "", limit=500) == ids
    first = api.get("/api/tasks").get_json()
    assert len(first["items"]) == 23 and first["next_cursor"] is None  # default limit 50


def test_list_filters(app: Flask, api: Api) -> None:
    noop = api.submit().get_json()["id"]
    order = api.post("/api/tasks", {"task_type": "ORDER", "payload": {"customer": "c", "amount": 1}}).get_json()["id"]
    cancelled = api.submit(created_by="someone@example.com").get_json()["id"]
    assert api.post(f"/api/tasks/{cancelled}/cancel").status_code == 200
    failed = _failed_task(app)

    def ids(query: str) -> list[int]:
        response = api.get(f"/api/tasks?{query}")
        assert response.status_code == 200, response.get_json()
        return [item["id"] for item in response.get_json()["items"]]

    assert ids("task_type=ORDER") == [order]
    assert ids("status=PENDING") == [order, noop]
    assert ids("status=CANCELLED&status=FAILURE") == [failed, cancelled]
    assert ids("created_by=someone@example.com") == [cancelled]
    assert ids("created_by=billing-service&status=PENDING") == [order, noop]
    assert ids("task_type=&created_by=") == [failed, cancelled, order, noop]  # empty means no filter
    now = utcnow()
    assert ids(f"created_after={iso(now - timedelta(minutes=5))}") == [failed, cancelled, order, noop]
    assert ids(f"created_after={iso(now + timedelta(minutes=5))}") == []
    assert ids(f"created_before={iso(now + timedelta(minutes=5))}&limit=2") == [failed, cancelled]
    assert ids(f"created_before={iso(now - timedelta(minutes=5))}") == []


@pytest.mark.parametrize(("query", "field"), [
    ("limit=0", "limit"),
    ("limit=501", "limit"),
    ("limit=ten", "limit"),
    ("limit=", "limit"),
    ("status=pending", "status"),
    ("status=DONE", "status"),
    ("cursor=not-a-cursor", "cursor"),
    ("cursor=MA", "cursor"),  # base64 of "0": well-formed, but no id is 0
    ("cursor=%2F%2F", "cursor"),
    ("created_after=yesterday", "created_after"),
    ("created_before=2026-01-01T00:00:00", "created_before"),  # no time zone
    ("created_after=9999-12-31T23:59:59-01:00", "created_after"),  # past the end of time in UTC
    ("task_type=a%00b", "task_type"),
    ("limit=5&limit=6", "limit"),
])
def test_bad_list_parameters_are_422_naming_the_parameter(api: Api, query: str, field: str) -> None:
    _error(api.get(f"/api/tasks?{query}"), 422, field=field)


@pytest.mark.parametrize("path", [
    "/api/exports/audit?action=task%00", "/api/exports/audit?actor=a%00b",
    "/api/exports/notifications?recipient=a%00b", "/api/exports/tasks?q=a%00b",
    "/api/schedules?q=%00", "/api/workflows?name=a%00", "/api/tasks?search=%00",
])
def test_nul_in_any_query_parameter_is_a_422_naming_it(app: Flask, api: Api, path: str) -> None:
    """PostgreSQL cannot compare text holding NUL: every endpoint's filters refuse it up front."""
    field = path.split("?")[1].split("=")[0]
    _error(api.get(path), 422, field=field)
    with app.app_context():  # and the refusal left nothing behind (an export would audit itself)
        assert not db.session.scalars(select(AuditEntry).where(AuditEntry.action.like("export%"))).all()


# -- cancel and retry --------------------------------------------------------------------------


def test_cancel_200_then_409_and_404(app: Flask, api: Api) -> None:
    task_id = api.submit().get_json()["id"]
    cancelled = api.post(f"/api/tasks/{task_id}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.get_json()["status"] == "CANCELLED" and cancelled.get_json()["finished_at"]
    error = _error(api.post(f"/api/tasks/{task_id}/cancel"), 409, "invalid_transition")
    assert error["current_status"] == "CANCELLED" and "CANCELLED" in error["message"]
    _error(api.post(f"/api/tasks/{task_id + 1000}/cancel"), 404, "not_found")
    with app.app_context():
        audit = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "task.cancel")
                                   .order_by(AuditEntry.id)).all()
        assert [(row.actor, row.target_id, row.outcome) for row in audit] == [
            ("api:billing-service", str(task_id), "ok"), ("api:billing-service", str(task_id), "refused")]
        events = db.session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id)).all()
        assert any(event.kind == "CANCELLED" and event.actor == "api:billing-service" for event in events)


def test_retry_a_failure_200_then_409_and_404(app: Flask, api: Api) -> None:
    task_id = _failed_task(app)
    retried = api.post(f"/api/tasks/{task_id}/retry")
    assert retried.status_code == 200
    assert retried.get_json()["status"] == "PENDING" and retried.get_json()["retry_count"] == 0
    error = _error(api.post(f"/api/tasks/{task_id}/retry"), 409, "invalid_transition")
    assert error["current_status"] == "PENDING"
    _error(api.post(f"/api/tasks/{task_id + 1000}/retry"), 404, "not_found")
    _error(api.post("/api/tasks/99999999999999999999999/retry"), 404, "not_found")


# -- batch -------------------------------------------------------------------------------------


def test_batch_submits_all_in_order(api: Api) -> None:
    items = [{"task_type": "NOOP", "payload": {"i": i}} for i in range(3)]
    items.append({"task_type": "ORDER", "payload": {"customer": "x", "amount": 2, "rush": True},
                  "created_by": "shop@example.com"})
    response = api.post("/api/tasks/batch", {"tasks": items})
    assert response.status_code == 202
    tasks = response.get_json()["items"]
    assert [task["payload"] for task in tasks] == [item["payload"] for item in items]
    assert [task["created_by"] for task in tasks] == ["billing-service"] * 3 + ["shop@example.com"]
    assert tasks[3]["priority"] == 10
    listed = api.get("/api/tasks").get_json()["items"]
    assert sorted(task["id"] for task in listed) == sorted(task["id"] for task in tasks)


def test_batch_is_all_or_nothing(app: Flask, api: Api) -> None:
    items = [{"task_type": "NOOP", "payload": {}},
             {"task_type": "ORDER", "payload": {"customer": "x", "amount": "many"}}]
    _error(api.post("/api/tasks/batch", {"tasks": items}), 422, "invalid_payload", "tasks[1].payload.amount")
    _error(api.post("/api/tasks/batch", {"tasks": [{"task_type": "NOPE", "payload": {}}]}),
           422, "unknown_task_type", "tasks[0].task_type")
    _error(api.post("/api/tasks/batch", {"tasks": [{"task_type": "NOOP", "payload": {}, "parent_id": 1}]}),
           422, field="tasks[0].parent_id")  # batch items take idempotency_key since issue 14
    _error(api.post("/api/tasks/batch", {"tasks": ["NOOP"]}), 422, field="tasks[0]")
    _error(api.post("/api/tasks/batch", {"tasks": []}), 422, field="tasks")
    _error(api.post("/api/tasks/batch", {"tasks": {"task_type": "NOOP"}}), 422, field="tasks")
    _error(api.post("/api/tasks/batch", {}), 422, field="tasks")
    too_many = [{"task_type": "NOOP", "payload": {}}] * 1001
    _error(api.post("/api/tasks/batch", {"tasks": too_many}), 422, field="tasks")
    assert _task_count(app) == 0


def test_batch_of_1000_is_accepted(app: Flask, api: Api) -> None:
    response = api.post("/api/tasks/batch", {"tasks": [{"task_type": "NOOP", "payload": {"i": i}} for i in range(1000)]})
    assert response.status_code == 202 and len(response.get_json()["items"]) == 1000
    assert _task_count(app) == 1000


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "code", "field"), [
    ({"payload": {}}, "invalid_argument", "task_type"),
    ({"task_type": "NOOP"}, "invalid_argument", "payload"),
    ({"task_type": 7, "payload": {}}, "invalid_argument", "task_type"),
    ({"task_type": "NOPE", "payload": {}}, "unknown_task_type", "task_type"),
    ({"task_type": "NOOP", "payload": []}, "invalid_payload", "payload"),
    ({"task_type": "ORDER", "payload": {"customer": "x"}}, "invalid_payload", "payload.amount"),
    ({"task_type": "ORDER", "payload": {"customer": "x", "amount": 1, "colour": "red"}}, "invalid_payload",
     "payload.colour"),
    ({"task_type": "NOOP", "payload": {}, "priority": "high"}, "invalid_argument", "priority"),
    ({"task_type": "NOOP", "payload": {}, "priority": 2**31}, "invalid_argument", "priority"),
    ({"task_type": "NOOP", "payload": {}, "priority": True}, "invalid_argument", "priority"),
    ({"task_type": "NOOP", "payload": {}, "run_at": "tomorrow"}, "invalid_argument", "run_at"),
    ({"task_type": "NOOP", "payload": {}, "run_at": "9999-12-31T23:59:59-01:00"}, "invalid_argument", "run_at"),
    ({"task_type": "NOOP", "payload": {}, "created_by": ["a"]}, "invalid_argument", "created_by"),
    ({"task_type": "NOOP", "payload": {}, "created_by": "x" * 256}, "invalid_argument", "created_by"),
    ({"task_type": "NOOP", "payload": {}, "idempotency_key": ""}, "invalid_argument", "idempotency_key"),
    ({"task_type": "NOOP", "payload": {}, "notify_url": "ftp://x"}, "invalid_argument", "notify_url"),
    ({"task_type": "NOOP", "payload": {}, "prio": 1}, "invalid_argument", "prio"),
    ({"task_type": "NOOP", "payload": {"text": "a\x00b"}}, "invalid_argument", "payload.text"),
    ({"task_type": "NOOP", "payload": {}, "created_by": "nul\x00"}, "invalid_argument", "created_by"),
])
def test_invalid_submissions_are_422_naming_the_field_and_write_nothing(
        app: Flask, api: Api, body: dict, code: str, field: str) -> None:
    _error(api.post("/api/tasks", body), 422, code, field)
    assert _task_count(app) == 0


@pytest.mark.parametrize("raw", [b"{bad json", b"", b"   ", b'{"task_type": "NOOP", "payload": {"x": NaN}}',
                                 b'{"task_type": "NOOP"', b"\xff\xfe\x00garbage", b"1" * 5000])
def test_malformed_json_is_400(app: Flask, api: Api, raw: bytes) -> None:
    response = api.client.post("/api/tasks", data=raw, headers=api.headers(**{"Content-Type": "application/json"}))
    _error(response, 400, "malformed_json")
    assert _task_count(app) == 0


@pytest.mark.parametrize("body", [[], "text", 3, None])
def test_a_body_that_is_not_an_object_is_422(api: Api, body: Any) -> None:
    response = api.client.post("/api/tasks", data=json.dumps(body), headers=api.headers(),
                               content_type="application/json")
    _error(response, 422, "invalid_argument")


def test_deep_nesting_is_422_not_a_crash(app: Flask, api: Api) -> None:
    def nested(depth: int) -> dict:
        value: dict = {}
        for _ in range(depth):
            value = {"a": value}
        return value

    assert api.submit(payload=nested(60)).status_code == 202
    _error(api.submit(payload=nested(70)), 422, "invalid_argument")
    hostile = b'{"task_type": "NOOP", "payload": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    response = api.client.post("/api/tasks", data=hostile, headers=api.headers(), content_type="application/json")
    _error(response, 422, "invalid_argument")
    assert _task_count(app) == 1


def test_body_over_the_limit_is_413(app: Flask, api: Api) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit == 1024 * 1024
    body = json.dumps({"task_type": "NOOP", "payload": {"blob": "x" * limit}})
    _error(api.client.post("/api/tasks", data=body, headers=api.headers(), content_type="application/json"),
           413, "payload_too_large")
    batch = json.dumps({"tasks": [{"task_type": "NOOP", "payload": {"blob": "x" * 2000}}] * 600})
    _error(api.client.post("/api/tasks/batch", data=batch, headers=api.headers(), content_type="application/json"),
           413, "payload_too_large")
    assert _task_count(app) == 0


def test_configured_body_limit_is_honoured(make_app: Callable[..., Flask], backend: str) -> None:
    app = make_app(backend, MAX_CONTENT_LENGTH=2048)
    api = _api_for(app, "small")
    assert api.submit(payload={"blob": "x" * 1000}).status_code == 202
    _error(api.submit(payload={"blob": "x" * 3000}), 413, "payload_too_large")


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/tasks"), ("POST", "/api/tasks"), ("POST", "/api/tasks/batch"), ("GET", "/api/tasks/1"),
    ("POST", "/api/tasks/1/cancel"), ("POST", "/api/tasks/1/retry"),
])
def test_every_call_needs_a_valid_token(app: Flask, api: Api, method: str, path: str) -> None:
    client = app.test_client()
    body = {"task_type": "NOOP", "payload": {}}
    missing = client.open(path, method=method, json=body)
    assert _error(missing, 401, "unauthorized")
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    for header in (f"Bearer {api.token}x", f"Basic {api.token}", "Bearer", api.token, "Bearer  "):
        _error(client.open(path, method=method, json=body, headers={"Authorization": header}), 401)
    with app.app_context():
        revoke_token(api.name)
    _error(client.open(path, method=method, json=body, headers=api.headers()), 401, "invalid_token")
    assert _task_count(app) == 0


def test_a_used_token_records_its_last_use(app: Flask, api: Api) -> None:
    from webapp.accounts.models import ApiToken

    assert api.get("/api/tasks").status_code == 200
    with app.app_context():
        last_used = db.session.scalars(select(ApiToken.last_used_at).where(ApiToken.name == api.name)).one()
    assert last_used is not None and utcnow() - last_used < timedelta(seconds=30)


def test_unknown_paths_and_wrong_methods_answer_json(api: Api) -> None:
    _error(api.get("/api/nothing-here"), 404, "not_found")
    _error(api.post("/api/nothing/here"), 404, "not_found")
    _error(api.client.get("/api"), 404, "not_found")
    wrong = api.client.put("/api/tasks", headers=api.headers(), json={})
    _error(wrong, 405, "method_not_allowed")
    assert set(wrong.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    _error(api.client.delete("/api/tasks/1", headers=api.headers()), 405, "method_not_allowed")
    _error(api.get("/api/tasks/1/cancel"), 405, "method_not_allowed")


def test_api_posts_need_no_csrf_token(app: Flask, api: Api) -> None:
    assert app.config["WTF_CSRF_ENABLED"] is True
    assert api.submit().status_code == 202


def test_errors_stay_json_even_when_another_handler_renders_html(make_app: Callable[..., Flask],
                                                                backend: str) -> None:
    app = make_app(backend, PROPAGATE_EXCEPTIONS=False)

    def boom() -> str:
        raise RuntimeError("kaboom")

    app.add_url_rule("/api/_test_boom", "test_boom", boom)
    app.register_error_handler(404, lambda exc: ("<html><body>lost</body></html>", 404))
    client = app.test_client()
    crashed = client.get("/api/_test_boom")
    error = _error(crashed, 500, "internal_error")
    assert "kaboom" not in error["message"]  # internals stay in the log
    _error(client.get("/api/missing"), 404, "not_found")
    assert b"<html" in client.get("/missing-page").data  # outside /api other handlers still rule


# -- OpenAPI -----------------------------------------------------------------------------------


def test_openapi_document_is_public_and_matches_the_routes(app: Flask) -> None:
    response = app.test_client().get("/api/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    assert document["openapi"].startswith("3.1")
    scheme = document["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"bearerAuth": []}]
    assert document["paths"]["/api/openapi.json"]["get"]["security"] == []
    assert "public" in document["info"]["description"]

    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    routed = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)  # <int:task_id> -> {task_id}
            routed |= {(path, method) for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
    assert documented == routed

    for item in document["paths"].values():
        for operation in item.values():
            for status, reply in operation["responses"].items():
                if int(status) >= 400:
                    assert reply["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_openapi_describes_each_task_type_and_its_payload(app: Flask, api: Api) -> None:
    document = api.get("/api/openapi.json").get_json()  # the per-type schemas need a token
    schemas = document["components"]["schemas"]
    submission = schemas["TaskSubmission"]
    assert submission["discriminator"]["propertyName"] == "task_type"  # issue 16: generated clients
    mapping = submission["discriminator"]["mapping"]
    assert submission["oneOf"] == [{"$ref": ref} for ref in mapping.values()]
    variants = {task_type: schemas[ref.rsplit("/", 1)[1]] for task_type, ref in mapping.items()}
    for task_type, variant in variants.items():
        assert variant["properties"]["task_type"] == {"type": "string", "enum": [task_type], "default": task_type}
    registry = app.extensions["async_task"].registry
    assert set(variants) == set(registry.task_types())
    order = variants["ORDER"]["properties"]["payload"]
    assert order["required"] == ["customer", "amount"]
    assert order["properties"]["amount"] == {"type": "integer"}
    assert order["properties"]["tags"] == {"type": "array", "items": {"type": "string"}}
    assert order["additionalProperties"] is False
    assert variants["NOOP"]["properties"]["payload"]["type"] == "object"
    assert "idempotency_key" in variants["NOOP"]["properties"]
    batch_items = document["components"]["schemas"]["TaskBatchSubmission"]["properties"]["tasks"]
    assert batch_items["maxItems"] == 1000
    assert batch_items["items"] == {"$ref": "#/components/schemas/TaskSubmission"}  # the same components
    assert all("idempotency_key" in v["properties"] for v in variants.values())  # issue 14


# -- list previews (issue 10 item 6) -------------------------------------------------------------


def test_list_rows_carry_bounded_previews_and_the_task_carries_everything(app: Flask, api: Api) -> None:
    small = api.submit(payload={"a": 1}).get_json()["id"]
    big_payload = {"blob": "x" * 5000, "n": 2}
    big = api.submit(payload=big_payload).get_json()["id"]
    items = {item["id"]: item for item in api.get("/api/tasks").get_json()["items"]}
    assert items[small]["payload"] == {"a": 1} and items[small]["payload_truncated"] is False
    assert json.loads(items[small]["payload_preview"]) == {"a": 1}
    assert items[big]["payload"] is None and items[big]["payload_truncated"] is True
    assert len(items[big]["payload_preview"]) == 256
    assert items[big]["result"] is None and items[big]["result_truncated"] is False
    assert items[big]["error"] is None and items[big]["error_truncated"] is False
    assert api.get(f"/api/tasks/{big}").get_json()["payload"] == big_payload


def test_a_list_answer_stops_at_its_byte_budget_and_continues(app: Flask, api: Api,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from webapp.api import views

    with app.app_context():
        AsyncTaskService().submit_many([{"task_type": "NOOP", "payload": {"i": i, "pad": "p" * 300}}
                                        for i in range(12)])
    monkeypatch.setattr(views, "LIST_BYTES_BUDGET", 3000)
    first = api.get("/api/tasks?limit=500")
    assert len(first.data) <= 3000 + 100  # the items within the budget, plus the envelope
    assert 1 <= len(first.get_json()["items"]) < 12 and first.get_json()["next_cursor"] is not None
    ids = _all_pages(api, "", limit=500)
    assert len(ids) == 12 and ids == sorted(set(ids), reverse=True)
