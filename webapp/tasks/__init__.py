"""The task engine: processor API, service, consumer. Knows nothing of HTTP."""

from .errors import (
    InvalidPayload,
    InvalidTransition,
    TaskError,
    TaskNotFound,
    UnknownTaskType,
    ValidationError,
)
from .limits import RateLimit, TaskLimits, Unique
from .models import AsyncTask, TaskStatus
from .processor import (
    NotificationRequest,
    NotificationType,
    RetryConfig,
    RetryStrategy,
    TaskInfo,
    TaskProcessor,
    TaskResult,
)
from .service import AsyncTaskService, TaskFilter

__all__ = [
    "AsyncTask",
    "AsyncTaskService",
    "InvalidPayload",
    "InvalidTransition",
    "NotificationRequest",
    "NotificationType",
    "RateLimit",
    "RetryConfig",
    "RetryStrategy",
    "TaskError",
    "TaskFilter",
    "TaskInfo",
    "TaskLimits",
    "TaskNotFound",
    "TaskProcessor",
    "TaskResult",
    "TaskStatus",
    "Unique",
    "UnknownTaskType",
    "ValidationError",
]
