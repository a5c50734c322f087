"""Which outbox rows a task's final status writes, and the default mail a creator gets.

``queue_for_finished_task`` is the task engine's one call into notifications: it runs inside
the transaction that writes a task's final status, so the rows commit with it (or not at all).
Delivery happens after commit on the dispatcher's own threads, so a slow or failing mail server
can never change a task's outcome. Nothing here may raise into the finish: a processor's broken
``build_notification_request``, an invalid recipient or a template error becomes a SKIPPED row
naming the reason, and the task's status commits anyway.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from flask import current_app
from sqlalchemy.orm import Session

from ..config import engine_settings
from ..tasks.errors import ValidationError
from ..tasks.masking import scrub_task_text
from ..tasks.models import AsyncTask, Notification, NotificationStatus, TaskStatus, utcnow
from ..tasks.processor import NotificationRequest, NotificationType, TaskInfo, TaskResult
from ..tasks.registry import ProcessorRegistry
from ..tasks.serialize import task_to_dict
from ..tasks.wakeup import wake_after_commit
from .addresses import MAX_RECIPIENT, is_email_address, validate_webhook_url
from .outbox import dispatchers_in_process
from .quota import quota_problem

log = logging.getLogger(__name__)

MAX_SUBJECT = 500
MAX_RESULT_IN_MAIL = 4000
DEFAULT_TEMPLATE = "email/task_finished"


def queue_for_finished_task(session: Session, registry: ProcessorRegistry, task: TaskInfo, status: str,
                            result: TaskResult) -> None:
    """Add the outbox rows a task's final status calls for to ``session`` (no commit).

    Never raises: whatever goes wrong while building a notification is recorded as a SKIPPED row
    with the reason, because the task's outcome must commit regardless. Dispatchers in this
    process are woken once the rows commit.
    """
    max_attempts = engine_settings(current_app).notify_max_attempts
    try:
        rows = _outbox_rows(session, registry, task, status, result, max_attempts)
    except Exception as exc:  # a bug here must not turn a finished task into a failed commit
        log.exception("task %s: could not build its notifications", task.id)
        rows = [outbox_row(task.id, None, f"building the notification failed: {type(exc).__name__}: {exc}",
                           max_attempts)]
    for row in rows:
        session.add(row)
    if any(row.status == NotificationStatus.PENDING.value for row in rows):
        wake_after_commit(session, dispatchers_in_process(current_app))


def _outbox_rows(session: Session, registry: ProcessorRegistry, task: TaskInfo, status: str,
                 result: TaskResult, max_attempts: int) -> list[Notification]:
    # populate_existing: finish_task changed the row with a bulk UPDATE, so an object already in
    # the session's identity map would still show the old status.
    row = session.get(AsyncTask, task.id, populate_existing=True)
    if row is None:
        return []
    processor = registry.get(task.task_type)
    requests: list[tuple[NotificationRequest | None, str | None]] = []
    if processor is not None and _wants_notification(processor, status):
        try:
            request = processor.build_notification_request(row, result)
        except Exception as exc:  # a processor bug must not lose the task's outcome
            log.exception("task %s: build_notification_request failed", task.id)
            requests.append((None, f"build_notification_request raised {type(exc).__name__}: {exc}"))
        else:
            if request is not None:
                requests.append(_checked_request(request))
            elif is_email_address(row.created_by):
                requests.append(_default_email_or_problem(row, status, result))
    if row.notify_url:
        requests.append((NotificationRequest(NotificationType.WEBHOOK, row.notify_url,
                                             subject=f"task {row.id} {status}"), None))
    body = None
    rows = []
    for request, problem in requests:
        if request is not None and request.type == NotificationType.WEBHOOK:
            # The body is frozen now, so a later manual retry of the task cannot change what
            # this notification reports.
            body = body or json.dumps(task_to_dict(row), ensure_ascii=False, separators=(",", ":"))
            request = NotificationRequest(request.type, request.recipient, request.subject, body)
        rows.append(outbox_row(task.id, request, problem, max_attempts))
    return _within_token_quota(session, row.principal, rows)


def _within_token_quota(session: Session, principal: str | None, rows: list[Notification]) -> list[Notification]:
    """Past its API token's hourly limit, a task's notifications are written SKIPPED with the reason."""
    pending = [row for row in rows if row.status == NotificationStatus.PENDING.value]
    problem = quota_problem(session, principal, len(pending), utcnow())
    for row in pending if problem else ():
        row.status, row.last_error = NotificationStatus.SKIPPED.value, problem
    return rows


def _wants_notification(processor: Any, status: str) -> bool:
    try:
        if status == TaskStatus.SUCCESS.value:
            return bool(processor.should_notify_on_success())
        return bool(processor.should_notify_on_failure())
    except Exception:
        log.exception("should_notify_on_* of %s raised; not notifying", type(processor).__name__)
        return False


def _checked_request(request: Any) -> tuple[NotificationRequest | None, str | None]:
    if not isinstance(request, NotificationRequest):
        return None, (f"build_notification_request returned {type(request).__name__}, "
                      f"expected NotificationRequest or None")
    try:
        NotificationType(request.type)
    except ValueError:
        return None, f"unknown notification type {request.type!r}"
    if not isinstance(request.recipient, str):
        return None, f"recipient must be a string, got {type(request.recipient).__name__}"
    return request, None


def _default_email_or_problem(task: AsyncTask, status: str,
                              result: TaskResult) -> tuple[NotificationRequest | None, str | None]:
    try:
        return default_email(task, status, result), None
    except Exception as exc:  # a broken template must not lose the task's outcome
        log.exception("task %s: rendering the default mail failed", task.id)
        return None, f"rendering the default mail failed: {type(exc).__name__}: {exc}"


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
        task_id=task_id, type=NotificationType(request.type).value,
        recipient=str(request.recipient)[:MAX_RECIPIENT], subject=clean_subject(request.subject),
        content=request.content or "", html=request.html,
        status=NotificationStatus.SKIPPED.value if problem else NotificationStatus.PENDING.value,
        last_error=problem, max_attempts=max_attempts, created_at=now, updated_at=now, next_attempt_at=now)


def clean_subject(subject: Any) -> str:
    """One line of at most 500 characters (a newline in a mail header would be refused)."""
    text = " ".join(str(subject or "").split())
    return text[:MAX_SUBJECT]


def recipient_problem(request: NotificationRequest) -> str | None:
    """Why this request's recipient cannot be used, or ``None`` when it looks deliverable."""
    if request.type == NotificationType.EMAIL and not is_email_address(request.recipient):
        return f"invalid email recipient {request.recipient!r}"
    if request.type == NotificationType.WEBHOOK:
        try:
            validate_webhook_url(request.recipient, field="recipient")
        except ValidationError as exc:
            return exc.message
    return None


# The default mail's subject per ASYNC_TASK_MAIL_LANGUAGE; its body is email/task_finished[.LANG].*
MAIL_SUBJECTS = {
    "en": ("Task {task_type} #{id} succeeded", "Task {task_type} #{id} failed"),
    "zh_Hans": ("任务 {task_type} #{id} 已成功", "任务 {task_type} #{id} 失败"),
}
MAIL_OUTCOMES = {"en": ("succeeded", "failed"), "zh_Hans": ("已成功完成", "执行失败")}


def default_email(task: AsyncTask, status: str, result: TaskResult) -> NotificationRequest:
    """The mail a creator gets when the processor builds none (templates under templates/email/).

    Written in ``ASYNC_TASK_MAIL_LANGUAGE`` (``en`` by default, or ``zh_Hans``): creators are
    addresses, not console users, so there is no per-person preference to consult.
    """
    succeeded = status == TaskStatus.SUCCESS.value
    settings = engine_settings(current_app)
    language = settings.mail_language if settings.mail_language in MAIL_SUBJECTS else "en"
    outcome = MAIL_OUTCOMES[language][0 if succeeded else 1]
    base_url = settings.base_url.rstrip("/")
    context = {
        "task": task,
        "status": status,
        "outcome": outcome,
        "succeeded": succeeded,
        "result_text": _result_text(task.result if succeeded else None),
        # A mail leaves the database: a sensitive payload value quoted by the error is masked.
        "error": None if succeeded else scrub_task_text(task.task_type, task.payload,
                                                        result.message or task.error or "failed without a message"),
        "link": f"{base_url}/tasks/{task.id}",
    }
    env = current_app.jinja_env
    template = DEFAULT_TEMPLATE if language == "en" else f"{DEFAULT_TEMPLATE}.{language}"
    # Rendered straight from the environment: no request here, so no context processors.
    content = env.get_template(f"{template}.txt").render(**context)
    html = env.get_template(f"{template}.html").render(**context)
    subject = MAIL_SUBJECTS[language][0 if succeeded else 1].format(task_type=task.task_type, id=task.id)
    return NotificationRequest(NotificationType.EMAIL, task.created_by or "",
                               subject=subject, content=content, html=html)


def _result_text(data: Any) -> str | None:
    if data is None:
        return None
    text = json.dumps(data, indent=2, ensure_ascii=False, sort_keys=True, default=repr)
    if len(text) > MAX_RESULT_IN_MAIL:
        return text[:MAX_RESULT_IN_MAIL] + "\n… (truncated; see the console)"
    return text
