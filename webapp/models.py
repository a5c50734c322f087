"""Imports every model so that metadata (and Alembic) sees all tables."""

from .accounts.models import ApiToken, LoginFailureCounter, User
from .tasks.history_models import TaskStat, TaskStatMark
from .tasks.limit_models import TaskLimitOverride, TaskLimitStart
from .tasks.models import (
    AsyncTask,
    AuditEntry,
    Notification,
    TaskEvent,
    TaskTypeState,
    Worker,
)

__all__ = ["ApiToken", "AsyncTask", "AuditEntry", "LoginFailureCounter", "Notification", "TaskEvent",
           "TaskLimitOverride", "TaskLimitStart", "TaskStat", "TaskStatMark", "TaskTypeState", "User",
           "Worker"]
