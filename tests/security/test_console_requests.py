"""Issue 10 items 10, 11, 12, 19: HEAD is GET in every view, control characters in ``next``,
the API's JSON limits in edit-and-retry, webhook credentials never on screen.

Before the fix: ``HEAD /login`` took the POST branch; ``next`` with CR/LF gave a 500 (on the
login redirect and ``POST /language``); edit-and-retry accepted nesting up to ~950 levels
and answered 500 (RecursionError) deeper; ``http://user:pass@…`` webhook URLs were shown to
viewers on the task and notifications pages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import quote

import pytest
from flask import Flask
from sqlalchemy import func, select

from tests.console_support import PASSWORD, add_user, csrf_from, logged_in_client
from tests.security.support import build_world, failed_task, probes, server_errors, snapshot
from webapp.api.parsing import MAX_JSON_DEPTH
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import AsyncTask, Notification

CONTROL_TARGETS = ["/\r\nX-Injected: 1", "/tasks\nX: 1", "/\x00", "/\x7f", "/\x85tasks", "/\t", "/\rtasks"]


def test_head_is_get_in_every_view(make_app: Callable[..., Flask]) -> None:
    """Every route that answers GET answers HEAD the same (even with a login form as body), changing nothing."""
    app = make_app(PROPAGATE_EXCEPTIONS=False)
    world = build_world(app)
    admin, token = logged_in_client(app, "admin", "root")
    before = snapshot(app, ("async_task", "console_user", "api_token", "task_type_state", "notification"))
    mismatched = {}
    with server_errors(app) as errors:
        for probe in probes(app, world):
            if probe.method != "GET":
                continue
            head = admin.open(probe.path, method="HEAD", data={"csrf_token": token, "username": "root",
                                                                "password": PASSWORD, "action": "cancel",
                                                                "scope": "matching"})
            get = admin.get(probe.path)
            if head.status_code != get.status_code or head.data:
                mismatched[str(probe)] = (head.status_code, get.status_code)
    assert errors == []
    assert mismatched == {}
    assert snapshot(app, ("async_task", "console_user", "api_token", "task_type_state", "notification")) == before


@pytest.mark.parametrize("target", CONTROL_TARGETS)
def test_control_characters_in_next_fall_back_to_the_start_page(make_app: Callable[..., Flask], target: str) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=False)
    add_user(app, "olga", "viewer")
    client = app.test_client()
    with server_errors(app) as errors:
        form_page = client.get(f"/login?next={quote(target)}")
        assert form_page.status_code in (200, 400)
        if form_page.status_code == 200:
            assert 'name="next" value="/"' in form_page.text
        token = csrf_from(client.get("/login").text)
        language = client.post("/language", data={"lang": "en", "next": target, "csrf_token": token})
        assert language.status_code in (303, 400)
        if language.status_code == 303:
            assert language.headers["Location"] == "/"
        logged_in = client.post("/login", data={"username": "olga", "password": PASSWORD, "csrf_token": token,
                                                "next": target})
        assert logged_in.status_code in (302, 400)
        if logged_in.status_code == 302:
            assert logged_in.headers["Location"] == "/"
    assert errors == []


def test_anonymous_visit_with_control_characters_is_sent_to_a_clean_login(make_app: Callable[..., Flask]) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=False)
    with server_errors(app) as errors:
        answer = app.test_client().get("/tasks?created_by=%0D%0AX-Injected:%201")
    assert errors == [] and answer.status_code == 302
    assert "\r" not in answer.headers["Location"] and "\n" not in answer.headers["Location"]


def _nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 950, 960, 5000, 20_000])
def test_edit_and_retry_applies_the_apis_json_limits(make_app: Callable[..., Flask], depth: int) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=False)
    task_id = failed_task(app, "FATAL")
    operator, token = logged_in_client(app, "operator")
    with app.app_context():
        before = db.session.scalar(select(func.count()).select_from(AsyncTask))
    with server_errors(app) as errors:
        answer = operator.post(f"/tasks/{task_id}/edit-retry", data={"csrf_token": token, "payload": _nested(depth)})
    assert errors == []
    assert answer.status_code in (400, 422)
    assert f"nested more than {MAX_JSON_DEPTH} levels" in answer.text
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(AsyncTask)) == before


def test_edit_and_retry_accepts_what_the_api_accepts(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    task_id = failed_task(app, "FATAL")
    operator, token = logged_in_client(app, "operator")
    answer = operator.post(f"/tasks/{task_id}/edit-retry", data={"csrf_token": token,
                                                                 "payload": _nested(MAX_JSON_DEPTH - 1)})
    assert answer.status_code == 303
    refused = operator.post(f"/tasks/{task_id}/edit-retry", data={"csrf_token": token,
                                                                  "payload": json.dumps({"text": "a\u0000b"})})
    assert refused.status_code in (400, 422) and "payload.text" in refused.text


SECRET_URL = "https://hook-user:s3cr3t-hook-pass@hooks.example.com/notify?x=1"


def test_webhook_credentials_are_masked_wherever_shown(app: Flask) -> None:
    with app.app_context():
        task_id = AsyncTaskService().submit_task("NOOP", {}, notify_url=SECRET_URL,
                                                 run_at="2999-01-01T00:00:00Z").id
        db.session.add(Notification(task_id=task_id, type="WEBHOOK", recipient=SECRET_URL, status="FAILED",
                                    attempts=8, max_attempts=8,
                                    last_error=f"POST {SECRET_URL} failed: connection refused"))
        db.session.commit()
    viewer, _ = logged_in_client(app, "viewer")
    for path in (f"/tasks/{task_id}", "/notifications", f"/notifications?task_id={task_id}"):
        page = viewer.get(path).text
        assert "s3cr3t-hook-pass" not in page and "hook-user" not in page, path
        assert "https://***@hooks.example.com/notify" in page, path
