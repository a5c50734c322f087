"""The processor API application developers implement: one ``TaskProcessor`` per task type."""

from __future__ import annotations

import enum
import inspect
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .attempt import TaskInfo
from .limits import TaskLimits
from .progress import current_context

__all__ = ["NotificationRequest", "NotificationType", "RetryConfig", "RetryStrategy", "TaskInfo",
           "TaskProcessor", "TaskResult", "is_async_processor"]


class RetryStrategy(enum.StrEnum):
    """How the delay between automatic retries grows."""

    FIXED = "FIXED"
    EXPONENTIAL = "EXPONENTIAL"


@dataclass(frozen=True)
class RetryConfig:
    """Automatic retry policy of a task type.

    The delay before the n-th automatic retry (n = 1 .. max_retry_count) is
    ``base_interval`` for FIXED and ``base_interval * 2 ** (n - 1)`` for EXPONENTIAL
    (60, 120, 240 for a base of 60). ``max_delay`` caps the delay when set; ``jitter``
    (a fraction, 0 by default) spreads retries by up to that share of the delay so that
    a burst of failures does not come back at the same instant.
    """

    max_retry_count: int = 3
    strategy: RetryStrategy = RetryStrategy.EXPONENTIAL
    base_interval: float = 60
    max_delay: float | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.max_retry_count, bool) or not isinstance(self.max_retry_count, int):
            raise ValueError("max_retry_count must be an integer")
        if self.max_retry_count < 0:
            raise ValueError("max_retry_count must be 0 or more")
        if not isinstance(self.base_interval, int | float) or self.base_interval < 0:
            raise ValueError("base_interval must be a number of seconds, 0 or more")
        object.__setattr__(self, "strategy", RetryStrategy(self.strategy))
        if self.max_delay is not None and self.max_delay < 0:
            raise ValueError("max_delay must be 0 or more")
        if not 0 <= self.jitter <= 1:
            raise ValueError("jitter must be between 0 and 1")


class _SuccessFlag:
    """``TaskResult.success(...)`` builds a success (the original API); ``result.success`` is a bool."""

    def __get__(self, instance: TaskResult | None, owner: type[TaskResult]) -> Any:
        if instance is None:
            return owner._make_success
        return instance._success


class TaskResult:
    """What ``process()`` returns: ``TaskResult.success(data)`` or ``TaskResult.failure(message)``.

    A failure with ``retryable=False`` ends the task in FAILURE at once, whatever retries remain.
    ``TaskResult.cancelled(message)`` ends it CANCELLED (a processor honouring a cancel request).
    """

    __slots__ = ("_success", "data", "message", "retryable", "is_cancelled")
    success = _SuccessFlag()

    def __init__(
        self,
        success: bool,
        data: dict[str, Any] | None = None,
        message: str | None = None,
        retryable: bool = True,
    ) -> None:
        self._success = bool(success)
        self.data = data
        self.message = message
        self.retryable = retryable
        self.is_cancelled = False

    @classmethod
    def _make_success(cls, data: dict[str, Any] | None = None) -> TaskResult:
        return cls(True, data=data)

    @classmethod
    def failure(cls, message: str, retryable: bool = True) -> TaskResult:
        return cls(False, message=str(message), retryable=retryable)

    @classmethod
    def cancelled(cls, message: str = "cancelled at an operator's request") -> TaskResult:
        result = cls(False, message=str(message), retryable=False)
        result.is_cancelled = True
        return result

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TaskResult):
            return NotImplemented
        return (self._success, self.data, self.message, self.retryable, self.is_cancelled) == (
            other._success, other.data, other.message, other.retryable, other.is_cancelled)

    def __repr__(self) -> str:
        if self._success:
            return f"TaskResult.success({self.data!r})"
        if self.is_cancelled:
            return f"TaskResult.cancelled({self.message!r})"
        return f"TaskResult.failure({self.message!r}, retryable={self.retryable!r})"


class NotificationType(enum.StrEnum):
    """How a notification is delivered."""

    EMAIL = "EMAIL"
    WEBHOOK = "WEBHOOK"


@dataclass(frozen=True)
class NotificationRequest:
    """A message a processor wants sent when its task ends."""

    type: NotificationType
    recipient: str
    subject: str = ""
    content: str = ""
    html: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class TaskProcessor:
    """Base class of task processors. Subclass it, set the task type, implement ``process``.

    ``payload_type`` (optional) is a dataclass: payloads are checked against it at submit and
    ``process()`` receives an instance of it instead of the plain dict. ``sensitive_fields``
    (or ``field(metadata={"sensitive": True})`` on the dataclass) names payload fields whose
    values are shown as ``•••`` everywhere outside the database (``tasks/masking.py``).

    ``process`` may be ``async def``: the worker then runs it on its event loop, many at a time
    without a thread each (``ASYNC_TASK_ASYNC_CONCURRENCY``; docs/async-processors.md).
    """

    task_type: ClassVar[str | None] = None
    payload_type: ClassVar[type | None] = None
    sensitive_fields: ClassVar[tuple[str, ...] | frozenset[str]] = ()
    retry_config: ClassVar[RetryConfig | None] = None

    def get_task_type(self) -> str:
        if not self.task_type:
            raise NotImplementedError(f"{type(self).__name__} must set task_type or override get_task_type()")
        return self.task_type

    def process(self, task: TaskInfo, payload: Any) -> TaskResult:
        raise NotImplementedError

    def get_retry_config(self) -> RetryConfig:
        return self.retry_config or RetryConfig()

    def get_priority(self, payload: Any) -> int | None:
        return None

    def get_limits(self) -> TaskLimits:
        """Flow control of this task type (concurrency, rate, unique, time limits); none by default."""
        return TaskLimits()

    def should_notify_on_success(self) -> bool:
        """Default True: the creator hears about the outcome (a mail when created_by is an address)."""
        return True

    def should_notify_on_failure(self) -> bool:
        return True

    def build_notification_request(self, task: Any, result: TaskResult) -> NotificationRequest | None:
        return None

    def get_schedules(self) -> list[dict[str, Any]]:
        """Default recurring schedules of this task type (see docs/schedules.md); none by default.

        Each is a mapping like ``{"name": "nightly-report", "cron": "30 2 * * *", "timezone":
        "Europe/Berlin", "payload": {...}}``; ``task_type`` defaults to this processor's.
        """
        return []

    def report_progress(self, fraction: float, message: str | None = None) -> None:
        """Record how far the running task is (0.0 to 1.0); raises TaskCancelled once cancel is asked.

        Writes are throttled (at most a few a second), so calling this in a tight loop is cheap.
        """
        current_context().report_progress(fraction, message)

    def is_cancel_requested(self) -> bool:
        """Whether an operator asked to cancel the running task (checked at most a few times a second)."""
        return current_context().is_cancel_requested()


def is_async_processor(processor: TaskProcessor) -> bool:
    """Whether ``processor.process`` is ``async def``: its attempts run on the worker's event loop."""
    return inspect.iscoroutinefunction(processor.process)
