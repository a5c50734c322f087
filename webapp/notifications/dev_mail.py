"""The development mail outbox: under ``make run`` mails are written as ``.eml`` files into
``ASYNC_TASK_DEV_MAIL_DIR`` instead of going to an SMTP server, and the console lists them
(``/dev-mail``), like a local mail catcher. Nothing is written there unless that setting is set.
"""

from __future__ import annotations

import email
import email.policy
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from flask_mail import Message

DEV_SENDER = "taskdeck@localhost"  # used when MAIL_DEFAULT_SENDER is unset: nothing leaves the machine


@dataclass(frozen=True)
class DevMail:
    """One captured mail as the console shows it."""

    name: str
    written_at: datetime
    sender: str
    recipient: str
    subject: str
    text: str


def write_dev_mail(folder: str, message: Message, notification_id: int) -> Path:
    """Write ``message`` as ``<time>-notification-<id>.eml`` (atomically: a reader never sees half)."""
    target_dir = Path(folder)
    target_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    target = target_dir / f"{stamp}-notification-{notification_id}.eml"
    handle, temporary = tempfile.mkstemp(dir=target_dir, suffix=".part")
    with os.fdopen(handle, "wb") as out:
        out.write(message.as_bytes())
    os.replace(temporary, target)
    return target


def list_dev_mails(folder: str | None, limit: int = 100) -> list[DevMail]:
    """The newest ``limit`` captured mails, newest first (none when the outbox is not set up)."""
    if not folder or not Path(folder).is_dir():
        return []
    files = sorted(Path(folder).glob("*.eml"), reverse=True)[:limit]
    return [_read(path) for path in files]


def _read(path: Path) -> DevMail:
    parsed = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    body = parsed.get_body(preferencelist=("plain", "html")) if parsed.is_multipart() else parsed
    text = body.get_content() if body is not None else ""
    return DevMail(name=path.name, written_at=datetime.fromtimestamp(path.stat().st_mtime, UTC),
                   sender=str(parsed.get("From", "")), recipient=str(parsed.get("To", "")),
                   subject=str(parsed.get("Subject", "")), text=str(text))
