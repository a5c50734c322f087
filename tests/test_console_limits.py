"""Flow control in the console, on SQLite and PostgreSQL: waiting reasons on task pages, ``/limits``
with its override form (operators, CSRF, audited, errors naming the field), limits on the task types page."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from sqlalchemy import select

from tests.console_support import htmx, logged_in_client
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.limit_models import TaskLimitOverride
from webapp.tasks.models import AuditEntry

PROCESSORS = ["tests.processors", "tests.limit_processors"]


@pytest.fixture
def limited_app(make_app, backend) -> Flask:
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)


def _customer_tasks(app: Flask, count: int = 3) -> list[int]:
    """``count`` tasks of customer 42; the first two are claimed, so the rest wait on the limit."""
    with app.app_context():
        service = AsyncTaskService()
        ids = [service.submit_task("PER_CUSTOMER", {"customer_id": 42}).id for _ in range(count)]
        assert len(service.claim_due_tasks("console-worker", 50)) == 2
        db.session.remove()
    return ids


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def _override(app: Flask, task_type: str) -> TaskLimitOverride | None:
    with app.app_context():
        row = db.session.get(TaskLimitOverride, task_type)
        db.session.remove()
        return row


def test_a_held_back_task_shows_why_on_its_page_and_in_the_list(limited_app):
    ids = _customer_tasks(limited_app)
    client, _ = logged_in_client(limited_app, "viewer")
    page = client.get(f"/tasks/{ids[2]}").get_data(as_text=True)
    assert 'id="waiting-reason"' in page
    assert "waiting: limit customer_id=42, 2 of 2 running" in _text(page)
    running = client.get(f"/tasks/{ids[0]}").get_data(as_text=True)
    assert 'id="waiting-reason"' not in running
    live = client.get(f"/tasks/{ids[2]}", headers=htmx("task-live")).get_data(as_text=True)
    assert "2 of 2 running" in live  # the poll keeps it current
    rows = client.get("/tasks?task_type=PER_CUSTOMER", headers=htmx("task-rows")).get_data(as_text=True)
    row = rows.split(f'id="task-{ids[2]}"')[1].split("</tr>")[0]
    assert "waiting: limit customer_id=42, 2 of 2 running" in _text(row)
    assert "data-waiting" not in rows.split(f'id="task-{ids[0]}"')[1].split("</tr>")[0]


def test_the_waiting_reason_is_translated(limited_app):
    ids = _customer_tasks(limited_app)
    client, _ = logged_in_client(limited_app, "viewer")
    page = client.get(f"/tasks/{ids[2]}", headers={"Accept-Language": "zh-CN"}).get_data(as_text=True)
    assert "customer_id=42" in page and "waiting: limit" not in page


def test_the_limits_page_shows_each_limit_in_use_waiting_and_window(limited_app):
    _customer_tasks(limited_app, 4)
    client, _ = logged_in_client(limited_app, "viewer")
    response = client.get("/limits")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    row = _text(page.split('id="limit-PER_CUSTOMER"')[1].split("</tr>")[0])
    assert "customer_id=42 : 2 / 2" in row and " 2 " in row  # in use / limit, two waiting
    rated = _text(page.split('id="limit-RATED"')[1].split("</tr>")[0])
    assert "3 per 1 s" in rated and "0 / 3" in rated
    assert 'id="limit-NOOP"' not in page  # no limit, no row
    assert 'id="limit-overrides"' not in page  # a viewer gets no form
    live = client.get("/limits", headers=htmx("limits-live")).get_data(as_text=True)
    assert live.lstrip().startswith('<section id="limits-live"') and "data-poll" in live
    assert 'href="/limits"' in page  # the nav link


def test_an_operator_overrides_a_limit_audited_and_clears_it(limited_app):
    client, token = logged_in_client(limited_app, "operator")
    page = client.get("/limits").get_data(as_text=True)
    assert 'id="override-PER_CUSTOMER"' in page and "data-confirm" in page
    saved = client.post("/limits/PER_CUSTOMER", data={"csrf_token": token, "concurrency": "5",
                                                      "rate_count": "", "rate_per_seconds": ""})
    assert saved.status_code == 303
    row = _override(limited_app, "PER_CUSTOMER")
    assert row is not None and (row.concurrency, row.rate_count, row.updated_by) == (5, None, "operator-user")
    with limited_app.app_context():
        [entry] = db.session.scalars(select(AuditEntry).where(AuditEntry.action == "limits.override")).all()
        assert entry.target_id == "PER_CUSTOMER"
    shown = _text(client.get("/limits").get_data(as_text=True).split('id="limit-PER_CUSTOMER"')[1].split("</tr>")[0])
    assert "5 per customer_id" in shown and "overridden" in shown
    rate = client.post("/limits/RATED", data={"csrf_token": token, "rate_count": "7", "rate_per_seconds": "2.5"})
    assert rate.status_code == 303
    assert (_override(limited_app, "RATED").rate_count, _override(limited_app, "RATED").rate_per_seconds) == (7, 2.5)
    cleared = client.post("/limits/PER_CUSTOMER", data={"csrf_token": token, "concurrency": ""})
    assert cleared.status_code == 303 and _override(limited_app, "PER_CUSTOMER") is None


@pytest.mark.parametrize(("form", "field", "words"), [
    ({"concurrency": "two"}, "concurrency", "whole number"),
    ({"concurrency": "0"}, "concurrency", "whole number from 1"),
    ({"concurrency": "-3"}, "concurrency", "whole number from 1"),
    ({"rate_count": "0"}, "rate_count", "rate.count"),
    ({"rate_count": "5", "rate_per_seconds": "soon"}, "rate_per_seconds", "number of seconds"),
    ({"rate_count": "5", "rate_per_seconds": "0"}, "rate_per_seconds", "above 0"),
    ({"rate_per_seconds": "2"}, "rate_count", "rate_count is needed"),
])
def test_a_refused_override_names_the_field_and_changes_nothing(limited_app, form, field, words):
    client, token = logged_in_client(limited_app, "operator")
    client.post("/limits/RATED", data={"csrf_token": token, "rate_count": "9"})
    refused = client.post("/limits/RATED", data={"csrf_token": token, **form})
    assert refused.status_code == 422
    page = refused.get_data(as_text=True)
    error = _text(page.split('id="limit-error"')[1].split("</p>")[0])
    assert words in error and f"({field})" in error
    assert re.search(rf'id="RATED-{field}"[^>]*aria-invalid="true"', page)
    for name, value in form.items():  # what was typed comes back
        assert f'id="RATED-{name}" value="{value}"' in page
    assert _override(limited_app, "RATED").rate_count == 9  # the earlier override stands


def test_only_operators_with_a_csrf_token_override(limited_app):
    viewer, viewer_token = logged_in_client(limited_app, "viewer")
    assert viewer.post("/limits/RATED", data={"csrf_token": viewer_token, "rate_count": "9"}).status_code == 403
    operator, _ = logged_in_client(limited_app, "operator")
    assert operator.post("/limits/RATED", data={"rate_count": "9"}).status_code == 400
    assert operator.post("/limits/NOPE", data={"csrf_token": _, "rate_count": "9"}).status_code == 404
    assert _override(limited_app, "RATED") is None


def test_the_task_types_page_shows_each_types_limits(limited_app):
    client, _ = logged_in_client(limited_app, "viewer")
    page = client.get("/task-types").get_data(as_text=True)
    cell = _text(page.split('id="limits-PER_CUSTOMER"')[1].split("</td>")[0])
    assert "concurrency 2 per customer_id" in cell
    assert "rate 3 per 1 s" in _text(page.split('id="limits-RATED"')[1].split("</td>")[0])
    assert _text(page.split('id="limits-NOOP">')[1].split("</td>")[0]).strip() == "—"
