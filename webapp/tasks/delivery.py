"""Notification delivery: claims due outbox rows and sends them on threads of its own.

``NotificationDispatcher`` runs next to a consumer (``Consumer.start()`` starts it) or on its
own. Its shape mirrors the task consumer: a **claim thread** takes up to ``min(batch, free
senders)`` due PENDING rows in one statement and hands them to ``concurrency`` **sender
threads**, each sending one notification at a time with a socket timeout. The task worker
threads never send anything, so a mail server that hangs delays only the notifications, never
a task.

Exactly one delivery per notification: a claim is one ``UPDATE ... WHERE id IN (SELECT ... FOR
UPDATE SKIP LOCKED) RETURNING`` on PostgreSQL (a conditional update under ``BEGIN IMMEDIATE`` on
SQLite) that stamps a fresh ``claim_token`` and a lease (``claimed_until``); the claim also
moves ``next_attempt_at`` to the lease's end, so a claimed row is simply not due for anyone
else until its lease runs out. Every outcome is written only while the token still matches.
The one edge left at-least-once: a sender that dies (or stalls past its lease) after the SMTP
server or webhook receiver accepted the message but before SENT was recorded; the row is
claimed again when the lease ends and sent a second time. Mails carry a stable Message-ID and
webhooks an ``X-Taskdeck-Notification-Id`` header so receivers can drop such a repeat.
See docs/notifications.md.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import logging
import queue
import smtplib
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, current_app
from flask_mail import BadHeaderError, Connection, Message
from sqlalchemy import event, func, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..extensions import db
from .dbsession import SessionWriter
from .errors import ValidationError
from .models import Notification, NotificationStatus
from .notify import is_email_address, validate_webhook_url
from .processor import NotificationType, RetryStrategy
from .retry import next_retry_delay

log = logging.getLogger(__name__)

EXTENSION_KEY = "taskdeck_notifications"
MAX_ERROR_LENGTH = 2000
MAX_RESPONSE_SNIPPET = 500
SIGNATURE_HEADER = "X-Taskdeck-Signature"
TIMESTAMP_HEADER = "X-Taskdeck-Timestamp"
NOTIFICATION_ID_HEADER = "X-Taskdeck-Notification-Id"


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


# -- the outbox's state changes -------------------------------------------------------------


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
        """PENDING -> SENT; False when the lease had been lost (someone else owns the row now)."""
        now = self.now()
        return self._finish(note, status=NotificationStatus.SENT.value, sent_at=now)

    def record_failure(self, note: ClaimedNotification, error: DeliveryError, retry_base: float) -> str | None:
        """Schedule a retry (exponential backoff), or end in FAILED / SKIPPED; the new status.

        ``None`` when the lease had been lost and nothing was written.
        """
        message = _clip(error.message)
        if error.skip:
            status = NotificationStatus.SKIPPED.value
            done = self._finish(note, status=status, last_error=message)
        elif error.permanent or note.attempts >= note.max_attempts:
            status = NotificationStatus.FAILED.value
            why = ("permanent error" if error.permanent
                   else f"gave up after {note.attempts} of {note.max_attempts} attempts")
            done = self._finish(note, status=status, last_error=_clip(f"{why}: {error.message}"))
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


# -- sending ---------------------------------------------------------------------------------


def deliver(note: ClaimedNotification) -> None:
    """Send one notification (in an app context); raises ``DeliveryError`` when it was not sent."""
    if note.type == NotificationType.EMAIL.value:
        send_mail(note)
    elif note.type == NotificationType.WEBHOOK.value:
        send_webhook(note)
    else:
        raise DeliveryError(f"unknown notification type {note.type!r}", skip=True)


class TimedSMTPConnection(Connection):
    """Flask-Mail's connection with a socket timeout on connect and on every SMTP reply.

    Flask-Mail 0.10 opens ``smtplib.SMTP(server, port)`` without a timeout, so a server that
    accepts and never answers would hang the sender for ever. It also quits politely on exit,
    which after a failure only adds a second error; this one closes quietly instead.
    """

    def __init__(self, mail_state: Any, timeout: float) -> None:
        super().__init__(mail_state)
        self.timeout = timeout

    def configure_host(self) -> smtplib.SMTP | smtplib.SMTP_SSL:
        state = self.mail
        smtp_class = smtplib.SMTP_SSL if state.use_ssl else smtplib.SMTP
        host = smtp_class(state.server, int(state.port or 25), timeout=self.timeout)
        try:
            host.set_debuglevel(int(state.debug))
            if state.use_tls:
                host.starttls()
            if state.username and state.password:
                host.login(state.username, state.password)
        except BaseException:
            host.close()
            raise
        return host

    def __exit__(self, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.host is None:
            return
        try:
            if exc_type is None:
                self.host.quit()
        except (smtplib.SMTPException, OSError):
            pass  # the message was accepted before QUIT; a failing QUIT changes nothing
        finally:
            self.host.close()


def smtp_timeout() -> float:
    """``MAIL_TIMEOUT`` if set, else ``ASYNC_TASK_NOTIFY_TIMEOUT`` (seconds per socket operation)."""
    config = current_app.config
    return float(config.get("MAIL_TIMEOUT") or config.get("ASYNC_TASK_NOTIFY_TIMEOUT") or 10.0)


def send_mail(note: ClaimedNotification) -> None:
    """Send a mail through Flask-Mail's SMTP settings, with a timeout; SMTP 5xx is permanent."""
    if not is_email_address(note.recipient):
        raise DeliveryError(f"invalid email recipient {note.recipient!r}", skip=True)
    state = current_app.extensions["mail"]
    sender = state.default_sender
    if not sender:
        raise DeliveryError("MAIL_DEFAULT_SENDER is not configured", permanent=True)
    message = Message(subject=note.subject, recipients=[note.recipient], body=note.content,
                      html=note.html, sender=sender,
                      extra_headers={NOTIFICATION_ID_HEADER: str(note.id), "X-Taskdeck-Task-Id": str(note.task_id)})
    # Stable per notification: if a repeat ever goes out (see the module docstring), mail
    # systems that de-duplicate by Message-ID drop it.
    message.msgId = f"<taskdeck-notification-{note.id}.task-{note.task_id}@{_domain_of(sender)}>"
    timeout = smtp_timeout()
    where = f"SMTP {state.server}:{state.port}"
    try:
        with TimedSMTPConnection(state, timeout) as connection:
            connection.send(message)
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        detail = "; ".join(f"{rcpt}: {code} {_text(msg)}" for rcpt, (code, msg) in exc.recipients.items())
        raise DeliveryError(f"{where} refused the recipient: {detail}",
                            permanent=all(code >= 500 for code in codes)) from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"{where} answered {exc.smtp_code} {_text(exc.smtp_error)}",
                            permanent=exc.smtp_code >= 500) from None
    except smtplib.SMTPNotSupportedError as exc:
        raise DeliveryError(f"{where}: {exc}", permanent=True) from None
    except BadHeaderError:
        raise DeliveryError("the mail has a header with a line break", permanent=True) from None
    except TimeoutError:
        raise DeliveryError(f"{where}: timed out after {timeout:g}s") from None
    except smtplib.SMTPServerDisconnected as exc:
        raise DeliveryError(f"{where}: {exc}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"{where}: {type(exc).__name__}: {exc}") from None


def sign_webhook(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` + HMAC-SHA256(secret, ``timestamp.body``)."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_webhook_signature(secret: str, timestamp: str, body: bytes, signature: str,
                             tolerance: float = 300.0, now: float | None = None) -> bool:
    """What a receiver checks: the signature matches and the timestamp is recent (no replays)."""
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except (TypeError, ValueError):
        return False
    return age <= tolerance and hmac.compare_digest(sign_webhook(secret, timestamp, body), signature)


def refused_address_reason(address: str) -> str | None:
    """Why a webhook may not go to this IP address (anything not globally routable), or None.

    An IPv6 address that carries an IPv4 address (IPv4-mapped, 6to4, Teredo) is judged by the
    IPv4 address it carries, since that is where its packets end up.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        for form, embedded in _embedded_ipv4(ip):
            reason = refused_address_reason(str(embedded))
            if reason is not None:
                return f"{reason} (inside the {form} address {ip})"
        if ip.is_site_local:
            return f"site-local address {ip}"
    # Most specific first: Python also counts loopback and link-local ranges as "private".
    for label, flag in (("loopback", ip.is_loopback), ("unspecified", ip.is_unspecified),
                        ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                        ("private", ip.is_private), ("reserved", ip.is_reserved)):
        if flag:
            return f"{label} address {ip}"
    if not ip.is_global:
        return f"non-public address {ip}"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[tuple[str, ipaddress.IPv4Address]]:
    """The IPv4 addresses an IPv6 address carries, each with the name of its form."""
    found: list[tuple[str, ipaddress.IPv4Address]] = []
    if ip.ipv4_mapped is not None:
        found.append(("IPv4-mapped", ip.ipv4_mapped))
    if ip.sixtofour is not None:
        found.append(("6to4", ip.sixtofour))
    if ip.teredo is not None:
        server, client = ip.teredo
        found += [("Teredo", server), ("Teredo", client)]
    return found


def resolve_webhook_target(host: str, port: int, allow_private: bool) -> tuple[Any, Any]:
    """Resolve ``host`` and check every address; (family, sockaddr) to connect to.

    The connection then goes to exactly this address, so a DNS answer that changes between
    the check and the connect (rebinding) cannot reach a refused address.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise DeliveryError(f"cannot resolve webhook host {host!r}: {exc}") from None
    if not infos:
        raise DeliveryError(f"webhook host {host!r} has no address")
    if not allow_private:
        for info in infos:
            reason = refused_address_reason(str(info[4][0]))
            if reason is not None:
                raise DeliveryError(
                    f"webhook host {host!r} resolves to a {reason}; refused (set "
                    f"ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE=true to allow private targets)", skip=True)
    return infos[0][0], infos[0][4]


def _pinned_connection(scheme: str, host: str, port: int, family: Any, sockaddr: Any,
                       timeout: float) -> http.client.HTTPConnection:
    connection: http.client.HTTPConnection
    if scheme == "https":
        connection = http.client.HTTPSConnection(host, port, timeout=timeout,
                                                 context=ssl.create_default_context())
    else:
        connection = http.client.HTTPConnection(host, port, timeout=timeout)

    def connect_to_checked_address(_address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(sockaddr)
        except BaseException:
            sock.close()
            raise
        return sock

    # http.client connects through this attribute; TLS still verifies the certificate of ``host``.
    connection._create_connection = connect_to_checked_address  # type: ignore[attr-defined]
    return connection


def send_webhook(note: ClaimedNotification) -> None:
    """POST the task JSON, signed; any non-2xx answer or network error is retried."""
    config = current_app.config
    secret = config.get("ASYNC_TASK_WEBHOOK_SECRET")
    if not secret:
        raise DeliveryError("ASYNC_TASK_WEBHOOK_SECRET is not set; unsigned webhooks are never sent",
                            permanent=True)
    try:
        url = validate_webhook_url(note.recipient, field="webhook URL")
    except ValidationError as exc:
        raise DeliveryError(exc.message, skip=True) from None
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    family, sockaddr = resolve_webhook_target(host, port, bool(config.get("ASYNC_TASK_WEBHOOK_ALLOW_PRIVATE")))
    timeout = float(config.get("ASYNC_TASK_NOTIFY_TIMEOUT") or 10.0)
    body = note.content.encode()
    timestamp = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Taskdeck-Webhook/1.0",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign_webhook(str(secret), timestamp, body),
        NOTIFICATION_ID_HEADER: str(note.id),
        "X-Taskdeck-Task-Id": str(note.task_id),
        "X-Taskdeck-Attempt": str(note.attempts),
    }
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection = _pinned_connection(parts.scheme, host, port, family, sockaddr, timeout)
    try:
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        snippet = response.read(MAX_RESPONSE_SNIPPET)
        status, reason = response.status, response.reason
    except TimeoutError:
        raise DeliveryError(f"webhook {host}:{port}: timed out after {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(f"webhook {host}:{port}: {type(exc).__name__}: {exc}") from None
    finally:
        connection.close()
    if not 200 <= status < 300:
        text = snippet.decode("utf-8", "replace").strip()
        raise DeliveryError(f"webhook answered HTTP {status} {reason}" + (f": {text}" if text else ""))


def _aware(value: Any) -> datetime:
    if isinstance(value, str):  # in case a driver hands an aggregate back untyped
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _domain_of(address: str) -> str:
    domain = address.rsplit("@", 1)[-1].strip(" >")
    return domain or "taskdeck.invalid"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LENGTH else text[:MAX_ERROR_LENGTH] + "… (truncated)"


# -- waking dispatchers ----------------------------------------------------------------------


class _LocalDispatchers:
    """The dispatchers running in this process for one app (``app.extensions``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.dispatchers: list[NotificationDispatcher] = []

    def wake_all(self) -> None:
        with self.lock:
            dispatchers = list(self.dispatchers)
        for dispatcher in dispatchers:
            dispatcher.wake()


def _local(app: Flask) -> _LocalDispatchers:
    state = app.extensions.get(EXTENSION_KEY)
    if state is None:
        state = app.extensions.setdefault(EXTENSION_KEY, _LocalDispatchers())
    return state  # type: ignore[no-any-return]


def wake_local_dispatchers(app: Flask) -> None:
    """Wake every dispatcher of ``app`` in this process (cheap; safe from any thread)."""
    _local(app).wake_all()


_WAKE_FLAG = "taskdeck_wake_notification_dispatchers"
_hooks_installed = threading.Lock()
_hooks_done = False


def wake_dispatchers_after_commit(session: Session) -> None:
    """Wake this process's dispatchers once ``session`` commits (nothing if it rolls back)."""
    _install_session_hooks()
    session.info[_WAKE_FLAG] = current_app._get_current_object()  # type: ignore[attr-defined]


def _install_session_hooks() -> None:
    global _hooks_done
    if _hooks_done:
        return
    with _hooks_installed:
        if not _hooks_done:
            event.listen(Session, "after_commit", _after_commit)
            event.listen(Session, "after_rollback", _after_rollback)
            _hooks_done = True


def _after_commit(session: Session) -> None:
    app = session.info.pop(_WAKE_FLAG, None)
    if app is not None:
        try:
            wake_local_dispatchers(app)
        except Exception:  # a wake-up is an optimisation; polling still finds the row
            log.exception("could not wake the notification dispatchers")


def _after_rollback(session: Session) -> None:
    session.info.pop(_WAKE_FLAG, None)


# -- the dispatcher --------------------------------------------------------------------------


class NotificationDispatcher:
    """Delivers due notifications on its own threads: ``start()`` / ``stop()``.

    ``deliver_due()`` does one round in the calling thread instead (tests, one-off commands).
    """

    def __init__(self, app: Flask, *, concurrency: int | None = None, batch_size: int | None = None,
                 poll_interval: float | None = None, lease_seconds: float | None = None) -> None:
        config = app.config
        self.app = app
        self.concurrency = int(concurrency or config.get("ASYNC_TASK_NOTIFY_CONCURRENCY") or 2)
        self.batch_size = int(batch_size or config.get("ASYNC_TASK_BATCH_SIZE") or 10)
        self.poll_interval = float(poll_interval or config.get("ASYNC_TASK_POLL_INTERVAL") or 5.0)
        timeout = max(float(config.get("ASYNC_TASK_NOTIFY_TIMEOUT") or 10.0),
                      float(config.get("MAIL_TIMEOUT") or 0.0))
        # An SMTP exchange is about ten socket operations, each allowed ``timeout``; the lease
        # outlasts the slowest send that still succeeds, so a live sender is never overtaken.
        self.lease_seconds = float(lease_seconds or 12 * timeout + 30)
        self._queue: queue.Queue[ClaimedNotification | None] = queue.Queue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._inflight = 0
        self._last_claim_full = False
        self._claimer: threading.Thread | None = None
        self._senders: list[threading.Thread] = []
        self.started = False
        self.sent = 0
        self.failed = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> NotificationDispatcher:
        """Start the claim thread and the sender threads; returns self."""
        if self.started:
            return self
        self._stopping.clear()
        for index in range(self.concurrency):
            sender = threading.Thread(target=self._send_loop, name=f"notify-sender-{index}", daemon=True)
            sender.start()
            self._senders.append(sender)
        self._claimer = threading.Thread(target=self._claim_loop, name="notify-dispatcher", daemon=True)
        self._claimer.start()
        local = _local(self.app)
        with local.lock:
            local.dispatchers.append(self)
        self.started = True
        self.wake()
        log.info("notification dispatcher started: senders=%s lease=%gs", self.concurrency, self.lease_seconds)
        return self

    def stop(self, grace: float = 10.0) -> None:
        """Claim nothing new, let sends in flight finish within ``grace``, give back the rest."""
        if not self.started or self._stopping.is_set():
            return
        self._stopping.set()
        self._wake.set()
        local = _local(self.app)
        with local.lock:
            if self in local.dispatchers:
                local.dispatchers.remove(self)
        deadline = time.monotonic() + grace
        if self._claimer is not None:
            self._claimer.join(timeout=max(0.1, deadline - time.monotonic()))
        unsent: list[ClaimedNotification] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                unsent.append(item)
                with self._lock:
                    self._inflight -= 1
        for _ in self._senders:
            self._queue.put(None)
        for sender in self._senders:
            sender.join(timeout=max(0.05, deadline - time.monotonic()))
        stuck = [sender.name for sender in self._senders if sender.is_alive()]
        if stuck:
            log.warning("notification sender(s) %s still sending after %gs; their rows will be retried "
                        "when the lease ends", ", ".join(stuck), grace)
        if unsent:
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
        self._senders = []
        self.started = False
        log.info("notification dispatcher stopped")

    def wake(self) -> None:
        """Ask the claim thread to look for due notifications now."""
        self._wake.set()

    @property
    def busy(self) -> int:
        with self._lock:
            return self._inflight

    # -- one round in the calling thread -----------------------------------------------------

    def deliver_due(self, limit: int = 100) -> dict[int, str | None]:
        """Claim and send up to ``limit`` due notifications here; {id: new status or None}."""
        with self.app.app_context():
            try:
                claimed = NotificationOutbox().claim_due(limit, self.lease_seconds)
            finally:
                db.session.remove()
        return {note.id: self._handle(note) for note in claimed}

    # -- threads -----------------------------------------------------------------------------

    def _claim_loop(self) -> None:
        wait = 0.0
        while not self._stopping.is_set():
            self._wake.wait(timeout=wait)
            self._wake.clear()
            if self._stopping.is_set():
                break
            try:
                wait = self._claim_while_free()
            except Exception:
                log.exception("claiming notifications failed; retrying at the next poll")
                wait = self.poll_interval

    def _claim_while_free(self) -> float:
        """Claim until the senders are full or nothing is due; seconds to sleep afterwards."""
        while not self._stopping.is_set():
            with self._lock:
                free = self.concurrency - self._inflight
            if free <= 0:
                self._last_claim_full = True
                return self.poll_interval
            wanted = min(self.batch_size, free)
            with self.app.app_context():
                try:
                    outbox = NotificationOutbox()
                    # A read first: an idle dispatcher never takes SQLite's write lock.
                    next_due = outbox.seconds_until_next_due()
                    if next_due is None:
                        return self.poll_interval
                    if next_due > 0:
                        return min(self.poll_interval, max(0.02, next_due))
                    claimed = outbox.claim_due(wanted, self.lease_seconds)
                finally:
                    db.session.remove()
            with self._lock:
                self._inflight += len(claimed)
                self._last_claim_full = len(claimed) >= wanted
            for note in claimed:
                self._queue.put(note)
            if not claimed:
                return 0.05  # due rows another dispatcher is claiming right now; look again soon
        return 0.0

    def _send_loop(self) -> None:
        while True:
            note = self._queue.get()
            if note is None:
                return
            try:
                self._handle(note)
            except Exception:
                log.exception("notification %s: unexpected error in the sender thread", note.id)
            finally:
                with self._lock:
                    self._inflight -= 1
                    drain = self._last_claim_full
                if drain:
                    self.wake()

    def _handle(self, note: ClaimedNotification) -> str | None:
        """Send one claimed notification and record the outcome; the new status."""
        with self.app.app_context():
            try:
                return self._send_and_record(note)
            finally:
                db.session.remove()

    def _send_and_record(self, note: ClaimedNotification) -> str | None:
        retry_base = float(self.app.config.get("ASYNC_TASK_NOTIFY_RETRY_BASE") or 30.0)
        if note.attempts > note.max_attempts:
            # The previous (last) attempt's sender vanished without recording anything.
            error = DeliveryError("the last attempt was interrupted (its sender stopped or stalled past "
                                  "its lease); whether it was delivered is unknown", permanent=True)
            return self._record(note, lambda outbox: outbox.record_failure(note, error, retry_base))
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
        status = self._record(note, lambda outbox: outbox.record_failure(note, failure, retry_base))
        if status != NotificationStatus.PENDING.value:
            self.failed += 1
        log.warning("notification %s (%s, task %s) attempt %s of %s: %s -> %s", note.id, note.type,
                    note.task_id, note.attempts, note.max_attempts, failure.message, status)
        return status

    def _record(self, note: ClaimedNotification,
                write: Callable[[NotificationOutbox], str | None]) -> str | None:
        """Write an outcome, retrying a few times: losing it would mean sending again later."""
        for attempt in range(4):
            try:
                return write(NotificationOutbox())
            except SQLAlchemyError:
                db.session.rollback()
                if attempt == 3:
                    log.exception("notification %s: could not record its outcome; it will be retried "
                                  "(and may be delivered again) when its lease ends", note.id)
                    return None
                log.warning("notification %s: recording the outcome failed; retrying", note.id)
                time.sleep(0.2 * 2**attempt)
        return None
