"""Console pages on SQLite and PostgreSQL: overview, list with filters and paging, detail, actions."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

from flask import Flask

from tests.console_support import htmx, logged_in_client
from webapp.extensions import db
from webapp.tasks import AsyncTaskService, TaskResult
from webapp.tasks.models import AsyncTask, Notification, utcnow

FAR_FUTURE = "2999-01-01T00:00:00Z"
XSS = "<img src=x onerror=alert(1)>"


def submit(app: Flask, task_type: str = "NOOP", payload: dict | None = None, **kwargs: object) -> int:
    with app.app_context():
        return AsyncTaskService().submit_task(task_type, payload or {}, **kwargs).id  # type: ignore[arg-type]


def run_to_end(app: Flask, task_id: int, result: TaskResult) -> None:
    """Claim one due task as a fake worker and finish it with ``result`` (through the service)."""
    with app.app_context():
        service = AsyncTaskService()
        task_type = service.require_task(task_id).task_type
        claimed = service.claim_due_tasks("test-worker", 50, [task_type])
        assert [t.id for t in claimed] == [task_id], "the test expects one due task of its type"
        service.finish_task(claimed[0], result, worker_id="test-worker", traceback="Traceback: boom")


def row_ids(html: str) -> list[int]:
    return [int(value) for value in re.findall(r'<tr id="task-(\d+)"', html)]


def test_overview_page_and_partial(app: Flask) -> None:
    submit(app)
    failed = submit(app, "FATAL")
    run_to_end(app, failed, TaskResult.failure("bad", retryable=False))
    client, _ = logged_in_client(app, "viewer")
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert "<html" in html and 'id="overview-live"' in html
    assert re.search(r'id="count-PENDING">\s*<span class="count">1</span>', html)
    assert re.search(r'id="count-FAILURE">\s*<span class="count">1</span>', html)
    assert '<svg id="throughput-chart"' in html and 'class="bar-fail"' in html
    assert "1 due now" in html
    assert "not configured" in html  # no Redis in this app
    assert 'hx-trigger="load delay:2s' in html

    partial = client.get("/", headers=htmx("overview-live"))
    assert partial.status_code == 200
    assert "<html" not in partial.text and partial.text.lstrip().startswith('<section id="overview-live"')


def test_overview_shows_workers_online_and_redis_state(make_app: Callable[..., Flask]) -> None:
    app = make_app(redis=True)
    with app.app_context():
        AsyncTaskService().register_worker("w-1", "host-a", 4242, 3, 5.0)
    client, _ = logged_in_client(app, "viewer")
    html = client.get("/").text
    assert re.search(r'id="workers-online".*?<span class="value">1</span>', html, re.S)
    assert "0 of 3 threads busy" in html
    assert 'data-state="connected"' in html


def test_task_list_filters_and_canonical_url(app: Flask) -> None:
    a = submit(app, "NOOP", {"n": 1}, priority=5, created_by="ann@example.com", run_at=FAR_FUTURE)
    b = submit(app, "ORDER", {"customer": "x", "amount": 1}, priority=1, created_by="bob")
    c = submit(app, "NOOP", {"n": 2}, priority=9, created_by="bob")
    with app.app_context():
        AsyncTaskService().cancel_task(c)
    client, _ = logged_in_client(app, "viewer")

    assert row_ids(client.get("/tasks").text) == [c, b, a]
    assert row_ids(client.get("/tasks?task_type=NOOP").text) == [c, a]
    assert row_ids(client.get("/tasks?status=PENDING").text) == [b, a]
    assert row_ids(client.get("/tasks?status=pending&status=CANCELLED").text) == [c, b, a]
    assert row_ids(client.get("/tasks?status=CANCELLED,PENDING&task_type=NOOP").text) == [c, a]
    assert row_ids(client.get("/tasks?priority_min=2&priority_max=6").text) == [a]
    assert row_ids(client.get("/tasks?created_by=bob").text) == [c, b]
    assert row_ids(client.get(f"/tasks?id={b}").text) == [b]
    future = (utcnow() + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
    assert row_ids(client.get(f"/tasks?created_before={future}").text) == [c, b, a]
    assert row_ids(client.get(f"/tasks?created_after={future}Z").text) == []

    # The filter form is sent by htmx with empty fields; the address bar gets the canonical URL.
    response = client.get("/tasks?task_type=NOOP&status=pending&priority_min=&created_by=&id=",
                          headers=htmx("task-results"))
    assert response.status_code == 200 and "<html" not in response.text
    assert response.headers["HX-Push-Url"] == "/tasks?task_type=NOOP&status=PENDING"
    assert response.text.lstrip().startswith('<section id="task-results"')


def test_task_list_reports_bad_filters_and_keeps_the_input(app: Flask) -> None:
    client, _ = logged_in_client(app, "viewer")
    response = client.get("/tasks?priority_min=high&status=DONE&created_after=yesterday&id=-4&created_by=%3Cb%3E")
    assert response.status_code == 400
    html = response.text
    assert "Priority from must be a whole number" in html  # the form's label, not the parameter (issue 16 item 11)
    assert "unknown status &#39;DONE&#39;" in html
    assert "created_after must be a time" in html
    assert "id must be a positive integer" in html
    assert 'value="high"' in html and 'value="yesterday"' in html
    assert 'value="&lt;b&gt;"' in html  # the creator filter is escaped too
    partial = client.get("/tasks?priority_min=high", headers=htmx("task-results"))
    assert partial.status_code == 400 and partial.headers["HX-Push-Url"] == "false"


def test_task_list_keyset_pagination(app: Flask) -> None:
    ids = [submit(app, "NOOP", {"n": n}, run_at=FAR_FUTURE) for n in range(5)]
    client, _ = logged_in_client(app, "viewer")
    first = client.get("/tasks?limit=2&task_type=NOOP").text
    assert row_ids(first) == [ids[4], ids[3]]
    next_link = re.search(r'id="next-page" hx-get="([^"]+)"', first)
    assert next_link
    url = next_link.group(1).replace("&amp;", "&")
    assert dict(parse_qsl(urlsplit(url).query)) == {"task_type": "NOOP", "limit": "2", "cursor": str(ids[3])}
    second = client.get(url).text
    assert row_ids(second) == [ids[2], ids[1]]
    third = client.get(f"/tasks?limit=2&task_type=NOOP&cursor={ids[1]}").text
    assert row_ids(third) == [ids[0]] and 'id="next-page"' not in third
    assert "First page" in third


def test_rows_partial_polls_only_while_something_can_change(app: Flask) -> None:
    waiting = submit(app, run_at=FAR_FUTURE)
    client, _ = logged_in_client(app, "operator")
    live = client.get(f"/tasks?id={waiting}&ids={waiting}", headers=htmx("task-rows"))
    assert live.status_code == 200 and "<html" not in live.text
    assert live.text.lstrip().startswith('<tbody id="task-rows"')
    assert "load delay:1500ms" in live.text
    assert f'hx-get="/tasks?id={waiting}"' in live.text  # the poll keeps the filter
    assert re.search(rf'id="select-{waiting}"[^>]*checked', live.text)  # and the ticked box
    assert f'<tr id="task-{waiting}" data-status="PENDING">' in live.text
    with app.app_context():
        AsyncTaskService().cancel_task(waiting)
    done = client.get(f"/tasks?id={waiting}", headers=htmx("task-rows")).text
    assert f'<tr id="task-{waiting}" data-status="CANCELLED">' in done
    assert "load delay" not in done  # everything shown is terminal: polling stops
    assert "tasks-changed from:body" in done  # but a bulk action still refreshes the rows


def test_task_detail_shows_everything_escaped(app: Flask) -> None:
    task_id = submit(app, "NOOP", {"note": XSS, "nested": {"list": [1, 2]}}, created_by="<script>alert(2)</script>")
    run_to_end(app, task_id, TaskResult.failure(f"failed with {XSS}"))
    client, _ = logged_in_client(app, "viewer")
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 200
    html = response.text
    assert XSS not in html and "<script>alert(2)" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    assert "&#34;nested&#34;: {\n    &#34;list&#34;: [\n      1,\n      2\n    ]\n  }" in html  # pretty JSON
    for field in ("retry_strategy", "max_retry_count", "next_run_at", "created_at", "worker_id", "attempts"):
        assert f'<th scope="row">{field}</th>' in html
    assert 'id="task-status" data-status="RETRYING"' in html
    assert "Failed; retry scheduled" in html and "Traceback: boom" in html
    assert "Claimed by a worker" in html and "Submitted" in html


def test_task_detail_partials_and_polling(app: Flask) -> None:
    task_id = submit(app, run_at=FAR_FUTURE)
    client, _ = logged_in_client(app, "viewer")
    live = client.get(f"/tasks/{task_id}", headers=htmx("task-live"))
    assert live.status_code == 200 and "<html" not in live.text
    assert live.text.lstrip().startswith('<section id="task-live"') and "load delay:1s" in live.text
    assert '<section class="block" id="task-fields" hx-swap-oob="true">' in live.text  # fields too
    assert "hx-swap-oob" not in client.get(f"/tasks/{task_id}").text  # but not on the full page
    notes = client.get(f"/tasks/{task_id}", headers=htmx("task-notifications"))
    assert "<html" not in notes.text and notes.text.lstrip().startswith('<section id="task-notifications"')
    with app.app_context():
        AsyncTaskService().cancel_task(task_id)
    final = client.get(f"/tasks/{task_id}", headers=htmx("task-live")).text
    assert 'data-status="CANCELLED"' in final and "load delay" not in final
    # A history restore asks for the whole page even though htmx sent it.
    restore = client.get(f"/tasks/{task_id}", headers=htmx("task-live", **{"HX-History-Restore-Request": "true"}))
    assert "<html" in restore.text


def test_recovery_is_shown_as_such(app: Flask) -> None:
    task_id = submit(app)
    with app.app_context():
        service = AsyncTaskService()
        assert [t.id for t in service.claim_due_tasks("ghost-worker", 10)] == [task_id]
        assert service.recover_orphans(3600, 0.1) == [task_id]  # the worker never registered: dead
    client, _ = logged_in_client(app, "viewer")
    html = client.get(f"/tasks/{task_id}").text
    assert 'class="event-recovered" data-kind="RECOVERED"' in html
    assert "Recovered (its worker died or it ran too long)" in html
    assert "worker ghost-worker stopped heartbeating" in html


def test_buttons_only_when_the_transition_is_allowed(app: Flask) -> None:
    pending = submit(app, run_at=FAR_FUTURE)
    failed = submit(app, "FATAL")
    run_to_end(app, failed, TaskResult.failure("no", retryable=False))
    client, _ = logged_in_client(app, "operator")
    pending_html = client.get(f"/tasks/{pending}").text
    assert 'id="cancel-button"' in pending_html and 'id="retry-button"' not in pending_html
    assert f'hx-post="/tasks/{pending}/cancel"' in pending_html and "hx-confirm=" in pending_html
    failed_html = client.get(f"/tasks/{failed}").text
    assert 'id="retry-button"' in failed_html and 'id="cancel-button"' not in failed_html


def test_running_task_can_only_be_asked_to_stop(app: Flask) -> None:
    task_id = submit(app, "SLEEP", {"seconds": 1})
    with app.app_context():
        claimed = AsyncTaskService().claim_due_tasks("test-worker", 10, ["SLEEP"])
        assert [t.id for t in claimed] == [task_id]
    client, token = logged_in_client(app, "operator")
    page = client.get(f"/tasks/{task_id}").text
    assert "Request cancel" in page and "hx-confirm=" in page
    asked = client.post(f"/tasks/{task_id}/cancel", headers=htmx("task-live", **{"X-CSRFToken": token}))
    assert asked.status_code == 200
    assert "Cancel requested for running task" in asked.text
    assert 'data-status="PROCESSING"' in asked.text and 'id="cancel-requested"' in asked.text
    assert 'id="cancel-button"' not in asked.text  # asked once; asking again changes nothing
    assert "Cancel requested" in asked.text  # on the timeline


def test_cancel_and_retry_from_the_detail_page(app: Flask) -> None:
    pending = submit(app, run_at=FAR_FUTURE)
    failed = submit(app, "FATAL")
    run_to_end(app, failed, TaskResult.failure("no", retryable=False))
    client, token = logged_in_client(app, "operator", "otto")

    # Without JavaScript: a form POST, then a redirect back to the page.
    response = client.post(f"/tasks/{pending}/cancel", data={"csrf_token": token})
    assert response.status_code == 303 and response.headers["Location"] == f"/tasks/{pending}"
    page = client.get(f"/tasks/{pending}").text
    assert 'data-status="CANCELLED"' in page and f"Task {pending} cancelled." in page and "by otto" in page

    # With htmx: the live part comes back, with the message swapped out of band.
    retried = client.post(f"/tasks/{failed}/retry", headers=htmx("task-live", **{"X-CSRFToken": token}))
    assert retried.status_code == 200 and "<html" not in retried.text
    assert 'id="task-status" data-status="PENDING"' in retried.text
    assert 'hx-swap-oob="true"' in retried.text and "sent back to PENDING" in retried.text
    assert "Retried by an operator" in retried.text

    # A refused transition says why, and changes nothing.
    again = client.post(f"/tasks/{pending}/cancel", headers=htmx("task-live", **{"X-CSRFToken": token}))
    assert again.status_code == 409
    assert "cannot cancel task" in again.text and "it is CANCELLED" in again.text
    assert client.post("/tasks/999999/cancel", data={"csrf_token": token}).status_code == 404
    audit = client.get("/audit").text
    assert "task.cancel" in audit and "task.retry" in audit and "refused" in audit
    assert "Refused cancel" in client.get(f"/tasks/{pending}").text  # on the task's timeline too


def test_notifications_on_the_detail_page(app: Flask) -> None:
    task_id = submit(app)
    with app.app_context():
        now = utcnow()
        db.session.add(Notification(task_id=task_id, type="EMAIL", recipient="ann@example.com",
                                    subject="Task done", status="FAILED", attempts=8, max_attempts=8,
                                    last_error=f"SMTP said {XSS}", created_at=now, updated_at=now,
                                    next_attempt_at=now))
        db.session.commit()
    client, _ = logged_in_client(app, "viewer")
    html = client.get(f"/tasks/{task_id}").text
    assert "ann@example.com" in html and 'data-status="FAILED"' in html and "8/8" in html
    assert "SMTP said &lt;img" in html


def test_unknown_task_is_404(app: Flask) -> None:
    client, _ = logged_in_client(app, "viewer")
    assert client.get("/tasks/424242").status_code == 404
    assert client.get("/tasks/99999999999999999999").status_code == 404


def test_workers_task_types_and_audit_pages(app: Flask) -> None:
    with app.app_context():
        service = AsyncTaskService()
        service.register_worker("w-online", "host-a", 101, 4, 5.0)
        service.register_worker("w-stopped", "host-b", 202, 2, 5.0)
        service.stop_worker("w-stopped")
    submit(app, "NOOP")
    client, _ = logged_in_client(app, "viewer")
    workers = client.get("/workers").text
    assert "host-a" in workers and ">101<" in workers and 'data-state="ONLINE"' in workers
    assert 'data-state="STOPPED"' in workers
    partial = client.get("/workers", headers=htmx("workers-live")).text
    assert "<html" not in partial and "host-a" in partial

    types = client.get("/task-types").text
    assert 'id="type-FLAKY"' in types and "3 × FIXED, base 300 ms" in types
    assert "tests.processors.NoopProcessor" in types
    assert re.search(r'id="type-NOOP">.*?task_type=NOOP&amp;status=PENDING">1</a>', types, re.S)
    assert "SleepPayload" in types

    audit = client.get("/audit?action=login").text
    assert "viewer-user" in audit and 'data-outcome="ok"' in audit


def test_operator_pauses_and_resumes_a_task_type(app: Flask) -> None:
    viewer, viewer_token = logged_in_client(app, "viewer")
    assert 'id="pause-NOOP"' not in viewer.get("/task-types").text
    assert viewer.post("/task-types/NOOP/pause", data={"csrf_token": viewer_token}).status_code == 403
    client, token = logged_in_client(app, "operator", "otto")
    assert client.post("/task-types/NOOP/pause").status_code == 400  # no CSRF token
    paused = client.post("/task-types/NOOP/pause", data={"csrf_token": token})
    assert paused.status_code == 303
    page = client.get("/task-types").text
    assert 'id="resume-NOOP"' in page and "NOOP paused" in page
    with app.app_context():
        assert AsyncTaskService().paused_task_types() == ["NOOP"]
    assert client.post("/task-types/NOOP/resume", data={"csrf_token": token}).status_code == 303
    assert 'id="pause-NOOP"' in client.get("/task-types").text
    assert client.post("/task-types/NO_SUCH_TYPE/pause", data={"csrf_token": token}).status_code == 400
    assert "task_type.pause" in client.get("/audit?actor=otto").text


def test_task_types_lists_unregistered_types(app: Flask) -> None:
    submit(app, "NOOP")
    with app.app_context():
        db.session.execute(db.update(AsyncTask).values(task_type="RETIRED_TYPE"))
        db.session.commit()
    client, _ = logged_in_client(app, "viewer")
    html = client.get("/task-types").text
    assert "without a processor" in html and "RETIRED_TYPE" in html


def test_static_assets_are_vendored(app: Flask) -> None:
    client = app.test_client()
    htmx_js = client.get("/static/vendor/htmx.min.js")
    assert htmx_js.status_code == 200 and b'version:"2.0.' in htmx_js.data
    assert client.get("/static/console.css").status_code == 200
    assert client.get("/static/console.js").status_code == 200
