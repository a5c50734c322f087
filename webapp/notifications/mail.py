"""Sending one notification by mail: Flask-Mail's SMTP settings, with a timeout on every reply.

SMTP 5xx answers are permanent (FAILED at once); anything else (4xx, timeouts, a dropped
connection) is retried by the outbox with a backoff.
"""

from __future__ import annotations

import smtplib
from types import TracebackType
from typing import Any

from flask import current_app
from flask_mail import BadHeaderError, Connection, Message

from ..config import engine_settings
from .addresses import is_email_address
from .dev_mail import DEV_SENDER, write_dev_mail
from .outbox import ClaimedNotification, DeliveryError

NOTIFICATION_ID_HEADER = "X-Taskdeck-Notification-Id"
TASK_ID_HEADER = "X-Taskdeck-Task-Id"


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
    return engine_settings(current_app).smtp_timeout


def send_mail(note: ClaimedNotification) -> None:
    """Send a mail through Flask-Mail's SMTP settings, with a timeout; SMTP 5xx is permanent.
    With ``ASYNC_TASK_DEV_MAIL_DIR`` set it is written there instead (the dev outbox)."""
    if not is_email_address(note.recipient):
        raise DeliveryError(f"invalid email recipient {note.recipient!r}", skip=True)
    state = current_app.extensions["mail"]
    dev_mail_dir = engine_settings(current_app).dev_mail_dir
    sender = state.default_sender or (DEV_SENDER if dev_mail_dir else None)
    if not sender:
        raise DeliveryError("MAIL_DEFAULT_SENDER is not configured", permanent=True)
    message = Message(subject=note.subject, recipients=[note.recipient], body=note.content,
                      html=note.html, sender=sender,
                      extra_headers={NOTIFICATION_ID_HEADER: str(note.id), TASK_ID_HEADER: str(note.task_id)})
    # Stable per notification: if a repeat ever goes out (see the module docstring), mail
    # systems that de-duplicate by Message-ID drop it.
    message.msgId = f"<taskdeck-notification-{note.id}.task-{note.task_id}@{_domain_of(sender)}>"
    if dev_mail_dir:  # development: captured for the console's /dev-mail, never sent
        write_dev_mail(dev_mail_dir, message, note.id)
        return
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


def _domain_of(address: str) -> str:
    domain = address.rsplit("@", 1)[-1].strip(" >")
    return domain or "taskdeck.invalid"


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)
