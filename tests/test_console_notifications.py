"""The console's /notifications page on SQLite and PostgreSQL: filters, pages, counts, live
refresh, and the operator's resend of FAILED notifications (role, CSRF, audit)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit

from flask import Flask
from sqlalchemy import select

from tests.console_support import htmx, logged_in_client
from webapp.extensions import db
from webapp.tasks import AsyncTaskService
from webapp.tasks.models import AuditEntry, Notification, utcnow

XSS = "<img src=x onerror=alert(1)>"


def add_notification(app: Flask, task_id: int, status: str, recipient: str = "ann@example.com",
                     kind: str = "EMAIL", last_error: str | None = None) -> int:
    """An outbox row as the engine leaves it (seeded directly: the console only reads it)."""
    with app.app_context():
        now = utcnow()
        note = Notification(task_id=task_id, type=kind, recipient=recipient, subject=f"Task {task_id}",
                            status=status, attempts=8 if status == "FAILED" else 1, max_attempts=8,
                            last_error=last_error, created_at=now, updated_at=now, next_attempt_at=now,
                            sent_at=now if status == "SENT" else None)
        db.session.add(note)
        db.session.commit()
        return note.id


def new_task(app: Flask) -> int:
    with app.app_context():
        return AsyncTaskService().submit_task("NOOP", {}, run_at="2999-01-01T00:00:00Z").id


def row_ids(html: str) -> list[int]:
    return [int(value) for value in re.findall(r'<tr id="notification-(\d+)"', html)]


def status_of(app: Flask, note_id: int) -> str:
    with app.app_context():
        note = db.session.get(Notification, note_id)
        assert note is not None
        return note.status


def seed(app: Flask) -> dict[str, int]:
    first, second = new_task(app), new_task(app)
    return {
        "first": first,
        "second": second,
        "sent": add_notification(app, first, "SENT"),
        "failed": add_notification(app, first, "FAILED", recipient=f"{XSS}@example.com",
                                   last_error=f"SMTP said {XSS}"),
        "webhook": add_notification(app, second, "SKIPPED", recipient="https://hooks.example/x",
                                    kind="WEBHOOK", last_error="private address refused"),
    }


def test_list_counts_filters_and_nav(app: Flask) -> None:
    ids = seed(app)
    client, _ = logged_in_client(app, "viewer")
    page = client.get("/notifications")
    assert page.status_code == 200
    html = page.text
    assert row_ids(html) == [ids["webhook"], ids["failed"], ids["sent"]]  # newest first
    assert 'href="/notifications" aria-current="page"' in html  # nav link, current
    assert re.search(r'id="notification-count-FAILED">\s*<span class="count">1</span>', html)
    assert re.search(r'id="notification-count-PENDING">\s*<span class="count">0</span>', html)
    assert "hx-trigger=\"notifications-changed from:body\"" in html  # nothing PENDING: no polling
    assert 'id="resend-' not in html  # a viewer gets no resend button

    assert row_ids(client.get("/notifications?status=FAILED").text) == [ids["failed"]]
    assert row_ids(client.get("/notifications?status=sent,skipped").text) == [ids["webhook"], ids["sent"]]
    assert row_ids(client.get("/notifications?type=webhook").text) == [ids["webhook"]]
    assert row_ids(client.get(f"/notifications?task_id={ids['first']}").text) == [ids["failed"], ids["sent"]]
    assert row_ids(client.get("/notifications?recipient=ann%40example.com").text) == [ids["sent"]]
    assert row_ids(client.get("/notifications?recipient=nobody%40example.com").text) == []


def test_escapes_recipient_and_error(app: Flask) -> None:
    seed(app)
    client, _ = logged_in_client(app, "viewer")
    html = client.get("/notifications").text
    assert XSS not in html
    assert "&lt;img src=x onerror=alert(1)&gt;@example.com" in html
    assert "SMTP said &lt;img src=x onerror=alert(1)&gt;" in html


def test_bad_filters_are_named_and_keep_the_text(app: Flask) -> None:
    seed(app)
    client, _ = logged_in_client(app, "viewer")
    response = client.get("/notifications?status=LOST&task_id=abc&type=fax&recipient=kept%40example.com")
    assert response.status_code == 400
    html = response.text
    assert "unknown notification status" in html and "task_id must be a positive integer" in html
    assert "unknown notification type" in html
    assert 'value="kept@example.com"' in html and 'value="abc"' in html  # nothing typed is lost
    assert row_ids(html) == []
    partial = client.get("/notifications?cursor=-3", headers=htmx("notification-results"))
    assert partial.status_code == 400 and partial.headers["HX-Push-Url"] == "false"


def test_partials_have_no_page_around_them(app: Flask) -> None:
    ids = seed(app)
    client, _ = logged_in_client(app, "viewer")
    results = client.get("/notifications?type=EMAIL", headers=htmx("notification-results"))
    assert results.status_code == 200 and "<html" not in results.text
    assert results.text.lstrip().startswith('<section id="notification-results">')
    assert results.headers["HX-Push-Url"] == "/notifications?type=EMAIL"
    assert row_ids(results.text) == [ids["failed"], ids["sent"]]
    live = client.get("/notifications", headers=htmx("notification-live"))
    assert live.status_code == 200 and "<html" not in live.text
    assert live.text.lstrip().startswith('<div id="notification-live"')
    assert "HX-Push-Url" not in live.headers  # the poll never touches the address bar


def test_live_while_anything_is_pending(app: Flask) -> None:
    task_id = new_task(app)
    add_notification(app, task_id, "SENT")
    client, _ = logged_in_client(app, "viewer")
    assert "load delay:2s" not in client.get("/notifications").text
    add_notification(app, task_id, "PENDING")
    html = client.get("/notifications?status=SENT").text  # pending elsewhere still changes the counts
    assert 'hx-trigger="load delay:2s, poll-retry delay:5s, notifications-changed from:body"' in html
    assert "data-poll" in html


def test_keyset_pages(app: Flask) -> None:
    task_id = new_task(app)
    made = [add_notification(app, task_id, "SENT", recipient=f"r{n}@example.com") for n in range(5)]
    client, _ = logged_in_client(app, "viewer")
    seen: list[int] = []
    url = "/notifications?limit=2"
    for _ in range(5):
        html = client.get(url).text
        seen += row_ids(html)
        found = re.search(r'id="next-page" hx-get="([^"]+)"', html)
        if not found:
            break
        url = found.group(1).replace("&amp;", "&")
        assert dict(parse_qsl(urlsplit(url).query))["limit"] == "2"
    assert seen == sorted(made, reverse=True)


def test_operator_resends_a_failed_notification(app: Flask) -> None:
    ids = seed(app)
    client, token = logged_in_client(app, "operator")
    html = client.get("/notifications").text
    assert f'id="resend-{ids["failed"]}"' in html
    assert f'id="resend-{ids["sent"]}"' not in html  # only FAILED ones can be resent

    response = client.post(f"/notifications/{ids['failed']}/resend",
                           data={"csrf_token": token, "next": "/notifications?status=FAILED"})
    assert response.status_code == 303 and response.headers["Location"] == "/notifications?status=FAILED"
    assert status_of(app, ids["failed"]) == "PENDING"
    with app.app_context():
        audit = db.session.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.target_id,
                                          AuditEntry.outcome).where(AuditEntry.action == "notification.resend")
                                   ).all()
    assert [tuple(row) for row in audit] == [("operator-user", "notification.resend", str(ids["failed"]), "ok")]

    # htmx: the answer goes to the message area and asks the list to refresh.
    again = client.post(f"/notifications/{ids['sent']}/resend", headers=htmx("messages", **{"X-CSRFToken": token}))
    assert again.status_code == 409 and "only FAILED notifications can be resent" in again.text
    assert again.headers["HX-Retarget"] == "#messages" and again.headers["HX-Trigger"] == "notifications-changed"
    assert status_of(app, ids["sent"]) == "SENT"
    other = add_notification(app, ids["second"], "FAILED")
    done = client.post(f"/notifications/{other}/resend", headers=htmx("messages", **{"X-CSRFToken": token}))
    assert done.status_code == 200 and "<html" not in done.text
    assert f"Notification {other} queued to be sent again." in done.text
    assert done.headers["HX-Trigger"] == "notifications-changed"
    assert client.post("/notifications/999999/resend", data={"csrf_token": token}).status_code == 404
    assert client.post("/notifications/evil/resend", data={"csrf_token": token}).status_code == 404
    # ``next`` never leads off the site.
    off_site = client.post(f"/notifications/{other}/resend", data={"csrf_token": token, "next": "//evil.example/"})
    assert off_site.headers["Location"] == "/"


def test_viewer_cannot_resend_and_csrf_is_required(app: Flask) -> None:
    ids = seed(app)
    viewer, viewer_token = logged_in_client(app, "viewer")
    refused = viewer.post(f"/notifications/{ids['failed']}/resend", data={"csrf_token": viewer_token})
    assert refused.status_code == 403
    operator, _ = logged_in_client(app, "operator")
    assert operator.post(f"/notifications/{ids['failed']}/resend").status_code == 400  # no CSRF token
    assert operator.post(f"/notifications/{ids['failed']}/resend",
                         headers=htmx("messages", **{"X-CSRFToken": "forged"})).status_code == 400
    assert status_of(app, ids["failed"]) == "FAILED"
    anonymous = app.test_client()
    assert anonymous.get("/notifications").status_code == 302  # to the login page
