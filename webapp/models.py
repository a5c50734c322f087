"""Imports every model so that metadata (and Alembic) sees all tables."""

from .accounts.models import ApiToken, User
from .tasks.models import (
    AsyncTask,
    AuditEntry,
    Notification,
    TaskEvent,
    TaskTypeState,
    Worker,
)

__all__ = ["ApiToken", "AsyncTask", "AuditEntry", "Notification", "TaskEvent", "TaskTypeState",
           "User", "Worker"]
