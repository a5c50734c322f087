"""Console operator features on SQLite and PostgreSQL: progress, cancel requests, pause, edit and
retry, search with highlighted matches."""

from __future__ import annotations

import re
from typing import Any

from flask import Flask
from markupsafe import escape

from tests.console_support import htmx, logged_in_client
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.models import AsyncTask, AuditEntry
from webapp.tasks.progress import TaskContext

FAR_FUTURE = "2999-01-01T00:00:00Z"
XSS = "<img src=x onerror=alert(1)>"


def submit(app: Flask, task_type: str = "NOOP", payload: dict | None = None, **kwargs: Any) -> int:
    with app.app_context():
        return AsyncTaskService().submit_task(task_type, payload or {}, **kwargs).id


def fail(app: Flask, task_id: int, message: str) -> None:
    """Claim the task as a fake worker and finish it with a non-retryable failure."""
    with app.app_context():
        service = AsyncTaskService()
        claimed = service.claim_due_tasks("test-worker", 50, [service.require_task(task_id).task_type])
        assert [t.id for t in claimed] == [task_id]
        service.finish_task(claimed[0], TaskResult.failure(message, retryable=False), worker_id="test-worker")


def test_progress_bar_cancel_request_and_too_late(app: Flask) -> None:
    task_id = submit(app, "STEPS", {"steps": 10})
    with app.app_context():
        claimed = AsyncTaskService().claim_due_tasks("test-worker", 5, ["STEPS"])
        assert [t.id for t in claimed] == [task_id]
        TaskContext(app, claimed[0]).report_progress(0.42, "row 42 of 100 <b>")
    client, token = logged_in_client(app, "operator", "opal")

    rows = client.get(f"/tasks?id={task_id}", headers=htmx("task-rows")).text
    assert re.search(rf'<progress max="100" value="42" aria-label="Progress of task {task_id}">', rows)
    assert "row 42 of 100 &lt;b&gt;" in rows and "<b>" not in rows
    detail = client.get(f"/tasks/{task_id}").text
    assert '<progress max="100" value="42"' in detail and 'id="cancel-requested"' not in detail

    asked = client.post(f"/tasks/{task_id}/cancel", data={"csrf_token": token})
    assert asked.status_code == 303
    detail = client.get(f"/tasks/{task_id}").text
    assert 'id="cancel-requested"' in detail and "waiting for the processor to stop" in detail
    assert 'data-kind="CANCEL_REQUESTED"' in detail and "Cancel requested by an operator" in detail
    rows = client.get(f"/tasks?id={task_id}", headers=htmx("task-rows")).text
    assert "cancel requested" in rows

    # The processor ignores the request and succeeds: the timeline says the request came too late.
    with app.app_context():
        AsyncTaskService().finish_task(claimed[0], TaskResult.success({"done": True}), worker_id="test-worker")
    detail = client.get(f"/tasks/{task_id}").text
    assert 'data-status="SUCCESS"' in detail and "<progress" not in detail
    assert 'data-kind="CANCEL_TOO_LATE"' in detail and "Cancel request not honoured" in detail
    assert 'id="cancel-requested"' not in detail and 'id="edit-retry-link"' not in detail


def test_pause_all_and_resume_all_from_the_overview(app: Flask) -> None:
    viewer, _ = logged_in_client(app, "viewer")
    assert 'id="pause-all"' not in viewer.get("/").text
    client, token = logged_in_client(app, "operator", "omar")
    overview = client.get("/").text
    assert 'id="claiming"' in overview and "Every task type is claimed." in overview
    assert 'id="pause-all"' in overview

    paused = client.post("/task-types/*/pause", data={"csrf_token": token, "next": "/"})
    assert paused.status_code == 303 and paused.headers["Location"] == "/"
    overview = client.get("/").text
    assert 'data-all-paused="true"' in overview and "All task types are paused" in overview
    assert 'id="resume-all"' in overview and "Every task type paused" in overview  # the flash
    assert "paused (all types)" in client.get("/task-types").text
    task_id = submit(app)
    with app.app_context():
        assert AsyncTaskService().claim_due_tasks("test-worker", 5) == []

    client.post("/task-types/NOOP/pause", data={"csrf_token": token})
    client.post("/task-types/*/resume", data={"csrf_token": token, "next": "https://evil.example/"})
    live = client.get("/", headers=htmx("overview-live")).text
    assert 'data-all-paused="false"' in live and "Paused:" in live and ">NOOP</a>" in live
    client.post("/task-types/NOOP/resume", data={"csrf_token": token})
    with app.app_context():
        assert [t.id for t in AsyncTaskService().claim_due_tasks("test-worker", 5)] == [task_id]
        actions = [(a.action, a.target_id, a.actor) for a in db.session.query(AuditEntry)
                   .filter(AuditEntry.action.like("task_type.%")).order_by(AuditEntry.id)]
    assert actions == [("task_type.pause", "*", "omar"), ("task_type.pause", "NOOP", "omar"),
                       ("task_type.resume", "*", "omar"), ("task_type.resume", "NOOP", "omar")]


def test_edit_and_retry_creates_a_linked_task(app: Flask) -> None:
    original = submit(app, "ORDER", {"customer": "ACME", "amount": 3}, run_at=FAR_FUTURE)
    client, token = logged_in_client(app, "operator", "edna")
    client.post(f"/tasks/{original}/cancel", data={"csrf_token": token})
    detail = client.get(f"/tasks/{original}").text
    assert f'href="/tasks/{original}/edit-retry"' in detail

    form = client.get(f"/tasks/{original}/edit-retry")
    assert form.status_code == 200
    assert str(escape('"customer": "ACME"')) in form.text
    assert "OrderPayload" in form.text and "customer</code> (str, required)" in form.text

    bad_json = '{"customer": "ACME", "amount": }'
    response = client.post(f"/tasks/{original}/edit-retry", data={"csrf_token": token, "payload": bad_json})
    assert response.status_code == 400
    assert "not valid JSON" in response.text and "line 1, column" in response.text
    assert str(escape(bad_json)) in response.text  # the typed text is kept

    missing = '{"amount": 4, "note": "' + XSS + '"}'
    response = client.post(f"/tasks/{original}/edit-retry", data={"csrf_token": token, "payload": missing})
    assert response.status_code == 422
    assert "missing required field &#39;customer&#39;" in response.text and "(payload.customer)" in response.text
    assert XSS not in response.text and str(escape(XSS)) in response.text

    fixed = '{"customer": "ACME", "amount": 4}'
    response = client.post(f"/tasks/{original}/edit-retry", data={"csrf_token": token, "payload": fixed})
    assert response.status_code == 303
    new_id = int(response.headers["Location"].rsplit("/", 1)[1])
    with app.app_context():
        new_task = db.session.get(AsyncTask, new_id)
        old_task = db.session.get(AsyncTask, original)
        assert new_task is not None and old_task is not None
        assert (new_task.parent_id, new_task.payload, new_task.status) == (original, {"customer": "ACME", "amount": 4}, "PENDING")
        assert (old_task.status, old_task.payload) == ("CANCELLED", {"customer": "ACME", "amount": 3})
        audit = db.session.query(AuditEntry).filter_by(action="task.resubmit").one()
        assert (audit.actor, audit.target_id, audit.detail) == ("edna", str(original), {"new_task_id": new_id})

    new_page = client.get(f"/tasks/{new_id}").text
    assert f"Task {new_id} created from task {original}" in new_page
    assert re.search(rf'id="resubmitted-from">Resubmitted from <a href="/tasks/{original}">#{original}</a>', new_page)
    old_page = client.get(f"/tasks/{original}").text
    assert re.search(rf'id="resubmitted-as">Resubmitted as <a href="/tasks/{new_id}">#{new_id}</a>', old_page)
    assert 'data-kind="RESUBMITTED"' in old_page


def test_edit_and_retry_is_for_operators_and_finished_failures(app: Flask) -> None:
    pending = submit(app, run_at=FAR_FUTURE)
    failed = submit(app, "FATAL", {"x": 1})
    fail(app, failed, "broken")
    viewer, viewer_token = logged_in_client(app, "viewer")
    assert 'id="edit-retry-link"' not in viewer.get(f"/tasks/{failed}").text
    assert viewer.get(f"/tasks/{failed}/edit-retry").status_code == 403
    assert viewer.post(f"/tasks/{failed}/edit-retry",
                       data={"csrf_token": viewer_token, "payload": "{}"}).status_code == 403

    client, token = logged_in_client(app, "operator")
    assert 'id="edit-retry-link"' in client.get(f"/tasks/{failed}").text
    assert 'id="edit-retry-link"' not in client.get(f"/tasks/{pending}").text
    refused = client.get(f"/tasks/{pending}/edit-retry")
    assert refused.status_code == 409 and 'id="edit-refused"' in refused.text
    posted = client.post(f"/tasks/{pending}/edit-retry", data={"csrf_token": token, "payload": "{}"})
    assert posted.status_code == 409 and "only FAILURE or CANCELLED" in posted.text
    assert client.post(f"/tasks/{failed}/edit-retry", data={"payload": "{}"}).status_code == 400  # no CSRF
    not_object = client.post(f"/tasks/{failed}/edit-retry", data={"csrf_token": token, "payload": "[1]"})
    assert not_object.status_code == 422 and "payload must be a JSON object" in not_object.text
    with app.app_context():
        assert db.session.query(AsyncTask).filter(AsyncTask.parent_id.isnot(None)).count() == 0


def test_search_finds_error_and_payload_text_and_marks_it_safely(app: Flask) -> None:
    failed = submit(app, "FATAL", {"file": "orders.csv"})
    fail(app, failed, f"cloud API said {XSS} while creating the server")
    payload_hit = submit(app, "NOOP", {"customer": "Zebra Logistics", "note": "x" * 100}, run_at=FAR_FUTURE)
    other = submit(app, "NOOP", {"customer": "Nobody"}, run_at=FAR_FUTURE)
    client, _ = logged_in_client(app, "viewer")

    page = client.get("/tasks?search=onerror")
    assert page.status_code == 200
    assert row_ids(page.text) == [failed]
    assert "cloud API said &lt;img src=x <mark>onerror</mark>=alert(1)&gt; while" in page.text
    assert XSS not in page.text and 'value="onerror"' in page.text

    rows = client.get("/tasks?search=zebra+LOG", headers=htmx("task-rows")).text
    assert row_ids(rows) == [payload_hit]
    assert '<span class="match-field">payload</span>' in rows and "<mark>Zebra Log</mark>" in rows
    assert rows.count("…") == 1 and rows.index("<mark>") < rows.index("…")  # long tail clipped

    by_id = client.get(f"/tasks?search={other}").text
    assert other in row_ids(by_id) and f"<mark>{other}</mark>" in by_id

    results = client.get("/tasks?search=orders.csv&status=FAILURE", headers=htmx("task-results"))
    assert results.headers["HX-Push-Url"] == "/tasks?status=FAILURE&search=orders.csv"
    assert row_ids(results.text) == [failed] and "hx-get=\"/tasks?status=FAILURE&amp;search=orders.csv\"" in results.text

    too_long = client.get("/tasks?search=" + "a" * 201)
    assert too_long.status_code == 400 and "search must be at most 200 characters" in too_long.text


def row_ids(html: str) -> list[int]:
    return [int(value) for value in re.findall(r'<tr id="task-(\d+)"', html)]
