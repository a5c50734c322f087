"""Notification delivery against real servers: aiosmtpd SMTP, a silent TCP server, an HTTP
webhook receiver, and (for the duplicate check) three `flask tasks worker` processes.

Retry bases and timeouts are tiny so that every scenario runs in seconds.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, update

from tests.conftest import ROOT, wait_until
from tests.smtp_server import SilentServer, SMTPServer, WebhookReceiver, free_port
from webapp.extensions import db
from webapp.notifications.dispatcher import NotificationDispatcher
from webapp.notifications.outbox import DeliveryError, NotificationOutbox, resend_notification
from webapp.notifications.queries import (
    NotificationFilter,
    count_notifications_by_status,
    list_notifications,
    notifications_for_task,
)
from webapp.notifications.webhook import (
    refused_address_reason,
    sign_webhook,
    verify_webhook_signature,
)
from webapp.tasks import AsyncTaskService, InvalidTransition, TaskNotFound, ValidationError
from webapp.tasks.consumer import Consumer
from webapp.tasks.models import AsyncTask, AuditEntry, Notification, Worker
from webapp.tasks.serialize import task_to_dict

PROCESSORS = ["tests.processors", "tests.notify_processors"]
CREATOR = "creator@example.com"
SECRET = "webhook-test-secret"


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.stop()


def notify_config(server: SMTPServer | None = None, port: int | None = None, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "ASYNC_TASK_PROCESSORS": PROCESSORS,
        "ASYNC_TASK_NOTIFY_RETRY_BASE": 0.2,
        "ASYNC_TASK_NOTIFY_TIMEOUT": 2.0,
        "ASYNC_TASK_WEBHOOK_SECRET": SECRET,
        "ASYNC_TASK_BASE_URL": "https://tasks.example.org",
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": port or (server.port if server else free_port()),
        "MAIL_DEFAULT_SENDER": "tasks@example.com",
    }
    config.update(overrides)
    return config


def notes_of(app: Flask, task_id: int) -> list[Notification]:
    with app.app_context():
        try:
            return notifications_for_task(task_id)
        finally:
            db.session.remove()


def note_of(app: Flask, task_id: int) -> Notification | None:
    notes = notes_of(app, task_id)
    assert len(notes) <= 1, notes
    return notes[0] if notes else None


def wait_note_status(app: Flask, task_id: int, status: str, timeout: float = 10.0) -> Notification:
    def check() -> Notification | None:
        note = note_of(app, task_id)
        return note if note is not None and note.status == status else None

    return wait_until(check, timeout=timeout, message=f"notification of task {task_id} to be {status}")


def task_status(app: Flask, task_id: int) -> str:
    with app.app_context():
        try:
            return AsyncTaskService().require_task(task_id).status
        finally:
            db.session.remove()


def submit(app: Flask, task_type: str, payload: dict | None = None, **kwargs: Any) -> int:
    with app.app_context():
        try:
            return AsyncTaskService().submit(task_type, payload or {}, **kwargs).task.id
        finally:
            db.session.remove()


def start_consumer(app: Flask, **kwargs: Any) -> Consumer:
    return Consumer(app, **{"concurrency": 2, **kwargs}).start()


# -- mail -------------------------------------------------------------------------------------


def test_success_sends_exactly_one_mail_to_the_creator(make_app, backend, smtp):
    app = make_app(backend, **notify_config(smtp))
    start_consumer(app)
    task_id = submit(app, "MAIL_OK", {"note": "hello"}, created_by=CREATOR)
    note = wait_note_status(app, task_id, "SENT")
    assert task_status(app, task_id) == "SUCCESS"
    assert note.attempts == 1 and note.sent_at is not None
    time.sleep(0.3)  # a duplicate would have arrived by now
    [mail] = smtp.to(CREATOR)
    assert len(smtp.received()) == 1
    assert mail.subject == f"Task MAIL_OK #{task_id} succeeded"
    assert mail.mail_from == "tasks@example.com"
    assert mail.message["X-Taskdeck-Notification-Id"] == str(note.id)
    text, html = mail.part("text/plain"), mail.part("text/html")
    assert f"https://tasks.example.org/tasks/{task_id}" in text and '"answer": 42' in text
    assert f'href="https://tasks.example.org/tasks/{task_id}"' in html


def test_failure_after_retries_sends_one_mail_and_retrying_attempts_none(make_app, backend, smtp):
    app = make_app(backend, **notify_config(smtp))
    start_consumer(app)
    task_id = submit(app, "MAIL_FAILS", created_by=CREATOR)
    wait_note_status(app, task_id, "SENT")
    with app.app_context():
        task = AsyncTaskService().require_task(task_id)
        assert (task.status, task.attempts, task.retry_count) == ("FAILURE", 3, 2)
        db.session.remove()
    time.sleep(0.3)
    [mail] = smtp.to(CREATOR)  # three attempts, two of them RETRYING: still one mail
    assert mail.subject == f"Task MAIL_FAILS #{task_id} failed"
    assert "disk full on attempt 3" in mail.part("text/plain")


def test_smtp_down_task_succeeds_at_once_and_the_mail_follows_when_it_is_back(make_app, backend):
    server = SMTPServer()  # its port, not yet listening
    app = make_app(backend, **notify_config(server))
    start_consumer(app)
    started = time.monotonic()
    task_id = submit(app, "MAIL_OK", created_by=CREATOR)
    wait_until(lambda: task_status(app, task_id) == "SUCCESS", timeout=5, message="task SUCCESS")
    assert time.monotonic() - started < 2.0
    failing = wait_until(lambda: (n := note_of(app, task_id)) is not None and n.attempts >= 2 and n,
                         timeout=5, message="two failed attempts")
    assert failing.status == "PENDING" and "Connection refused" in (failing.last_error or "")
    server.start()
    try:
        note = wait_note_status(app, task_id, "SENT", timeout=10)
        assert note.attempts >= 3
        time.sleep(0.3)
        assert [m.subject for m in server.received()] == [f"Task MAIL_OK #{task_id} succeeded"]
    finally:
        server.stop()


def test_smtp_never_back_ends_failed_after_the_last_attempt(make_app, backend):
    app = make_app(backend, **notify_config(port=free_port(), ASYNC_TASK_NOTIFY_RETRY_BASE=0.05,
                                            ASYNC_TASK_NOTIFY_MAX_ATTEMPTS=3))
    start_consumer(app)
    task_id = submit(app, "MAIL_OK", created_by=CREATOR)
    note = wait_note_status(app, task_id, "FAILED", timeout=10)
    assert note.attempts == 3
    assert (note.last_error or "").startswith("gave up after 3 of 3 attempts: SMTP 127.0.0.1:")
    assert task_status(app, task_id) == "SUCCESS"


def test_a_silent_smtp_server_does_not_slow_the_consumer(make_app, backend):
    silent = SilentServer().start()
    try:
        app = make_app(backend, **notify_config(port=silent.port, ASYNC_TASK_NOTIFY_TIMEOUT=2.5,
                                                ASYNC_TASK_NOTIFY_RETRY_BASE=0.1))
        # One task thread: had the mail been sent on it, every task below would wait behind it.
        start_consumer(app, concurrency=1)
        task_id = submit(app, "MAIL_OK", created_by=CREATOR)
        wait_until(lambda: silent.accepted >= 1, timeout=5, message="the sender to connect")
        hung_at = time.monotonic()
        # While that send hangs, other tasks run at full speed on the task threads.
        with app.app_context():
            others = [t.id for t in AsyncTaskService().submit_many(
                [{"task_type": "NOOP", "payload": {"i": i}} for i in range(40)])]
            db.session.remove()

        def all_done() -> bool:
            with app.app_context():
                try:
                    done = db.session.scalar(select(func.count()).select_from(AsyncTask).where(
                        AsyncTask.id.in_(others), AsyncTask.status == "SUCCESS"))
                finally:
                    db.session.remove()
            return done == len(others)

        wait_until(all_done, timeout=10, message="the other tasks to finish")
        assert time.monotonic() - hung_at < 2.5, "tasks waited for the hanging SMTP server"
        still_hanging = note_of(app, task_id)
        assert (still_hanging.attempts, still_hanging.last_error) == (1, None)
        assert task_status(app, task_id) == "SUCCESS"
        note = wait_until(lambda: (n := note_of(app, task_id)) is not None and n.attempts >= 2 and n,
                          timeout=10, message="a timed-out attempt and a retry")
        assert note.status == "PENDING"
        assert "timed out" in (note.last_error or "")
        wait_until(lambda: silent.accepted >= 2, timeout=5, message="the retry to connect again")
    finally:
        silent.stop()


def test_a_permanent_smtp_refusal_fails_at_once(make_app, smtp):
    app = make_app("sqlite", **notify_config(smtp))
    start_consumer(app)
    task_id = submit(app, "CUSTOM_MAIL", {"to": "bounce@example.com"})
    note = wait_note_status(app, task_id, "FAILED")
    assert note.attempts == 1
    assert "permanent error" in (note.last_error or "") and "550" in (note.last_error or "")


def test_a_temporary_smtp_refusal_is_retried(make_app, smtp):
    app = make_app("sqlite", **notify_config(smtp, ASYNC_TASK_NOTIFY_MAX_ATTEMPTS=2,
                                             ASYNC_TASK_NOTIFY_RETRY_BASE=0.05))
    start_consumer(app)
    task_id = submit(app, "CUSTOM_MAIL", {"to": "greylist@example.com"})
    note = wait_note_status(app, task_id, "FAILED")
    assert note.attempts == 2 and "451" in (note.last_error or "")


def test_missing_sender_is_a_clear_permanent_failure(make_app, smtp):
    app = make_app("sqlite", **notify_config(smtp, MAIL_DEFAULT_SENDER=None))
    start_consumer(app)
    task_id = submit(app, "MAIL_OK", created_by=CREATOR)
    note = wait_note_status(app, task_id, "FAILED")
    assert "MAIL_DEFAULT_SENDER is not configured" in (note.last_error or "")


# -- webhooks ---------------------------------------------------------------------------------


def test_webhook_is_signed_and_carries_the_task_json(make_app, backend, receiver):
    app = make_app(backend, **notify_config(ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE=True))
    start_consumer(app)
    task_id = submit(app, "MAIL_OK", notify_url=receiver.url("/hook?src=test"))
    note = wait_note_status(app, task_id, "SENT")
    [call] = receiver.received()
    assert call.path == "/hook?src=test"
    timestamp = call.headers["X-Taskdeck-Timestamp"]
    signature = call.headers["X-Taskdeck-Signature"]
    assert signature == sign_webhook(SECRET, timestamp, call.body)
    assert verify_webhook_signature(SECRET, timestamp, call.body, signature)
    assert not verify_webhook_signature("another-secret", timestamp, call.body, signature)
    assert not verify_webhook_signature(SECRET, timestamp, call.body + b" ", signature)
    assert call.headers["X-Taskdeck-Notification-Id"] == str(note.id)
    assert call.headers["Content-Type"] == "application/json"
    with app.app_context():
        assert call.json() == task_to_dict(AsyncTaskService().require_task(task_id))
        db.session.remove()
    assert call.json()["status"] == "SUCCESS"


def test_webhook_receiver_errors_are_retried(make_app, backend, receiver):
    receiver.statuses.extend([500, 503])
    app = make_app(backend, **notify_config(ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE=True))
    start_consumer(app)
    task_id = submit(app, "HOOK", {"url": receiver.url()})
    note = wait_note_status(app, task_id, "SENT")
    calls = receiver.received()
    assert len(calls) == 3 and note.attempts == 3
    assert [c.headers["X-Taskdeck-Attempt"] for c in calls] == ["1", "2", "3"]
    assert len({c.headers["X-Taskdeck-Notification-Id"] for c in calls}) == 1
    assert "HTTP 503" in (note.last_error or "")  # the last error is kept for the record


def test_webhook_that_keeps_failing_ends_failed(make_app, receiver):
    receiver.default_status = 500
    app = make_app("sqlite", **notify_config(ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE=True,
                                             ASYNC_TASK_NOTIFY_MAX_ATTEMPTS=2, ASYNC_TASK_NOTIFY_RETRY_BASE=0.05))
    start_consumer(app)
    task_id = submit(app, "MAIL_OK", notify_url=receiver.url())
    note = wait_note_status(app, task_id, "FAILED")
    assert len(receiver.received()) == 2
    assert "HTTP 500" in (note.last_error or "") and "receiver says no" in (note.last_error or "")


def test_loopback_webhook_is_refused_unless_allowed(make_app, backend, receiver):
    app = make_app(backend, **notify_config())  # ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE defaults to false
    start_consumer(app)
    task_id = submit(app, "MAIL_OK", notify_url=receiver.url())
    note = wait_note_status(app, task_id, "SKIPPED")
    assert "loopback address 127.0.0.1" in (note.last_error or "")
    assert "ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE" in (note.last_error or "")
    hostname_id = submit(app, "HOOK", {"url": f"http://localhost:{receiver.port}/hook"})
    assert "loopback" in (wait_note_status(app, hostname_id, "SKIPPED").last_error or "")
    assert receiver.received() == []


def test_webhook_without_a_secret_is_never_sent_unsigned(make_app, receiver):
    app = make_app("sqlite", **notify_config(ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE=True,
                                             ASYNC_TASK_WEBHOOK_SECRET=None))
    start_consumer(app)
    task_id = submit(app, "MAIL_OK", notify_url=receiver.url())
    note = wait_note_status(app, task_id, "FAILED")
    assert "ASYNC_TASK_WEBHOOK_SECRET is not set" in (note.last_error or "")
    assert receiver.received() == []


def test_webhook_to_a_silent_server_times_out_and_retries(make_app):
    silent = SilentServer().start()
    try:
        app = make_app("sqlite", **notify_config(ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE=True,
                                                 ASYNC_TASK_NOTIFY_TIMEOUT=0.3,
                                                 ASYNC_TASK_NOTIFY_RETRY_BASE=0.05))
        start_consumer(app)
        task_id = submit(app, "MAIL_OK", notify_url=f"http://127.0.0.1:{silent.port}/hook")
        note = wait_until(lambda: (n := note_of(app, task_id)) is not None and n.attempts >= 2 and n,
                          timeout=10, message="a timed-out webhook and its retry")
        assert "timed out after 0.3s" in (note.last_error or "")
    finally:
        silent.stop()


@pytest.mark.parametrize(("address", "refused"), [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("10.1.2.3", "private"), ("192.168.0.10", "private"),
    ("172.16.5.4", "private"), ("169.254.169.254", "link-local"), ("fe80::1%eth0", "link-local"),
    ("::ffff:127.0.0.1", "loopback"), ("100.64.0.1", "non-public"), ("0.0.0.0", "unspecified"),
    ("224.0.0.1", "multicast"), ("fd00::1", "private"), ("93.184.216.34", None), ("2606:4700::1111", None),
])
def test_which_webhook_addresses_are_refused(address, refused):
    reason = refused_address_reason(address)
    assert (reason is None) if refused is None else (reason or "").startswith(refused)


# -- the dispatcher on its own ----------------------------------------------------------------


def make_pending_notification(app: Flask, recipient: str = CREATOR) -> int:
    """A finished task whose mail is waiting in the outbox (no consumer involved)."""
    task_id = submit(app, "MAIL_OK", created_by=recipient)
    with app.app_context():
        service = AsyncTaskService()
        [claimed] = [t for t in service.claim_due_tasks("w", 10) if t.id == task_id]
        from webapp.tasks import TaskResult

        service.finish_task(claimed, TaskResult.success())
        db.session.remove()
    return task_id


def test_standalone_dispatcher_delivers_and_a_second_one_finds_nothing(make_app, backend, smtp):
    app = make_app(backend, **notify_config(smtp))
    task_id = make_pending_notification(app)
    first, second = NotificationDispatcher(app), NotificationDispatcher(app)
    assert list(first.deliver_due().values()) == ["SENT"]
    assert second.deliver_due() == {}
    assert note_of(app, task_id).status == "SENT"
    assert len(smtp.received()) == 1


def test_threaded_standalone_dispatcher_is_woken_by_the_finishing_commit(make_app, smtp):
    app = make_app("sqlite", **notify_config(smtp, ASYNC_TASK_POLL_INTERVAL=30))
    dispatcher = NotificationDispatcher(app).start()
    try:
        time.sleep(0.2)  # it has looked once and now sleeps for the poll interval
        started = time.monotonic()
        task_id = make_pending_notification(app)
        wait_note_status(app, task_id, "SENT", timeout=5)
        assert time.monotonic() - started < 3, "the dispatcher waited for its poll instead of being woken"
    finally:
        dispatcher.stop()


def test_a_lost_lease_cannot_record_an_outcome(make_app, backend):
    app = make_app(backend, **notify_config())
    task_id = make_pending_notification(app)
    with app.app_context():
        outbox = NotificationOutbox()
        [stale] = outbox.claim_due(10, lease_seconds=60)
        assert outbox.claim_due(10, lease_seconds=60) == []  # leased: nobody else gets it
        # The lease runs out (the sender hung); another dispatcher takes the row over.
        db.session.execute(update(Notification).values(next_attempt_at=Notification.created_at))
        db.session.commit()
        [fresh] = outbox.claim_due(10, lease_seconds=60)
        assert (fresh.id, fresh.attempts) == (stale.id, 2) and fresh.claim_token != stale.claim_token
        assert outbox.record_sent(stale) is False
        assert outbox.record_sent(fresh) is True
        db.session.remove()
    assert note_of(app, task_id).status == "SENT"


def test_retries_back_off_exponentially_from_the_base(make_app, backend):
    app = make_app(backend, **notify_config())
    make_pending_notification(app)
    with app.app_context():
        outbox = NotificationOutbox()
        delays = []
        for attempt in (1, 2, 3):
            [note] = outbox.claim_due(10, lease_seconds=600)
            assert note.attempts == attempt
            assert outbox.record_failure(note, DeliveryError("down"), retry_base=30) == "PENDING"
            row = db.session.scalars(select(Notification)).one()
            delays.append((row.next_attempt_at - row.updated_at).total_seconds())
            assert (row.last_error, row.claim_token) == ("down", None)
            db.session.execute(update(Notification).values(next_attempt_at=Notification.created_at))
            db.session.commit()
        assert [round(d) for d in delays] == [30, 60, 120]
        db.session.remove()


def test_an_interrupted_last_attempt_ends_failed_without_sending_again(make_app, smtp):
    app = make_app("sqlite", **notify_config(smtp, ASYNC_TASK_NOTIFY_MAX_ATTEMPTS=1))
    task_id = make_pending_notification(app)
    with app.app_context():
        NotificationOutbox().claim_due(10, lease_seconds=60)  # a sender that then died
        db.session.execute(update(Notification).values(next_attempt_at=Notification.created_at))
        db.session.commit()
        db.session.remove()
    assert list(NotificationDispatcher(app).deliver_due().values()) == ["FAILED"]
    note = note_of(app, task_id)
    assert note.attempts == 2 and "interrupted" in (note.last_error or "")
    assert smtp.received() == []


def test_stop_gives_back_claimed_but_unsent_notifications(make_app):
    app = make_app("sqlite", **notify_config())
    task_id = make_pending_notification(app)
    dispatcher = NotificationDispatcher(app)
    with app.app_context():
        claimed = NotificationOutbox().claim_due(10, lease_seconds=60)
        assert NotificationOutbox().release(claimed) == [claimed[0].id]
        db.session.remove()
    note = note_of(app, task_id)
    assert (note.status, note.attempts, note.claim_token) == ("PENDING", 0, None)
    assert dispatcher.deliver_due() != {}  # due again at once


# -- console service: listing and resend ------------------------------------------------------


def test_list_filters_and_keyset_pages(make_app, backend):
    app = make_app(backend, **notify_config())
    ids = [make_pending_notification(app, f"user{i}@example.com") for i in range(5)]
    hook_task = submit(app, "HOOK", {"url": "gopher://x"})
    with app.app_context():
        service = AsyncTaskService()
        [claimed] = [t for t in service.claim_due_tasks("w", 10) if t.id == hook_task]
        from webapp.tasks import TaskResult

        service.finish_task(claimed, TaskResult.success())
        seen: list[int] = []
        cursor = None
        while True:
            page = list_notifications(NotificationFilter(type="email"), limit=2, cursor=cursor)
            seen.extend(n.task_id for n in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert seen == sorted(ids, reverse=True)
        skipped = list_notifications(NotificationFilter(statuses=("SKIPPED",))).items
        assert [n.task_id for n in skipped] == [hook_task]
        assert [n.task_id for n in list_notifications(NotificationFilter(task_id=ids[2])).items] == [ids[2]]
        assert count_notifications_by_status() == {"PENDING": 5, "SENT": 0, "FAILED": 0, "SKIPPED": 1}
        with pytest.raises(ValidationError, match="unknown notification status"):
            list_notifications(NotificationFilter(statuses=("LOST",)))
        with pytest.raises(ValidationError, match="unknown notification type"):
            list_notifications(NotificationFilter(type="SMS"))
        with pytest.raises(ValidationError):
            list_notifications(limit=0)
        db.session.remove()


def test_resend_of_a_failed_notification_is_audited_and_delivered(make_app, backend, smtp):
    app = make_app(backend, **notify_config(smtp))
    task_id = make_pending_notification(app)
    with app.app_context():
        db.session.execute(update(Notification).values(status="FAILED", attempts=8, last_error="gave up"))
        db.session.commit()
        note_id = notifications_for_task(task_id)[0].id
        note = resend_notification(note_id, actor="olga")
        assert (note.status, note.attempts, note.claim_token) == ("PENDING", 0, None)
        with pytest.raises(InvalidTransition, match="only FAILED notifications can be resent"):
            resend_notification(note_id, actor="olga")
        with pytest.raises(TaskNotFound):
            resend_notification(999_999, actor="olga")
        audit = db.session.execute(select(AuditEntry.actor, AuditEntry.action, AuditEntry.target_id,
                                          AuditEntry.outcome).order_by(AuditEntry.id)).all()
        assert [tuple(a) for a in audit] == [("olga", "notification.resend", str(note_id), "ok"),
                                             ("olga", "notification.resend", str(note_id), "refused")]
        db.session.remove()
    assert list(NotificationDispatcher(app).deliver_due().values()) == ["SENT"]
    assert len(smtp.to(CREATOR)) == 1


# -- several workers: exactly one delivery each -----------------------------------------------


def worker_env(database_url: str, smtp: SMTPServer, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ASYNC_TASK_", "MAIL_", "FLASK_")) and k not in ("DATABASE_URL", "REDIS_URL")}
    env.update({
        "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "LOG_LEVEL": "INFO",
        "DOTENV_PATH": str(tmp_path / "no.env"), "SECRET_KEY": "worker-secret",
        "DATABASE_URL": database_url, "ASYNC_TASK_PROCESSORS": ",".join(PROCESSORS),
        "ASYNC_TASK_POLL_INTERVAL": "0.2", "ASYNC_TASK_HEARTBEAT_INTERVAL": "1",
        "ASYNC_TASK_SHUTDOWN_GRACE": "5", "ASYNC_TASK_NOTIFY_RETRY_BASE": "0.2",
        "ASYNC_TASK_NOTIFY_CONCURRENCY": "3", "ASYNC_TASK_NOTIFY_TIMEOUT": "5",
        # Strings, as the environment gives them: parsed by webapp.config.
        "MAIL_SERVER": "127.0.0.1", "MAIL_PORT": str(smtp.port), "MAIL_USE_TLS": "false",
        "MAIL_DEFAULT_SENDER": "tasks@example.com",
    })
    return env


@pytest.mark.slow
def test_three_worker_processes_send_300_mails_without_duplicates(make_app, backend, smtp, tmp_path):
    app = make_app(backend, **notify_config(smtp))
    database_url = app.config["SQLALCHEMY_DATABASE_URI"]
    env = worker_env(database_url, smtp, tmp_path)
    logs = [tmp_path / f"worker{i}.log" for i in range(3)]
    procs = []
    for log_path in logs:
        with log_path.open("wb") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "flask", "--app", "webapp", "tasks", "worker", "--concurrency", "3"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))
    try:
        def running_workers() -> int:
            with app.app_context():
                try:
                    return int(db.session.scalar(select(func.count()).select_from(Worker)
                                                 .where(Worker.status == "RUNNING")) or 0)
                finally:
                    db.session.remove()

        wait_until(lambda: running_workers() >= 3, timeout=30, message="three workers to register")
        with app.app_context():
            tasks = AsyncTaskService().submit_many(
                [{"task_type": "MAIL_OK", "payload": {"i": i}, "created_by": f"user{i}@example.com"}
                 for i in range(300)])
            task_ids = {t.id for t in tasks}
            db.session.remove()

        def sent() -> int:
            with app.app_context():
                try:
                    return int(db.session.scalar(select(func.count()).select_from(Notification)
                                                 .where(Notification.status == "SENT")) or 0)
                finally:
                    db.session.remove()

        wait_until(lambda: sent() == 300, timeout=90, interval=0.2, message="300 SENT notifications")
        time.sleep(0.5)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    mails = smtp.received()
    assert len(mails) == 300
    recipients = Counter(r for mail in mails for r in mail.rcpt_tos)
    assert set(recipients.values()) == {1} and len(recipients) == 300
    subjects = {int(re.search(r"#(\d+) ", mail.subject).group(1)) for mail in mails}  # type: ignore[union-attr]
    assert subjects == task_ids
    sent_by = [re.findall(r"notification (\d+) \(EMAIL, task \d+\) sent", path.read_text()) for path in logs]
    all_sent = [note_id for ids in sent_by for note_id in ids]
    assert len(all_sent) == 300 and len(set(all_sent)) == 300
    assert sum(1 for ids in sent_by if ids) >= 2, "one worker sent everything; the race was not exercised"
