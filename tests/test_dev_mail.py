"""The development mail outbox (issue 16 item 6): with ``ASYNC_TASK_DEV_MAIL_DIR`` set (``make
run`` sets it) a finished task's mail is written there, SENT, needs no ``MAIL_DEFAULT_SENDER``,
and the console lists it; a resent notification that then succeeds drops its old error."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from tests.console_support import logged_in_client
from tests.smtp_server import SMTPServer, free_port
from webapp.extensions import db
from webapp.notifications.dispatcher import NotificationDispatcher
from webapp.notifications.outbox import resend_notification
from webapp.notifications.queries import notifications_for_task
from webapp.tasks import AsyncTaskService, TaskResult

PROCESSORS = ["tests.processors", "tests.notify_processors"]
CREATOR = "creator@example.com"


def finish(service: AsyncTaskService, task_id: int) -> None:
    """Claim the task and end it SUCCESS, as a consumer would."""
    [claimed] = [t for t in service.claim_due_tasks("test-worker", 50) if t.id == task_id]
    assert service.finish_task(claimed, TaskResult.success({"answer": 42}), worker_id="test-worker").status == "SUCCESS"


@pytest.fixture
def dev_app(make_app, backend, tmp_path: Path) -> Flask:
    return make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS, MAIL_DEFAULT_SENDER=None,
                    ASYNC_TASK_DEV_MAIL_DIR=str(tmp_path / "dev-mail"))


def test_the_dev_outbox_keeps_the_mail_and_the_console_shows_it(dev_app: Flask, tmp_path: Path) -> None:
    with dev_app.app_context():
        service = AsyncTaskService()
        task = service.submit_task("MAIL_OK", {"note": "hello"}, created_by=CREATOR)
        finish(service, task.id)
        assert list(NotificationDispatcher(dev_app).deliver_due().values()) == ["SENT"]
        db.session.rollback()  # a fresh read, not this session's snapshot
        [note] = notifications_for_task(task.id)
        assert (note.status, note.last_error) == ("SENT", None)
    [written] = list((tmp_path / "dev-mail").glob("*.eml"))
    text = written.read_text()
    assert f"To: {CREATOR}" in text and "From: taskdeck@localhost" in text
    assert f"Task MAIL_OK #{task.id} succeeded" in text

    client, _ = logged_in_client(dev_app, "viewer")
    listing = client.get("/notifications").get_data(as_text=True)
    assert 'id="dev-mail-link"' in listing
    page = client.get("/notifications/dev-mail")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert html.count('class="dev-mail"') == 1
    assert f"Task MAIL_OK #{task.id} succeeded" in html and CREATOR in html and written.name in html


def test_without_the_dev_outbox_the_page_says_how_to_turn_it_on(make_app) -> None:
    app = make_app("sqlite")
    client, _ = logged_in_client(app, "viewer")
    assert 'id="dev-mail-link"' not in client.get("/notifications").get_data(as_text=True)
    html = client.get("/notifications/dev-mail").get_data(as_text=True)
    assert 'id="dev-mail-off"' in html and "ASYNC_TASK_DEV_MAIL_DIR" in html


def test_a_resent_notification_that_succeeds_keeps_no_old_error(make_app, backend) -> None:
    app = make_app(backend, ASYNC_TASK_PROCESSORS=PROCESSORS, MAIL_PORT=free_port(),
                   ASYNC_TASK_NOTIFY_MAX_ATTEMPTS=1, ASYNC_TASK_NOTIFY_TIMEOUT=2.0)
    server = SMTPServer().start()
    try:
        with app.app_context():
            service = AsyncTaskService()
            task = service.submit_task("MAIL_OK", {}, created_by=CREATOR)
            finish(service, task.id)
            assert list(NotificationDispatcher(app).deliver_due().values()) == ["FAILED"]
            db.session.rollback()  # a fresh read, not this session's snapshot
            [note] = notifications_for_task(task.id)
            assert note.last_error  # nothing listens on that port
            app.extensions["mail"].port = server.port  # the operator fixed the SMTP set-up, then resends
            resend_notification(note.id, actor="tester")
            assert list(NotificationDispatcher(app).deliver_due().values()) == ["SENT"]
            db.session.rollback()  # a fresh read, not this session's snapshot
            [note] = notifications_for_task(task.id)
            assert (note.status, note.last_error) == ("SENT", None)
            assert len(server.to(CREATOR)) == 1  # the mail really arrived (delivery is synchronous)
    finally:
        server.stop()
