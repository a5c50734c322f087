"""The notification outbox's state changes: claim due rows, record outcomes, give back, resend.

Exactly one delivery per notification: a claim is one ``UPDATE ... WHERE id IN (SELECT ... FOR
UPDATE SKIP LOCKED) RETURNING`` on PostgreSQL (a conditional update under ``BEGIN IMMEDIATE`` on
SQLite) that stamps a fresh ``claim_token`` and a lease (``claimed_until``); the claim also
moves ``next_attempt_at`` to the lease's end, so a claimed row is simply not due for anyone
else until its lease runs out. Every outcome is written only while the token still matches.
The one edge left at-least-once: a sender that dies (or stalls past its lease) after the SMTP
server or webhook receiver accepted the message but before SENT was recorded; the row is
claimed again when the lease ends and sent a second time. Mails carry a stable Message-ID and
webhooks an ``X-Taskdeck-Notification-Id`` header so receivers can drop such a repeat.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Flask, current_app
from sqlalchemy import func, select, update

from ..extensions import db
from ..tasks.audit import record_audit
from ..tasks.dbsession import SessionWriter
from ..tasks.errors import InvalidTransition, TaskNotFound
from ..tasks.models import Notification, NotificationStatus
from ..tasks.processor import RetryStrategy
from ..tasks.retry import next_retry_delay
from ..tasks.validation import validate_task_id
from ..tasks.wakeup import LocalWakers, local_wakers, wake_after_commit

log = logging.getLogger(__name__)

MAX_ERROR_LENGTH = 2000
WAKERS_KIND = "notifications"


class NotificationNotFound(TaskNotFound):
    """No notification has that id (a ``not_found`` error, like a missing task)."""


def dispatchers_in_process(app: Flask) -> LocalWakers:
    """The notification dispatchers of ``app`` running in this process, to wake on new rows."""
    return local_wakers(app, WAKERS_KIND)


@dataclass(frozen=True)
class ClaimedNotification:
    """A claimed outbox row: what to send, and the token its outcome must present."""

    id: int
    task_id: int
    type: str
    recipient: str
    subject: str
    content: str
    html: str | None
    attempts: int
    max_attempts: int
    claim_token: str


class DeliveryError(Exception):
    """A send that did not happen. ``permanent``: no retry (FAILED now); ``skip``: SKIPPED."""

    def __init__(self, message: str, *, permanent: bool = False, skip: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.skip = skip


class NotificationOutbox(SessionWriter):
    """Claim due notifications and record their outcomes (fenced by the claim token).

    Times follow ``AsyncTaskService``: the database clock on PostgreSQL, Python's on SQLite.
    """

    def claim_due(self, limit: int, lease_seconds: float) -> list[ClaimedNotification]:
        """Atomically claim up to ``limit`` due PENDING notifications, oldest due first.

        Each claimed row gets a fresh token, one more attempt, and ``next_attempt_at`` =
        ``claimed_until`` = now + lease: not due for anyone else until the lease runs out
        (a sender that died is thereby retried, with its attempt counted).
        """
        if limit < 1:
            return []
        self.session.rollback()  # end any read snapshot so the write starts fresh
        self.begin_write()
        now = self.now()
        due = (
            select(Notification.id)
            .where(Notification.status == NotificationStatus.PENDING.value, Notification.next_attempt_at <= now)
            .order_by(Notification.next_attempt_at, Notification.id)
            .limit(limit)
        )
        if self.is_postgres:
            due = due.with_for_update(skip_locked=True)
        token = uuid.uuid4().hex
        lease_end = self.now_plus(lease_seconds)
        rows = self.session.execute(
            update(Notification)
            .where(Notification.id.in_(due.scalar_subquery()),
                   Notification.status == NotificationStatus.PENDING.value,
                   Notification.next_attempt_at <= now)
            .values(claim_token=token, claimed_until=lease_end, next_attempt_at=lease_end,
                    attempts=Notification.attempts + 1, updated_at=now)
            .returning(Notification.id, Notification.task_id, Notification.type, Notification.recipient,
                       Notification.subject, Notification.content, Notification.html,
                       Notification.attempts, Notification.max_attempts, Notification.claim_token)
            .execution_options(synchronize_session=False)
        ).all()
        self.session.commit()
        claimed = [ClaimedNotification(id=r.id, task_id=r.task_id, type=r.type, recipient=r.recipient,
                                       subject=r.subject, content=r.content or "", html=r.html,
                                       attempts=r.attempts, max_attempts=r.max_attempts,
                                       claim_token=r.claim_token) for r in rows]
        claimed.sort(key=lambda note: note.id)
        return claimed

    def record_sent(self, note: ClaimedNotification) -> bool:
        """PENDING -> SENT; False when the lease had been lost (someone else owns the row now).

        Sent at its first attempt (a resend starts counting again), an error left from before the
        resend is dropped; after retries, the last retried attempt's error stays for the record."""
        now = self.now()
        stale_error: dict[str, Any] = {"last_error": None} if note.attempts <= 1 else {}
        return self._finish(note, status=NotificationStatus.SENT.value, sent_at=now, **stale_error)

    def record_failure(self, note: ClaimedNotification, error: DeliveryError, retry_base: float) -> str | None:
        """Schedule a retry (exponential backoff), or end in FAILED / SKIPPED; the new status.

        ``None`` when the lease had been lost and nothing was written.
        """
        message = clip_error(error.message)
        if error.skip:
            status = NotificationStatus.SKIPPED.value
            done = self._finish(note, status=status, last_error=message)
        elif error.permanent or note.attempts >= note.max_attempts:
            status = NotificationStatus.FAILED.value
            why = ("permanent error" if error.permanent
                   else f"gave up after {note.attempts} of {note.max_attempts} attempts")
            done = self._finish(note, status=status, last_error=clip_error(f"{why}: {error.message}"))
        else:
            status = NotificationStatus.PENDING.value
            delay = next_retry_delay(note.attempts, RetryStrategy.EXPONENTIAL, retry_base)
            done = self._finish(note, status=status, last_error=message, next_attempt_at=self.now_plus(delay))
        return status if done else None

    def release(self, notes: list[ClaimedNotification]) -> list[int]:
        """Give claimed but unsent notifications back (due now, the attempt not counted)."""
        released = []
        for note in notes:
            if self._finish(note, status=NotificationStatus.PENDING.value, next_attempt_at=self.now(),
                            attempts=Notification.attempts - 1):
                released.append(note.id)
        return released

    def seconds_until_next_due(self) -> float | None:
        """Seconds until the earliest PENDING notification is due (0 if overdue), or None."""
        # "now" comes from the same clock the claim uses (the database's on PostgreSQL).
        earliest, now = self.session.execute(
            select(func.min(Notification.next_attempt_at), self.now())
            .where(Notification.status == NotificationStatus.PENDING.value)
        ).one()
        self.session.rollback()
        if earliest is None:
            return None
        return max(0.0, (_aware(earliest) - _aware(now)).total_seconds())

    def _finish(self, note: ClaimedNotification, status: str, **values: Any) -> bool:
        self.begin_write()
        changed = self.session.execute(
            update(Notification)
            .where(Notification.id == note.id, Notification.claim_token == note.claim_token,
                   Notification.status == NotificationStatus.PENDING.value)
            .values(status=status, claim_token=None, claimed_until=None, updated_at=self.now(), **values)
            .returning(Notification.id)
            .execution_options(synchronize_session=False)
        ).first()
        self.session.commit()
        if changed is None:
            log.warning("notification %s: lease lost before its outcome (%s) was recorded; "
                        "another dispatcher owns it now", note.id, status)
        return changed is not None


def resend_notification(notification_id: Any, actor: str | None) -> Notification:
    """FAILED -> PENDING with its attempts reset, audited; any other status is refused.

    The last error stays on the row until the next attempt replaces it, so the operator can
    still see why it had failed.
    """
    notification_id = validate_task_id(notification_id, "id")
    outbox = NotificationOutbox()
    outbox.begin_write()
    changed = db.session.execute(
        update(Notification)
        .where(Notification.id == notification_id, Notification.status == NotificationStatus.FAILED.value)
        .values(status=NotificationStatus.PENDING.value, attempts=0, next_attempt_at=outbox.now(),
                claim_token=None, claimed_until=None, sent_at=None, updated_at=outbox.now())
        .returning(Notification.id)
        .execution_options(synchronize_session=False)
    ).first()
    if changed is None:
        db.session.rollback()
        note = db.session.get(Notification, notification_id)
        if note is None:
            raise NotificationNotFound(f"notification {notification_id} does not exist")
        record_audit(actor, "notification.resend", "notification", notification_id, outcome="refused",
                     detail={"status": note.status})
        db.session.commit()
        raise InvalidTransition(f"cannot resend notification {notification_id}: it is {note.status}; "
                                f"only FAILED notifications can be resent", current_status=note.status)
    record_audit(actor, "notification.resend", "notification", notification_id)
    wake_after_commit(db.session(), dispatchers_in_process(current_app))
    db.session.commit()
    return _reloaded(notification_id)


def _reloaded(notification_id: int) -> Notification:
    # populate_existing: the bulk UPDATE above left any copy in the identity map stale.
    note = db.session.get(Notification, notification_id, populate_existing=True)
    if note is None:
        raise NotificationNotFound(f"notification {notification_id} does not exist")
    return note


def _aware(value: Any) -> datetime:
    if isinstance(value, str):  # in case a driver hands an aggregate back untyped
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def clip_error(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LENGTH else text[:MAX_ERROR_LENGTH] + "… (truncated)"
