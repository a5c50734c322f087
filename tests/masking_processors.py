"""Task types with sensitive payload fields, for the masking and export tests."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from webapp.tasks import TaskProcessor, TaskResult
from webapp.tasks.processor import RetryConfig, TaskInfo

log = logging.getLogger("tests.masking_processors")


@dataclass
class LoginPayload:
    """``password`` is declared sensitive by dataclass field metadata."""

    username: str
    password: str = field(metadata={"sensitive": True})
    note: str = ""


class LoginProcessor(TaskProcessor):
    """Fails with the password in its message and its log line (as careless code would)."""

    task_type = "LOGIN_WITH_SECRET"
    payload_type = LoginPayload
    retry_config = RetryConfig(max_retry_count=0)

    def process(self, task: TaskInfo, payload: Any) -> TaskResult:
        log.warning("logging in %s with %s", payload.username, payload.password)
        raise RuntimeError(f"login refused for password {payload.password}")


class ApiCallProcessor(TaskProcessor):
    """Takes any object; ``api_key`` and ``auth.token`` are declared by the attribute."""

    task_type = "CALL_WITH_KEY"
    sensitive_fields = ("api_key", "auth.token")
    retry_config = RetryConfig(max_retry_count=0)

    def process(self, task: TaskInfo, payload: Any) -> TaskResult:
        return TaskResult.failure("remote said no", retryable=False)
