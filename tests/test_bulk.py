"""Bulk cancel / retry: the engine module and the console's preview-then-apply flow."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from sqlalchemy import select

from tests.console_support import htmx, logged_in_client
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskFilter, TaskResult
from webapp.tasks.bulk import BulkAction, BulkOperations, Selection, parse_action
from webapp.tasks.errors import ValidationError
from webapp.tasks.models import AsyncTask, AuditEntry, TaskEvent
from webapp.tasks.serialize import task_to_dict

FAR_FUTURE = "2999-01-01T00:00:00Z"


def make_failed(service: AsyncTaskService, count: int) -> list[int]:
    """FATAL tasks run to FAILURE through the service, as a worker would."""
    ids = [service.submit_task("FATAL", {"n": n}).id for n in range(count)]
    claimed = service.claim_due_tasks("test-worker", 100, ["FATAL"])
    assert sorted(t.id for t in claimed) == sorted(ids)
    for task in claimed:
        service.finish_task(task, TaskResult.failure("no", retryable=False), worker_id="test-worker")
    return ids


def statuses(ids: list[int]) -> list[str]:
    rows = dict(db.session.execute(select(AsyncTask.id, AsyncTask.status).where(AsyncTask.id.in_(ids))).all())
    return [rows[i] for i in ids]


def test_preview_counts_what_each_action_would_change(app_ctx: Flask) -> None:
    service = AsyncTaskService()
    pending = [service.submit_task("NOOP", {}, run_at=FAR_FUTURE).id for _ in range(3)]
    failed = make_failed(service, 2)
    done = service.submit_task("NOOP", {}, run_at=FAR_FUTURE).id
    service.cancel_task(done)
    bulk = BulkOperations(service)

    preview = bulk.preview(Selection.of_ids([*pending, *failed, done, 999_999]))
    assert preview.total == 6 and preview.missing_ids == 1
    assert preview.by_status == {"PENDING": 3, "FAILURE": 2, "CANCELLED": 1}
    assert preview.changes == {BulkAction.CANCEL: 3, BulkAction.RETRY: 2}
    assert preview.applicable == [BulkAction.CANCEL, BulkAction.RETRY]

    only_done = bulk.preview(Selection.of_ids([done]))
    assert only_done.applicable == []
    matching = bulk.preview(Selection.matching(TaskFilter(task_type="FATAL")))
    assert matching.total == 2 and matching.applicable == [BulkAction.RETRY]
    assert bulk.preview(Selection.of_ids([])).total == 0


def test_bulk_cancel_changes_only_waiting_tasks_and_records_everything(app_ctx: Flask) -> None:
    service = AsyncTaskService()
    pending = [service.submit_task("NOOP", {}, run_at=FAR_FUTURE).id for _ in range(3)]
    failed = make_failed(service, 1)
    result = BulkOperations(service).apply(Selection.of_ids([*pending, *failed]), BulkAction.CANCEL, "olga",
                                           chunk_size=2)
    assert sorted(result.changed_ids) == pending and result.unchanged == 1
    assert statuses(pending + failed) == ["CANCELLED"] * 3 + ["FAILURE"]
    events = db.session.scalars(select(TaskEvent).where(TaskEvent.kind == "CANCELLED")).all()
    assert sorted(e.task_id for e in events) == pending and {e.actor for e in events} == {"olga"}
    audits = db.session.scalars(select(AuditEntry).where(AuditEntry.action.like("task.%"))
                                .order_by(AuditEntry.id)).all()
    assert [(a.action, a.target_id) for a in audits if a.action == "task.cancel"] == [
        ("task.cancel", str(i)) for i in pending]
    summary = [a for a in audits if a.action == "task.bulk_cancel"]
    assert len(summary) == 1 and summary[0].detail["changed"] == 3 and summary[0].detail["unchanged"] == 1
    assert summary[0].actor == "olga"


def test_bulk_retry_matches_single_retry_field_for_field(app_ctx: Flask) -> None:
    service = AsyncTaskService()
    single, *many = make_failed(service, 4)
    service.retry_task(single, actor="olga")
    result = BulkOperations(service).apply(Selection.matching(TaskFilter(task_type="FATAL")), BulkAction.RETRY,
                                           "olga", chunk_size=2)
    assert sorted(result.changed_ids) == sorted(many)
    ignore = {"id", "payload", "created_at", "updated_at", "next_run_at"}
    reference = {k: v for k, v in task_to_dict(service.require_task(single)).items() if k not in ignore}
    for task_id in many:
        db.session.expire_all()
        row = {k: v for k, v in task_to_dict(service.require_task(task_id)).items() if k not in ignore}
        assert row == reference
    kinds = db.session.scalars(select(TaskEvent.kind).where(TaskEvent.task_id == many[0]).order_by(TaskEvent.id)).all()
    assert kinds[-1] == "RETRIED"


def test_bulk_cancel_matches_single_cancel_field_for_field(app_ctx: Flask) -> None:
    service = AsyncTaskService()
    single, *many = [service.submit_task("NOOP", {}, run_at=FAR_FUTURE).id for _ in range(3)]
    service.cancel_task(single, actor="olga")
    BulkOperations(service).apply(Selection.of_ids(many), BulkAction.CANCEL, "olga")
    ignore = {"id", "created_at", "updated_at", "finished_at", "next_run_at"}
    reference = {k: v for k, v in task_to_dict(service.require_task(single)).items() if k not in ignore}
    for task_id in many:
        db.session.expire_all()
        row = service.require_task(task_id)
        assert {k: v for k, v in task_to_dict(row).items() if k not in ignore} == reference
        assert row.finished_at is not None and row.claim_token is None


def test_bulk_over_a_filter_respects_its_statuses_and_ignores_newer_rows(app_ctx: Flask) -> None:
    service = AsyncTaskService()
    noop = [service.submit_task("NOOP", {}, run_at=FAR_FUTURE).id for _ in range(3)]
    order = service.submit_task("ORDER", {"customer": "c", "amount": 1}, run_at=FAR_FUTURE).id
    result = BulkOperations(service).apply(Selection.matching(TaskFilter(task_type="NOOP", statuses=("PENDING",))),
                                           BulkAction.CANCEL, "olga")
    assert sorted(result.changed_ids) == noop
    assert statuses([order]) == ["PENDING"]


def test_selection_and_action_validation() -> None:
    with pytest.raises(ValidationError, match="positive integer"):
        Selection.of_ids(["12", "abc"])
    assert Selection.of_ids(["3", 3, "4"]).ids == (3, 4)
    with pytest.raises(ValidationError, match="at most"):
        Selection.of_ids(range(1, 6002))
    assert parse_action(" Retry ") is BulkAction.RETRY
    with pytest.raises(ValidationError, match="cancel or retry"):
        parse_action("delete")


def test_console_bulk_preview_then_apply(app: Flask) -> None:
    with app.app_context():
        service = AsyncTaskService()
        pending = [service.submit_task("NOOP", {}, run_at=FAR_FUTURE).id for _ in range(2)]
        failed = make_failed(service, 1)
    client, token = logged_in_client(app, "operator", "otto")
    ids = "&".join(f"ids={i}" for i in [*pending, *failed])

    preview = client.get(f"/tasks/bulk?scope=selected&{ids}", headers=htmx("bulk-panel"))
    assert preview.status_code == 200 and "<html" not in preview.text
    assert re.search(r'id="bulk-total">3<', preview.text)
    assert 'id="bulk-cancel"' in preview.text and "Cancel 2 tasks" in preview.text
    assert 'id="bulk-retry"' in preview.text and "Retry 1 task" in preview.text and "Retry 1 tasks" not in preview.text
    assert "hx-confirm=" in preview.text

    data = {"csrf_token": token, "action": "cancel", "scope": "selected", "ids": [*map(str, pending), *map(str, failed)]}
    applied = client.post("/tasks/bulk", data=data, headers=htmx("bulk-panel"))
    assert applied.status_code == 200 and "<html" not in applied.text
    assert "2 tasks cancelled; 1 left unchanged" in applied.text
    assert applied.headers["HX-Trigger"] == "tasks-changed"

    after = client.get(f"/tasks/bulk?scope=selected&{ids}", headers=htmx("bulk-panel")).text
    assert 'id="bulk-cancel"' not in after and 'id="bulk-retry"' in after  # only actions that apply

    # All matching the filter, without JavaScript: a full page, then a redirect back to the list.
    page = client.get("/tasks/bulk?scope=matching&status=FAILURE")
    assert page.status_code == 200 and "<html" in page.text and "task matches the filter" in page.text
    done = client.post("/tasks/bulk", data={"csrf_token": token, "action": "retry", "scope": "matching",
                                            "status": "FAILURE"})
    assert done.status_code == 303 and done.headers["Location"] == "/tasks?status=FAILURE"
    with app.app_context():
        assert statuses(failed) == ["PENDING"]
    assert "1 task sent back to PENDING." in client.get("/tasks").text


def test_console_bulk_refuses_bad_requests(app: Flask) -> None:
    client, token = logged_in_client(app, "operator")
    assert client.post("/tasks/bulk", data={"action": "cancel", "scope": "matching"}).status_code == 400  # no CSRF
    bad_action = client.post("/tasks/bulk", data={"csrf_token": token, "action": "purge", "scope": "matching"},
                             headers=htmx("bulk-panel"))
    assert bad_action.status_code == 400 and "cancel or retry" in bad_action.text
    assert bad_action.headers["HX-Retarget"] == "#messages"
    bad_filter = client.get("/tasks/bulk?scope=matching&priority_min=x")
    assert bad_filter.status_code == 400 and "priority_min" in bad_filter.text
    nothing = client.get("/tasks/bulk?scope=selected", headers=htmx("bulk-panel"))
    assert "Select one or more tasks first" in nothing.text
