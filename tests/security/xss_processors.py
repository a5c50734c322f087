"""Processors for the XSS tests: a task type made of markup, and one that fails with its payload.

Task types come from code, not from users, but a plugin's name is still text the console must
escape; the failing one puts attacker-chosen text into the error and the traceback.
"""

from __future__ import annotations

from typing import Any

from webapp.tasks import TaskResult
from webapp.tasks.processor import RetryConfig, TaskInfo, TaskProcessor

MARKUP_TASK_TYPE = '<img src=x onerror=alert("type")>'
FAILING_TASK_TYPE = "XSS_FAIL"


class MarkupTypeProcessor(TaskProcessor):
    """Succeeds, echoing its payload into the result."""

    task_type = MARKUP_TASK_TYPE

    def process(self, task: TaskInfo, payload: Any) -> TaskResult:
        return TaskResult.success({"echo": payload})


class EchoFailureProcessor(TaskProcessor):
    """Fails at once with the payload's ``error`` text as the error message."""

    task_type = FAILING_TASK_TYPE
    retry_config = RetryConfig(max_retry_count=0)

    def process(self, task: TaskInfo, payload: Any) -> TaskResult:
        raise RuntimeError(str(payload.get("error")))
