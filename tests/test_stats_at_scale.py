"""Counts that stay fast on big tables: exact up to a limit, labelled estimates beyond it.

The limit is lowered to a handful of rows so a few tasks exercise the PostgreSQL estimate path;
SQLite counts everything exactly whatever the limit.
"""

from __future__ import annotations

import re

import pytest
from flask import Flask
from sqlalchemy import inspect

from tests.console_support import logged_in_client
from tests.test_api import _api_for
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult, stats
from webapp.tasks.models import AsyncTask, Notification

LIMIT = 3


@pytest.fixture
def low_limit(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(stats, "EXACT_COUNT_LIMIT", LIMIT)
    return LIMIT


def _load(app: Flask) -> None:
    """Six due NOOP tasks (more than the limit) and one FATAL failure (fewer)."""
    with app.app_context():
        service = AsyncTaskService()
        for n in range(6):
            service.submit_task("NOOP", {"n": n})
        failing = service.submit_task("FATAL", {}).id
        claimed = service.claim_due_tasks("scale-worker", 10, ["FATAL"])
        assert [task.id for task in claimed] == [failing]
        service.finish_task(claimed[0], TaskResult.failure("no", retryable=False), worker_id="scale-worker")


def _is_postgres(app: Flask) -> bool:
    return str(app.config["SQLALCHEMY_DATABASE_URI"]).startswith("postgresql")


def test_status_counts_exact_below_the_limit_estimated_above(app: Flask, low_limit: int) -> None:
    _load(app)
    with app.app_context():
        counts = stats.status_counts_at_scale()
        assert set(counts) == {"PENDING", "PROCESSING", "SUCCESS", "FAILURE", "RETRYING", "CANCELLED", "WAITING"}
        assert counts["FAILURE"] == 1 and counts["SUCCESS"] == 0 and counts["PROCESSING"] == 0
        if _is_postgres(app):
            assert counts.estimated == {"PENDING"}
            assert counts["PENDING"] > low_limit  # never below what the exact count reached
        else:
            assert counts.estimated == frozenset() and counts["PENDING"] == 6
        by_type = stats.type_status_counts_at_scale()
        assert by_type["FATAL"]["FAILURE"] == 1 and not by_type["FATAL"].estimated
        assert by_type["NOOP"]["PENDING"] > low_limit and by_type["NOOP"]["FAILURE"] == 0
        assert by_type["NOOP"].estimated == ({"PENDING"} if _is_postgres(app) else frozenset())
        assert stats.task_types_present() == ["FATAL", "NOOP"]


def test_due_count_stops_at_the_limit(app: Flask, low_limit: int) -> None:
    _load(app)
    with app.app_context():
        age, due = stats.oldest_due()
        assert due == low_limit + 1 and age is not None
        overview = stats.overview()
        assert overview.due_now == low_limit and overview.due_now_more


def test_pages_label_estimates(app: Flask, low_limit: int) -> None:
    _load(app)
    client, _ = logged_in_client(app, "viewer")
    overview = client.get("/").text
    assert "more than 3 due now" in overview
    assert re.search(r'id="count-FAILURE">\s*<span class="count">1</span>', overview)
    pending_card = re.search(r'id="count-PENDING">\s*<span class="count[^"]*"[^>]*>([^<]*)</span>', overview)
    assert pending_card is not None
    types_page = client.get("/task-types").text
    if _is_postgres(app):
        assert pending_card.group(1).startswith("≈ ")
        assert re.search(r'id="type-NOOP".*?≈ \d', types_page, re.S)
    else:
        assert pending_card.group(1) == "6"
        assert "≈" not in types_page


def test_api_task_types_say_whether_counts_are_estimates(app: Flask, low_limit: int) -> None:
    _load(app)
    api = _api_for(app, "scale-service")
    items = {item["task_type"]: item for item in api.get("/api/task-types").get_json()["items"]}
    assert items["FATAL"]["counts"]["FAILURE"] == 1 and items["FATAL"]["counts_are_estimates"] is False
    assert items["NOOP"]["counts_are_estimates"] is _is_postgres(app)
    assert items["NOOP"]["counts"]["PENDING"] > low_limit


def test_notification_counts_at_scale(app: Flask, low_limit: int) -> None:
    with app.app_context():
        task_id = AsyncTaskService().submit_task("NOOP", {}).id
        db.session.add_all([Notification(task_id=task_id, type="EMAIL", recipient=f"r{n}@example.com",
                                         status="SENT" if n < 5 else "FAILED") for n in range(6)])
        db.session.commit()
        counts = stats.notification_status_counts_at_scale()
        assert counts["FAILED"] == 1 and counts["PENDING"] == 0 and counts["SENT"] > low_limit
        assert counts.estimated == ({"SENT"} if _is_postgres(app) else frozenset())


def test_migrations_create_every_index_the_models_declare(app: Flask) -> None:
    with app.app_context():
        inspector = inspect(db.engine)
        for model in (AsyncTask, Notification):
            declared = {index.name for index in model.__table__.indexes}
            present = {index["name"] for index in inspector.get_indexes(model.__tablename__)}
            assert declared <= present, declared - present
