"""Processors for the notification tests (ASYNC_TASK_PROCESSORS += tests.notify_processors)."""

from __future__ import annotations

from typing import Any

from webapp.tasks import (
    NotificationRequest,
    NotificationType,
    RetryConfig,
    RetryStrategy,
    TaskInfo,
    TaskProcessor,
    TaskResult,
)


class MailOkProcessor(TaskProcessor):
    """Succeeds; the default mail goes to the creator."""

    task_type = "MAIL_OK"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.success({"answer": 42, "note": payload.get("note", "")})


class MailFailsProcessor(TaskProcessor):
    """Fails every attempt, with two quick retries: RETRYING twice, then FAILURE."""

    task_type = "MAIL_FAILS"
    retry_config = RetryConfig(max_retry_count=2, strategy=RetryStrategy.FIXED, base_interval=0.05)

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.failure(f"disk full on attempt {task.attempt}")


class QuietProcessor(TaskProcessor):
    """Never wants a notification."""

    task_type = "QUIET"

    def should_notify_on_success(self) -> bool:
        return False

    def should_notify_on_failure(self) -> bool:
        return False

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.success()


class CustomMailProcessor(TaskProcessor):
    """Builds its own mail to ``payload['to']`` (which may be invalid on purpose)."""

    task_type = "CUSTOM_MAIL"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.success({"to": payload.get("to")})

    def build_notification_request(self, task: Any, result: TaskResult) -> NotificationRequest | None:
        return NotificationRequest(NotificationType.EMAIL, task.payload.get("to", ""),
                                   subject=f"Custom\nreport {task.id}", content="custom body")


class HookProcessor(TaskProcessor):
    """Asks for a webhook to ``payload['url']`` instead of a mail."""

    task_type = "HOOK"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.success({"hooked": True})

    def build_notification_request(self, task: Any, result: TaskResult) -> NotificationRequest | None:
        return NotificationRequest(NotificationType.WEBHOOK, task.payload["url"], subject="done")


class BrokenBuilderProcessor(TaskProcessor):
    """Its ``build_notification_request`` raises: the task must still end SUCCESS."""

    task_type = "BROKEN_BUILDER"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.success()

    def build_notification_request(self, task: Any, result: TaskResult) -> NotificationRequest | None:
        raise KeyError("recipient_list")
