"""The engine's one call into notifications: when a task ends, write its outbox rows if any are due.

Called inside the transaction that writes the final status (a finish, or recovery giving up),
so the rows commit with it; delivery happens later on the dispatcher's own threads.
"""

from __future__ import annotations

from ..notifications.addresses import is_email_address
from ..notifications.composing import queue_for_finished_task
from .attempt import TaskInfo
from .processor import TaskProcessor, TaskResult
from .registry import ProcessorRegistry
from .store import TaskStore


def notification_may_be_needed(registry: ProcessorRegistry, task: TaskInfo) -> bool:
    """Whether a notification can be due, decided without a query.

    With the default ``build_notification_request`` a mail needs an email-address creator and
    a webhook needs a ``notify_url``; a task with neither costs no query at all.
    """
    processor = registry.get(task.task_type)
    if processor is None:
        return False
    custom_builder = (type(processor).build_notification_request
                      is not TaskProcessor.build_notification_request)
    return custom_builder or bool(task.notify_url) or is_email_address(task.created_by)


def notify_task_ended(store: TaskStore, task: TaskInfo, status: str, result: TaskResult) -> None:
    """Write the outbox rows of a task that ended ``status`` (SUCCESS or FAILURE), if any can be due."""
    if notification_may_be_needed(store.registry, task):
        queue_for_finished_task(store.session, store.registry, task, status, result)
