"""One clock for the whole console (issue 16, Time): every time on every page in the user's choice
of their browser's zone or UTC, remembered on their user row, and filter inputs read in that zone."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from tests.conftest import ROOT
from tests.console_support import csrf_from, logged_in_client
from webapp.accounts.models import User
from webapp.accounts.tokens import create_token
from webapp.console.clock import BROWSER_ZONE_COOKIE, offset_label, parse_clock_input
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.errors import ValidationError
from webapp.tasks.models import AsyncTask, Worker, utcnow

# An absolute time as the console writes it: "2026-01-01 09:30:00 UTC+8" (the chart's hover: no seconds).
SHOWN_TIME = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d(?::\d\d)? (UTC(?:[+-]\d+(?::\d\d)?)?)")
TIME_ELEMENT = re.compile(r"<time [^>]*>([^<]*)</time>")


def visible_text(html: str) -> str:
    """The page's text without tags and attributes (titles keep the UTC value on hover)."""
    return re.sub(r"<[^>]+>", " ", html)


def choose_clock(client: FlaskClient, token: str, choice: str) -> None:
    response = client.post("/clock", data={"time_zone": choice, "next": "/tasks", "csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"].endswith("/tasks")


def stored_choice(app: Flask, username: str) -> str:
    with app.app_context():
        try:
            return str(db.session.scalar(select(User.time_zone).where(User.username == username)))
        finally:
            db.session.remove()


@pytest.fixture
def busy_app(app: Flask) -> Flask:
    """A task with a timeline, a worker, a token, a schedule and a workflow: times on every page."""
    with app.app_context():
        service = AsyncTaskService()
        task = service.submit_task("NOOP", {"n": 1})
        service.submit_workflow(tasks=[{"key": "a", "task_type": "NOOP"}], name="clocked")
        db.session.add(Worker(id="clock-worker", hostname="h", pid=1, concurrency=1, started_at=utcnow(),
                              last_heartbeat_at=utcnow()))
        db.session.commit()
        _, secret = create_token(f"clock-token-{uuid.uuid4().hex[:8]}", reach="all")
        schedule_name = f"clock-nightly-{uuid.uuid4().hex[:8]}"  # schedules outlive a PostgreSQL test
        app.config["CLOCK_TEST"] = {"task_id": task.id, "secret": secret, "schedule": schedule_name}
        db.session.remove()
    created = app.test_client().post("/api/schedules", headers={"Authorization": f"Bearer {secret}"}, json={
        "name": schedule_name, "task_type": "NOOP", "cron": "30 2 * * *", "timezone": "Europe/Berlin"})
    assert created.status_code == 201, created.get_json()
    return app


def pages(app: Flask) -> list[str]:
    task_id, schedule = app.config["CLOCK_TEST"]["task_id"], app.config["CLOCK_TEST"]["schedule"]
    return ["/", "/tasks", f"/tasks/{task_id}", "/workers", "/audit", "/admin/users", "/admin/tokens",
            "/notifications", "/schedules", f"/schedules/{schedule}", "/workflows", "/task-types",
            "/task-types/NOOP", "/history?range=24h", "/limits"]


def test_every_page_shows_every_time_in_the_chosen_clock(busy_app: Flask) -> None:
    client, token = logged_in_client(busy_app, "admin", "clock-admin")
    client.set_cookie(BROWSER_ZONE_COOKIE, "Asia/Shanghai")
    assert stored_choice(busy_app, "clock-admin") == "local"  # the default
    for choice, zone in (("local", "UTC+8"), ("utc", "UTC"), ("local", "UTC+8")):
        choose_clock(client, token, choice)
        assert stored_choice(busy_app, "clock-admin") == choice
        shown = 0
        for path in pages(busy_app):
            response = client.get(path)
            assert response.status_code == 200, path
            html = response.get_data(as_text=True)
            assert f'data-clock="{choice}"' in html
            zones = set(SHOWN_TIME.findall(visible_text(html)))
            # Schedules also show fire times in their own zone ("02:30 CET"), which is not a clock time.
            assert zones <= {zone}, (choice, path, zones)
            for text in TIME_ELEMENT.findall(html):
                if SHOWN_TIME.search(text):
                    assert text.endswith(" " + zone), (choice, path, text)
            shown += len(SHOWN_TIME.findall(visible_text(html)))
        assert shown >= 10, f"the pages showed only {shown} times"
    # Machine values stay UTC whatever the clock.
    html = client.get("/tasks").get_data(as_text=True)
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT[\d:.]+Z" title="[\d: -]+ UTC">', html)


def test_the_task_page_fields_follow_the_clock(busy_app: Flask) -> None:
    client, token = logged_in_client(busy_app, "viewer", "clock-viewer")
    client.set_cookie(BROWSER_ZONE_COOKIE, "America/St_Johns")  # UTC-3:30 or -2:30: minutes too
    task_id = busy_app.config["CLOCK_TEST"]["task_id"]
    html = client.get(f"/tasks/{task_id}").get_data(as_text=True)
    fields = html[html.index('id="task-fields"'):]
    fields = fields[:fields.index("</section>")]
    assert re.search(r"created_at</th><td><time [^>]+>[\d: -]+ UTC-[23]:30</time>", fields), fields


def test_created_after_and_before_are_read_in_the_zone_shown(app: Flask) -> None:
    with app.app_context():
        task = AsyncTaskService().submit_task("NOOP", {"n": 2})
        task_id = task.id
        # 01:30 UTC is 09:30 in Shanghai.
        db.session.execute(db.update(AsyncTask).where(AsyncTask.id == task_id)
                           .values(created_at=datetime(2026, 1, 1, 1, 30, tzinfo=UTC)))
        db.session.commit()
        db.session.remove()
    client, token = logged_in_client(app, "viewer", "gmt8")
    client.set_cookie(BROWSER_ZONE_COOKIE, "Asia/Shanghai")

    def listed(**params: str) -> tuple[bool, str]:
        html = client.get("/tasks", query_string=params).get_data(as_text=True)
        return f'id="task-{task_id}"' in html, html

    found, html = listed(created_after="2026-01-01T09:00:00")  # 01:00 UTC
    assert found and 'value="2026-01-01T09:00:00"' in html and "Created after (UTC+8)" in html
    found, _ = listed(created_before="2026-01-01T09:00:00")
    assert not found
    found, _ = listed(created_after="2026-01-01T09:00:00", created_before="2026-01-01T10:00:00")
    assert found
    # A time with its own zone (a shared link) keeps it, and the form shows it in the clock's zone.
    found, html = listed(created_after="2026-01-01T01:00:00Z")
    assert found and 'value="2026-01-01T09:00:00"' in html

    choose_clock(client, token, "utc")
    found, html = listed(created_before="2026-01-01T09:00:00")  # 09:00 UTC now
    assert found and "Created before (UTC)" in html
    found, _ = listed(created_after="2026-01-01T09:00:00")
    assert not found
    html = client.get("/tasks", query_string={"created_after": "yesterday"}).get_data(as_text=True)
    assert "created_after must be a time like 2026-01-01T12:00:00" in html


def test_new_task_run_at_is_read_in_the_zone_shown(app: Flask) -> None:
    client, token = logged_in_client(app, "operator", "gmt8-op")
    client.set_cookie(BROWSER_ZONE_COOKIE, "Asia/Shanghai")
    form = client.get("/tasks/new?task_type=NOOP").get_data(as_text=True)
    assert "Run at (UTC+8)" in form
    response = client.post("/tasks/new", data={"task_type": "NOOP", "payload": "{}", "run_at": "2030-06-01T08:00:00",
                                               "csrf_token": csrf_from(form)})
    assert response.status_code in (302, 303), response.get_data(as_text=True)[:2000]
    with app.app_context():
        try:
            task = db.session.scalars(select(AsyncTask).order_by(AsyncTask.id.desc())).first()
            assert task is not None and task.next_run_at == datetime(2030, 6, 1, 0, 0, tzinfo=UTC)
        finally:
            db.session.remove()


def test_a_bad_choice_is_refused_naming_the_field_and_keeps_the_stored_one(app: Flask) -> None:
    client, token = logged_in_client(app, "viewer", "picky")
    choose_clock(client, token, "utc")
    for bad in ("", "Asia/Shanghai", "UTC+8", "x" * 500):
        response = client.post("/clock", data={"time_zone": bad, "csrf_token": token})
        assert response.status_code == 422
        assert "time_zone must be one of local, utc" in response.get_data(as_text=True)
    assert stored_choice(app, "picky") == "utc"
    assert client.post("/clock", data={"time_zone": "utc"}).status_code == 400  # no CSRF token
    anonymous = app.test_client().post("/clock", data={"time_zone": "utc"})
    assert anonymous.status_code in (302, 400)


@pytest.mark.parametrize("cookie", ["", "Mars/Olympus", "../../etc/passwd", "Asia/Shanghai; x=1", "A" * 100])
def test_an_unknown_browser_zone_falls_back_to_utc_and_says_so(app: Flask, cookie: str) -> None:
    client, _ = logged_in_client(app, "viewer", "nozone")
    client.set_cookie(BROWSER_ZONE_COOKIE, cookie)
    html = client.get("/tasks").get_data(as_text=True)
    assert 'data-clock-zone="UTC"' in html and "Local time (not known yet: UTC)" in html
    assert "Created after (UTC)" in html


def test_offsets_and_zone_less_inputs(app: Flask) -> None:
    with app.test_request_context("/", headers={"Cookie": f"{BROWSER_ZONE_COOKIE}=Asia/Kolkata"}):
        assert offset_label() == "UTC+5:30"
        assert parse_clock_input("2026-03-01T12:00:00", "created_after") == datetime(2026, 3, 1, 6, 30, tzinfo=UTC)
        assert parse_clock_input("2026-03-01T12:00:00+01:00", "x") == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
        with pytest.raises(ValidationError) as refused:
            parse_clock_input("soon", "created_before")
        assert refused.value.field == "created_before"
    with app.test_request_context("/", headers={"Cookie": f"{BROWSER_ZONE_COOKIE}=America/New_York"}):
        assert offset_label(datetime(2026, 1, 15, tzinfo=UTC)) == "UTC-5"
        assert offset_label(datetime(2026, 7, 15, tzinfo=UTC)) == "UTC-4"
    with app.test_request_context("/"):
        assert offset_label() == "UTC"


def test_console_templates_show_times_only_through_the_clock() -> None:
    """``|utc`` (always UTC) is for mails; a console page showing it would break the one clock."""
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "templates").rglob("*.html")
                 if "email" not in path.parts and re.search(r"\|\s*utc\b", path.read_text(encoding="utf-8"))]
    assert offenders == [], f"use |when (a <time> element) or |clock (text) instead of |utc in {offenders}"
