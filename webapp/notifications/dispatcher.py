"""The notification dispatcher: a claim pool that sends due outbox rows on threads of its own.

It runs next to a consumer (``Consumer.start()`` starts it) or on its own. The claim thread
takes up to ``min(batch, free senders)`` due PENDING rows in one statement and hands them to
``concurrency`` sender threads, each sending one notification at a time with a socket timeout.
The task worker threads never send anything, so a mail server that hangs delays only the
notifications, never a task. See ``outbox`` for why each notification goes out once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from ..config import EngineSettings, engine_settings
from ..extensions import db
from ..tasks.direct import first_line, is_lost_connection
from ..tasks.models import NotificationStatus
from ..tasks.pool import ClaimPool
from ..tasks.processor import NotificationType
from .mail import send_mail
from .outbox import ClaimedNotification, DeliveryError, NotificationOutbox, dispatchers_in_process
from .webhook import send_webhook

log = logging.getLogger(__name__)

OUTCOME_WRITE_TRIES = 4
# Due rows another dispatcher is claiming right now: look again soon, not at the next poll.
CONTENDED_RETRY = 0.05
SOONEST_LOOK = 0.02


def deliver(note: ClaimedNotification) -> None:
    """Send one notification (in an app context); raises ``DeliveryError`` when it was not sent."""
    if note.type == NotificationType.EMAIL.value:
        send_mail(note)
    elif note.type == NotificationType.WEBHOOK.value:
        send_webhook(note)
    else:
        raise DeliveryError(f"unknown notification type {note.type!r}", skip=True)


class NotificationDispatcher(ClaimPool[ClaimedNotification]):
    """Delivers due notifications on its own threads: ``start()`` / ``stop()``.

    ``deliver_due()`` does one round in the calling thread instead (tests, one-off commands).
    """

    def __init__(self, app: Flask, *, settings: EngineSettings | None = None, concurrency: int | None = None,
                 batch_size: int | None = None, poll_interval: float | None = None,
                 lease_seconds: float | None = None) -> None:
        settings = settings or engine_settings(app)
        super().__init__(name="notification dispatcher",
                         concurrency=concurrency or settings.notify_concurrency,
                         batch_size=batch_size or settings.batch_size,
                         poll_interval=poll_interval or settings.poll_interval)
        self.app = app
        self.retry_base = settings.notify_retry_base
        self.lease_seconds = lease_seconds or settings.notification_lease
        self._next_due: float | None = None  # what the last look before a claim found
        self.started = False
        self.sent = 0
        self.failed = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> NotificationDispatcher:
        """Start the claim thread and the sender threads; returns self."""
        if self.started:
            return self
        self.start_threads("notify-sender", "notify-dispatcher")
        dispatchers_in_process(self.app).add(self.wake)
        self.started = True
        log.info("notification dispatcher started: senders=%s lease=%gs", self.concurrency, self.lease_seconds)
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Claim nothing new, let sends in flight finish within ``grace``, give back the rest."""
        if not self.started or self.stopping:
            return
        deadline = time.monotonic() + grace
        dispatchers_in_process(self.app).discard(self.wake)
        self.stop_claiming(timeout=max(0.1, grace))
        unsent = self.take_unstarted()
        stuck = self.end_workers(deadline)
        if stuck:
            log.warning("notification sender(s) %s still sending after %gs; their rows will be retried "
                        "when the lease ends", ", ".join(stuck), grace)
        if unsent:
            self._give_back(unsent)
        self.started = False
        log.info("notification dispatcher stopped")

    def _give_back(self, unsent: list[ClaimedNotification]) -> None:
        with self.app.app_context():
            try:
                released = NotificationOutbox().release(unsent)
                log.info("gave back %d claimed notification(s) on shutdown", len(released))
            except Exception:
                db.session.rollback()
                log.exception("could not give back claimed notifications; they are retried "
                              "when their lease ends")
            finally:
                db.session.remove()

    # -- one round in the calling thread -----------------------------------------------------

    def deliver_due(self, limit: int = 100) -> dict[int, str | None]:
        """Claim and send up to ``limit`` due notifications here; {id: new status or None}."""
        with self.app.app_context():
            try:
                claimed = NotificationOutbox().claim_due(limit, self.lease_seconds)
            finally:
                db.session.remove()
        return {note.id: self._handle(note) for note in claimed}

    # -- the pool's side ---------------------------------------------------------------------

    def claim(self, wanted: int) -> list[ClaimedNotification]:
        """Claim due rows; a read first, so an idle dispatcher never takes SQLite's write lock."""
        with self.app.app_context():
            try:
                outbox = NotificationOutbox()
                self._next_due = outbox.seconds_until_next_due()
                if self._next_due is None or self._next_due > 0:
                    return []
                return outbox.claim_due(wanted, self.lease_seconds)
            finally:
                db.session.remove()

    def next_claim_in(self, claimed: int) -> float:
        """After a short claim: the next due time, at once after a partial batch, soon if contended."""
        if self._next_due is None:
            return self.poll_interval
        if self._next_due > 0:
            return min(self.poll_interval, max(SOONEST_LOOK, self._next_due))
        return 0.0 if claimed else CONTENDED_RETRY

    def claim_failed(self, exc: Exception) -> float:
        """A lost connection is reopened by the next claim, at once and with one log line."""
        if is_lost_connection(exc):
            log.warning("claiming notifications: the database connection was lost (%s); reconnecting",
                        first_line(exc))
            return SOONEST_LOOK
        log.exception("claiming notifications failed; retrying at the next poll")
        return self.poll_interval

    def run_item(self, item: ClaimedNotification) -> None:
        self._handle(item)

    # -- sending one ---------------------------------------------------------------------------

    def _handle(self, note: ClaimedNotification) -> str | None:
        """Send one claimed notification and record the outcome; the new status."""
        with self.app.app_context():
            try:
                return self._send_and_record(note)
            finally:
                db.session.remove()

    def _send_and_record(self, note: ClaimedNotification) -> str | None:
        if note.attempts > note.max_attempts:
            # The previous (last) attempt's sender vanished without recording anything.
            error = DeliveryError("the last attempt was interrupted (its sender stopped or stalled past "
                                  "its lease); whether it was delivered is unknown", permanent=True)
            return self._record(note, lambda outbox: outbox.record_failure(note, error, self.retry_base))
        started = time.monotonic()
        try:
            deliver(note)
        except DeliveryError as exc:
            failure = exc
        except Exception as exc:  # a bug in a sender must cost one attempt, not the thread
            log.exception("notification %s: unexpected error while sending", note.id)
            failure = DeliveryError(f"unexpected {type(exc).__name__}: {exc}")
        else:
            status = self._record(note, lambda outbox: NotificationStatus.SENT.value
                                  if outbox.record_sent(note) else None)
            if status is not None:
                self.sent += 1
            log.info("notification %s (%s, task %s) sent to %s in %.2fs", note.id, note.type, note.task_id,
                     note.recipient, time.monotonic() - started)
            return status
        status = self._record(note, lambda outbox: outbox.record_failure(note, failure, self.retry_base))
        if status != NotificationStatus.PENDING.value:
            self.failed += 1
        log.warning("notification %s (%s, task %s) attempt %s of %s: %s -> %s", note.id, note.type,
                    note.task_id, note.attempts, note.max_attempts, failure.message, status)
        return status

    def _record(self, note: ClaimedNotification,
                write: Callable[[NotificationOutbox], str | None]) -> str | None:
        """Write an outcome, retrying a few times: losing it would mean sending again later."""
        for attempt in range(OUTCOME_WRITE_TRIES):
            try:
                return write(NotificationOutbox())
            except SQLAlchemyError:
                db.session.rollback()
                if attempt == OUTCOME_WRITE_TRIES - 1:
                    log.exception("notification %s: could not record its outcome; it will be retried "
                                  "(and may be delivered again) when its lease ends", note.id)
                    return None
                log.warning("notification %s: recording the outcome failed; retrying", note.id)
                time.sleep(0.2 * 2**attempt)  # back-off between tries against a database in trouble
        return None
