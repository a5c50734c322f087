"""Exports (issue 16): the filtered task list, the audit log and notifications as CSV and JSON
Lines, streamed in keyset batches, audited, from the console and the API, on both databases."""

from __future__ import annotations

import csv
import io
import json
import time
import tracemalloc
from collections.abc import Callable

import pytest
from flask import Flask
from sqlalchemy import select, text

from tests.console_support import logged_in_client
from webapp.accounts.tokens import create_token
from webapp.exports import ExportFormat, export_tasks, keyset_rows
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.masking import MASK
from webapp.tasks.models import AsyncTask, AuditEntry
from webapp.tasks.queries import TaskFilter, filtered_query
from webapp.tasks.serialize import task_to_dict

PROCESSORS = ["tests.processors", "tests.masking_processors"]
API_KEY = "sk-export-secret-0001"


@pytest.fixture
def app(make_app: Callable[..., Flask], backend: str) -> Flask:
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS)


def _seed(app: Flask) -> tuple[list[int], int]:
    """Five NOOP tasks (one with a formula-looking creator) and one CALL_WITH_KEY that failed."""
    with app.app_context():
        service = AsyncTaskService()
        noop = [service.submit_task("NOOP", {"n": n}, created_by="=cmd|' /C calc'!A0" if n == 0 else None).id
                for n in range(5)]
        keyed = service.submit_task("CALL_WITH_KEY", {"api_key": API_KEY, "q": "weather"},
                                    created_by="ops@example.com").id
        claimed = service.claim_due_tasks("test-worker", 10, ["CALL_WITH_KEY"])
        service.finish_task(claimed[0], TaskResult.failure(f"bad key {API_KEY}", retryable=False),
                            worker_id="test-worker")
    return noop, keyed


def _export_audits(app: Flask) -> list[AuditEntry]:
    with app.app_context():
        return list(db.session.scalars(select(AuditEntry).where(AuditEntry.action.startswith("export."))
                                       .order_by(AuditEntry.id)))


def test_console_task_export_csv_follows_the_filter_masks_and_is_audited(app: Flask) -> None:
    noop, keyed = _seed(app)
    client, _ = logged_in_client(app, "viewer", "vera")
    listing = client.get("/tasks", query_string={"task_type": "NOOP"}).text
    assert 'id="export-csv" download href="/tasks/export?format=csv&amp;task_type=NOOP"' in listing

    response = client.get("/tasks/export?format=csv&task_type=NOOP")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="taskdeck-tasks-')
    assert response.is_streamed
    rows = list(csv.DictReader(io.StringIO(response.get_data(as_text=True))))
    assert [int(row["id"]) for row in rows] == sorted(noop, reverse=True)
    assert json.loads(rows[-1]["payload"]) == {"n": 0}
    assert rows[-1]["created_by"] == "'=cmd|' /C calc'!A0"  # defused for spreadsheets
    assert rows[0]["created_by"] == "" and rows[0]["status"] == "PENDING"

    everything = client.get("/tasks/export?format=csv").get_data(as_text=True)
    assert API_KEY not in everything and MASK in everything
    keyed_row = next(row for row in csv.DictReader(io.StringIO(everything)) if int(row["id"]) == keyed)
    assert json.loads(keyed_row["payload"]) == {"api_key": MASK, "q": "weather"}
    assert keyed_row["error"] == f"bad key {MASK}"

    audits = _export_audits(app)
    assert [(a.actor, a.action, a.target_id) for a in audits] == [("vera", "export.tasks", "tasks")] * 2
    assert audits[0].detail == {"format": "csv", "filters": {"task_type": "NOOP"}}


def test_console_exports_json_lines_audit_and_notifications(app: Flask) -> None:
    _, keyed = _seed(app)
    client, _ = logged_in_client(app, "operator", "otto")
    lines = client.get("/tasks/export?format=jsonl&status=FAILURE").get_data(as_text=True).splitlines()
    assert [json.loads(line)["id"] for line in lines] == [keyed]
    assert json.loads(lines[0])["payload"]["api_key"] == MASK

    audit = client.get("/audit/export?format=jsonl&action=export.").get_data(as_text=True).splitlines()
    assert [json.loads(line)["action"] for line in audit] == ["export.audit", "export.tasks"]  # itself first
    assert json.loads(audit[0])["actor"] == "otto"

    notes = client.get(f"/notifications/export?format=csv&task_id={keyed}")
    assert notes.status_code == 200
    rows = list(csv.DictReader(io.StringIO(notes.get_data(as_text=True))))
    assert [(int(r["task_id"]), r["type"], r["recipient"]) for r in rows] == [(keyed, "EMAIL", "ops@example.com")]
    assert [a.action for a in _export_audits(app)] == ["export.tasks", "export.audit", "export.notifications"]


def test_console_export_refuses_bad_input_and_records_nothing(app: Flask) -> None:
    client, _ = logged_in_client(app, "viewer")
    bad_format = client.get("/tasks/export?format=xlsx")
    assert bad_format.status_code == 400 and "format must be csv or jsonl" in bad_format.text
    bad_filter = client.get("/tasks/export?format=csv&priority_min=high")
    assert bad_filter.status_code == 400 and "priority_min" in bad_filter.text
    assert client.get("/notifications/export?status=LOST").status_code == 400
    assert _export_audits(app) == []
    anonymous = app.test_client().get("/tasks/export")
    assert anonymous.status_code in (302, 303) and "/login" in anonymous.headers["Location"]


def test_api_exports_respect_reach_and_name_bad_fields(app: Flask) -> None:
    with app.app_context():
        _, own_secret = create_token("own-client", reach="own", scopes=["submit", "read"])
        _, all_secret = create_token("ops-client", reach="all", scopes=["read"])
    client = app.test_client()
    own = {"Authorization": f"Bearer {own_secret}"}
    everyone = {"Authorization": f"Bearer {all_secret}"}
    mine = client.post("/api/tasks", json={"task_type": "NOOP", "payload": {"mine": True}}, headers=own).json["id"]
    _seed(app)

    lines = client.get("/api/exports/tasks?format=jsonl", headers=own).get_data(as_text=True).splitlines()
    assert [json.loads(line)["id"] for line in lines] == [mine]
    all_rows = client.get("/api/exports/tasks", headers=everyone)
    assert all_rows.mimetype == "text/csv" and len(all_rows.get_data(as_text=True).splitlines()) == 1 + 7

    refused = client.get("/api/exports/audit", headers=own)
    assert refused.status_code == 403 and "reaches every task" in refused.json["error"]["message"]
    assert client.get("/api/exports/notifications", headers=own).status_code == 403
    bad = client.get("/api/exports/tasks?format=xml", headers=everyone)
    assert bad.status_code == 422 and bad.json["error"]["field"] == "format"
    bad_status = client.get("/api/exports/notifications?status=LOST", headers=everyone)
    assert bad_status.status_code == 422 and bad_status.json["error"]["field"] == "status"
    audit = client.get("/api/exports/audit?format=jsonl&action=export.", headers=everyone).get_data(as_text=True)
    assert [json.loads(line)["actor"] for line in audit.splitlines()] == [
        "api:ops-client", "api:ops-client", "api:own-client"]


def test_keyset_batches_read_every_row_once_newest_first(app: Flask) -> None:
    with app.app_context():
        ids = [task.id for task in AsyncTaskService().submit_many(
            [{"task_type": "NOOP", "payload": {"n": n}} for n in range(23)])]
        rows = list(keyset_rows(filtered_query(TaskFilter(task_type="NOOP")), AsyncTask.id, task_to_dict, batch=5))
    assert [row["id"] for row in rows] == sorted(ids, reverse=True)


def _peak_bytes_exporting(app: Flask, task_type: str) -> tuple[int, int, float]:
    """Peak traced memory, bytes written and seconds for one export of ``task_type``."""
    with app.test_request_context():
        export = export_tasks(TaskFilter(task_type=task_type), ExportFormat.CSV, "test")
        tracemalloc.start()
        started = time.perf_counter()
        written = sum(len(chunk) for chunk in export.chunks())
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, written, elapsed


def test_memory_stays_flat_as_rows_grow_postgres(make_app: Callable[..., Flask]) -> None:
    """2,000 and 12,000 rows of ~300 bytes each: the export's peak memory does not grow with them."""
    app = make_app("postgres", ASYNC_TASK_PROCESSORS=PROCESSORS)
    insert = text("""
        INSERT INTO async_task (task_type, status, priority, payload, retry_count, max_retry_count,
                                retry_strategy, retry_interval, created_at, updated_at, next_run_at,
                                attempts, recovery_count, retry_jitter, pending_parents)
        SELECT :task_type, 'SUCCESS', 0, jsonb_build_object('n', g, 'text', repeat('x', 200)), 0, 3,
               'EXPONENTIAL', 60, now(), now(), now(), 1, 0, 0, 0
        FROM generate_series(1, :rows) AS g""")
    with app.app_context():
        db.session.execute(insert, {"task_type": "BULK_SMALL", "rows": 2_000})
        db.session.execute(insert, {"task_type": "BULK_LARGE", "rows": 12_000})
        db.session.commit()
    small_peak, small_bytes, _ = _peak_bytes_exporting(app, "BULK_SMALL")
    large_peak, large_bytes, seconds = _peak_bytes_exporting(app, "BULK_LARGE")
    print(f"export of 12,000 rows: {large_bytes / 1e6:.1f} MB in {seconds:.1f} s, "
          f"peak Python memory {large_peak / 1e6:.1f} MB (2,000 rows: {small_peak / 1e6:.1f} MB)")
    assert large_bytes > 5 * small_bytes
    assert large_peak < 1.5 * small_peak + 1_000_000, (small_peak, large_peak)
