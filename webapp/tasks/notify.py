"""Notification outbox: rows written in the same transaction as a task's final status.

Delivery (mail, webhooks) happens after commit, elsewhere; this module only decides what to
send and writes it down, so a slow or failing mail server can never change a task's outcome.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from flask import current_app

from .errors import ValidationError
from .models import AsyncTask, Notification, NotificationStatus, TaskStatus, utcnow
from .processor import NotificationRequest, NotificationType, TaskInfo, TaskResult

if TYPE_CHECKING:
    from .service import AsyncTaskService

log = logging.getLogger(__name__)

EMAIL_PATTERN = re.compile(r"^[^@\s<>\"',;]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                           r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+$")


def is_email_address(value: str | None) -> bool:
    return bool(value) and len(value or "") <= 254 and EMAIL_PATTERN.match(value or "") is not None


def validate_webhook_url(url: Any, field: str = "notify_url") -> str:
    """An absolute http(s) URL with a host; whether private hosts are allowed is checked at send."""
    if not isinstance(url, str) or not url or len(url) > 2000:
        raise ValidationError(f"{field} must be an http(s) URL of at most 2000 characters", field=field)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"{field} must be an absolute http(s) URL, got {url!r}", field=field)
    return url


def queue_notifications(service: AsyncTaskService, task: TaskInfo, status: str, result: TaskResult) -> None:
    """Write the outbox rows a task's final status calls for (inside the finishing transaction)."""
    processor = service.registry.get(task.task_type)
    if processor is None:
        return
    wants = (processor.should_notify_on_success() if status == TaskStatus.SUCCESS.value
             else processor.should_notify_on_failure())
    row = service.session.get(AsyncTask, task.id)
    if row is None:
        return
    requests: list[tuple[NotificationRequest | None, str | None]] = []
    if wants:
        try:
            request = processor.build_notification_request(row, result)
        except Exception as exc:  # a processor bug must not lose the task's outcome
            log.exception("task %s: build_notification_request failed", task.id)
            requests.append((None, f"build_notification_request raised {type(exc).__name__}: {exc}"))
        else:
            if request is not None:
                requests.append((request, None))
            elif is_email_address(row.created_by):
                requests.append((default_email(row, status, result), None))
    if row.notify_url:
        requests.append((NotificationRequest(NotificationType.WEBHOOK, row.notify_url,
                                             subject=f"task {row.id} {status}"), None))
    max_attempts = int(current_app.config.get("ASYNC_TASK_NOTIFY_MAX_ATTEMPTS", 8))
    for request, problem in requests:
        service.session.add(outbox_row(task.id, request, problem, max_attempts))


def outbox_row(task_id: int, request: NotificationRequest | None, problem: str | None,
               max_attempts: int) -> Notification:
    """A PENDING outbox row, or a SKIPPED one naming why it cannot be sent."""
    now = utcnow()
    if request is None:
        return Notification(task_id=task_id, type=NotificationType.EMAIL.value, recipient="",
                            status=NotificationStatus.SKIPPED.value, last_error=problem,
                            max_attempts=max_attempts, created_at=now, updated_at=now, next_attempt_at=now)
    problem = problem or recipient_problem(request)
    return Notification(
        task_id=task_id, type=NotificationType(request.type).value, recipient=request.recipient[:2000],
        subject=(request.subject or "")[:500], content=request.content or "", html=request.html,
        status=NotificationStatus.SKIPPED.value if problem else NotificationStatus.PENDING.value,
        last_error=problem, max_attempts=max_attempts, created_at=now, updated_at=now, next_attempt_at=now)


def recipient_problem(request: NotificationRequest) -> str | None:
    if request.type == NotificationType.EMAIL and not is_email_address(request.recipient):
        return f"invalid email recipient {request.recipient!r}"
    if request.type == NotificationType.WEBHOOK:
        try:
            validate_webhook_url(request.recipient, field="recipient")
        except ValidationError as exc:
            return exc.message
    return None


def default_email(task: AsyncTask, status: str, result: TaskResult) -> NotificationRequest:
    """The mail a creator gets when the processor builds none."""
    outcome = "succeeded" if status == TaskStatus.SUCCESS.value else "failed"
    base_url = current_app.config.get("ASYNC_TASK_BASE_URL", "").rstrip("/")
    detail = (f"Result: {result.data}" if result.success else f"Error: {result.message}")
    content = (f"Your task {task.task_type} #{task.id} {outcome}.\n\n{detail}\n\n"
               f"Details: {base_url}/tasks/{task.id}\n")
    return NotificationRequest(NotificationType.EMAIL, task.created_by or "",
                               subject=f"Task {task.task_type} #{task.id} {outcome}", content=content)
