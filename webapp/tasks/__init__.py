"""The task engine: processor API, service, consumer. Knows nothing of HTTP."""

from .errors import (
    InvalidPayload,
    InvalidTransition,
    TaskError,
    TaskNotFound,
    UnknownTaskType,
    ValidationError,
)
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
    "RetryConfig",
    "RetryStrategy",
    "TaskError",
    "TaskFilter",
    "TaskInfo",
    "TaskNotFound",
    "TaskProcessor",
    "TaskResult",
    "TaskStatus",
    "UnknownTaskType",
    "ValidationError",
]
