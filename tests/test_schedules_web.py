"""Schedules over HTTP: the JSON API (bearer tokens, 422 naming the field) and the console pages
(operator forms keeping what was typed, live preview, actions, history, backfill, Chinese)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, text

from tests.console_support import htmx, logged_in_client
from webapp.accounts.tokens import create_token
from webapp.extensions import db
from webapp.schedules.models import Schedule, ScheduleRun
from webapp.tasks.models import AsyncTask, AuditEntry


@pytest.fixture
def web_app(app: Flask) -> Iterator[Flask]:
    with app.app_context():
        db.session.execute(text("DELETE FROM schedule_run"))
        db.session.execute(text("DELETE FROM schedule"))
        db.session.commit()
        db.session.remove()
    yield app


def api_client(app: Flask) -> tuple[FlaskClient, dict[str, str]]:
    with app.app_context():
        _, secret = create_token("sched-api")
    return app.test_client(), {"Authorization": f"Bearer {secret}"}


def count(app: Flask, model: Any) -> int:
    with app.app_context():
        try:
            return int(db.session.scalar(select(func.count()).select_from(model)) or 0)
        finally:
            db.session.remove()


# -- API -----------------------------------------------------------------------------------------


def test_api_lifecycle(web_app: Flask) -> None:
    client, auth = api_client(web_app)
    assert client.get("/api/schedules").status_code == 401
    created = client.post("/api/schedules", headers=auth, json={
        "name": "nightly", "task_type": "NOOP", "cron": "30 2 * * *", "timezone": "Europe/Berlin",
        "payload": {"report": "daily"}, "overlap": "skip"})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert created.headers["Location"].endswith("/api/schedules/nightly")
    assert body["reading"] == "at 02:30 every day, Europe/Berlin"
    assert body["next_fire_at"].endswith("Z") and body["source"] == "dynamic"
    assert client.get("/api/schedules", headers=auth).get_json()["items"][0]["name"] == "nightly"

    patched = client.patch("/api/schedules/nightly", headers=auth, json={"interval_seconds": 3600})
    assert patched.status_code == 200 and patched.get_json()["cron"] is None
    assert patched.get_json()["interval_seconds"] == 3600
    assert client.post("/api/schedules/nightly/pause", headers=auth).get_json()["enabled"] is False
    assert client.post("/api/schedules/nightly/resume", headers=auth).get_json()["enabled"] is True

    run = client.post("/api/schedules/nightly/run", headers=auth)
    assert run.status_code == 202 and run.get_json()["kind"] == "manual"
    task_id = run.get_json()["task_id"]
    assert run.headers["Location"].endswith(f"/api/tasks/{task_id}")
    with web_app.app_context():
        assert db.session.get(AsyncTask, task_id).created_by == "schedule:nightly"
    runs = client.get("/api/schedules/nightly/runs", headers=auth).get_json()["items"]
    assert [(item["task_id"], item["outcome"]) for item in runs] == [(task_id, "PENDING")]

    assert client.delete("/api/schedules/nightly", headers=auth).status_code == 204
    assert client.get("/api/schedules/nightly", headers=auth).get_json()["error"]["code"] == "not_found"
    with web_app.app_context():
        actions = db.session.scalars(select(AuditEntry.action).where(AuditEntry.target_type == "schedule")
                                     .order_by(AuditEntry.id)).all()
        actors = set(db.session.scalars(select(AuditEntry.actor).where(AuditEntry.target_type == "schedule")))
    assert actions == ["schedule.create", "schedule.update", "schedule.pause", "schedule.resume",
                       "schedule.manual", "schedule.delete"]
    assert actors == {"api:sched-api"}


BAD_BODIES = [
    ({"name": "x", "task_type": "NOOP", "cron": "not a cron"}, "cron"),
    ({"name": "x", "task_type": "NOOP", "interval_seconds": 0}, "interval_seconds"),
    ({"name": "x", "task_type": "NOOP", "interval_seconds": 5, "timezone": "Nowhere/Land"}, "timezone"),
    ({"name": "x", "task_type": "NOPE", "interval_seconds": 5}, "task_type"),
    ({"name": "x", "task_type": "SLEEP", "interval_seconds": 5, "payload": {"bogus": 1}}, "payload.bogus"),
    ({"name": "x", "task_type": "NOOP", "interval_seconds": 5, "start_at": "2026-02-01T00:00:00Z",
      "end_at": "2026-01-01T00:00:00Z"}, "end_at"),
    ({"name": "x", "task_type": "NOOP", "interval_seconds": 5, "colour": "red"}, "colour"),
    ({"name": "x", "task_type": "NOOP", "interval_seconds": 5, "created_by": "\ud800"}, "created_by"),
    ({"name": "x", "task_type": "NOOP", "interval_seconds": 5, "start_at": "9999-12-31T23:59:59-01:00"}, "start_at"),
    ({"task_type": "NOOP", "interval_seconds": 5}, "name"),
]


def test_api_bad_input_is_422_naming_the_field(web_app: Flask) -> None:
    client, auth = api_client(web_app)
    for body, field in BAD_BODIES:
        response = client.post("/api/schedules", headers=auth, json=body)
        assert response.status_code == 422, (body, response.get_json())
        assert response.get_json()["error"]["field"] == field, (body, response.get_json())
    nul = client.get("/api/schedules/%00", headers=auth)  # refused before any query (no 500)
    assert nul.status_code in (400, 422) and "error" in nul.get_json()
    assert count(web_app, Schedule) == 0


def test_api_duplicate_name_and_declared_schedules(make_app: Any, backend: str) -> None:
    app = make_app(backend, ASYNC_TASK_SCHEDULES=[{"name": "declared", "task_type": "NOOP", "every": 60}])
    with app.app_context():
        db.session.execute(text("DELETE FROM schedule"))
        db.session.commit()
        app.extensions["schedules"].sync()
        db.session.remove()
    client, auth = api_client(app)
    duplicate = client.post("/api/schedules", headers=auth, json={"name": "declared", "task_type": "NOOP",
                                                                  "interval_seconds": 5})
    assert duplicate.status_code == 422 and duplicate.get_json()["error"]["field"] == "name"
    refused = client.patch("/api/schedules/declared", headers=auth, json={"interval_seconds": 5})
    assert refused.status_code == 409 and "ASYNC_TASK_SCHEDULES" in refused.get_json()["error"]["message"]
    assert client.post("/api/schedules/declared/pause", headers=auth).status_code == 200


def test_openapi_describes_the_schedule_paths(web_app: Flask) -> None:
    client, auth = api_client(web_app)
    document = client.get("/api/openapi.json", headers=auth).get_json()
    for path in ("/api/schedules", "/api/schedules/{name}", "/api/schedules/{name}/pause",
                 "/api/schedules/{name}/resume", "/api/schedules/{name}/run", "/api/schedules/{name}/runs"):
        assert path in document["paths"], path
    assert "Schedule" in document["components"]["schemas"]


# -- console -------------------------------------------------------------------------------------

FORM = {"name": "console-made", "task_type": "NOOP", "cron": "30 2 * * *", "interval_seconds": "",
        "timezone": "Europe/Berlin", "payload": '{"a": 1}', "priority": "", "overlap": "allow", "catch_up": "none",
        "start_at": "", "end_at": "", "description": "made in a test", "created_by": ""}


def test_console_create_keeps_typed_values_on_error_then_saves(web_app: Flask) -> None:
    client, token = logged_in_client(web_app, "operator")
    bad = client.post("/schedules/new", data={**FORM, "cron": "99 * * * *", "csrf_token": token})
    page = bad.get_data(as_text=True)
    assert bad.status_code == 422
    assert 'value="99 * * * *"' in page and "made in a test" in page and 'aria-invalid="true"' in page
    assert "(cron)" in page
    assert count(web_app, Schedule) == 0

    preview = client.post("/schedules/preview", data={**FORM, "csrf_token": token}, headers=htmx("schedule-preview"))
    text_ = preview.get_data(as_text=True)
    assert "at 02:30 every day, Europe/Berlin" in text_ and text_.count("<li>") == 5
    wrong = client.post("/schedules/preview", data={**FORM, "timezone": "Mars/Base", "csrf_token": token},
                        headers=htmx("schedule-preview"))
    assert "unknown time zone" in wrong.get_data(as_text=True)

    saved = client.post("/schedules/new", data={**FORM, "csrf_token": token})
    assert saved.status_code == 303 and saved.headers["Location"].endswith("/schedules/console-made")
    listing = client.get("/schedules").get_data(as_text=True)
    assert "console-made" in listing and "at 02:30 every day, Europe/Berlin" in listing


def test_console_actions_history_and_backfill(web_app: Flask) -> None:
    client, token = logged_in_client(web_app, "operator")
    client.post("/schedules/new", data={**FORM, "name": "s1", "cron": "", "interval_seconds": "60",
                                        "start_at": "2026-01-01T00:00:00Z",
                                        "timezone": "UTC", "csrf_token": token})
    assert client.post("/schedules/s1/run", data={"csrf_token": token}).status_code == 303
    detail = client.get("/schedules/s1").get_data(as_text=True)
    with web_app.app_context():
        task_id = db.session.scalar(select(ScheduleRun.task_id))
        created = db.session.scalar(select(Schedule.created_at))
    assert f'href="/tasks/{task_id}"' in detail
    start = created.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    preview = client.post("/schedules/s1/backfill", data={"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:05:00Z",
                                                          "preview": "1", "csrf_token": token},
                          headers=htmx("schedule-backfill"))
    assert preview.status_code == 200 and "6 slots without a run" in preview.get_data(as_text=True)
    assert count(web_app, AsyncTask) == 1  # a preview creates nothing
    made = client.post("/schedules/s1/backfill", data={"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T00:05:00Z",
                                                       "csrf_token": token})
    assert made.status_code == 303 and count(web_app, AsyncTask) == 7
    future = client.post("/schedules/s1/backfill", data={"start": start, "end": "2999-01-01T00:00:00Z",
                                                         "preview": "1", "csrf_token": token})
    assert future.status_code == 422 and "(end)" in future.get_data(as_text=True)
    assert client.post("/schedules/s1/pause", data={"csrf_token": token}).status_code == 303
    assert "paused" in client.get("/schedules").get_data(as_text=True)
    assert client.post("/schedules/s1/delete", data={"csrf_token": token}).status_code == 303
    assert count(web_app, Schedule) == 0


def test_console_viewers_read_but_cannot_change(web_app: Flask) -> None:
    operator, token = logged_in_client(web_app, "operator")
    operator.post("/schedules/new", data={**FORM, "csrf_token": token})
    viewer, viewer_token = logged_in_client(web_app, "viewer")
    page = viewer.get("/schedules").get_data(as_text=True)
    assert "console-made" in page and "New schedule" not in page
    assert viewer.post("/schedules/console-made/run", data={"csrf_token": viewer_token}).status_code == 403
    assert viewer.get("/schedules/new").status_code == 403
    assert count(web_app, AsyncTask) == 0


def test_console_in_chinese(web_app: Flask) -> None:
    client, token = logged_in_client(web_app, "operator")
    client.post("/schedules/new", data={**FORM, "csrf_token": token})
    client.set_cookie("console_lang", "zh_Hans")
    page = client.get("/schedules").get_data(as_text=True)
    assert "计划任务" in page and "每天 02:30（Europe/Berlin）" in page
