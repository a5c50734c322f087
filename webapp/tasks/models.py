"""Tables of the engine: tasks, their event history, workers, notifications, task-type state."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, query_expression
from sqlalchemy.types import TypeDecorator

from ..extensions import db


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes everywhere: ``timestamptz`` on PostgreSQL, naive UTC text on SQLite."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where an aware UTC time is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Integer ids everywhere (the original's Long); SQLite only auto-increments INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")
JsonDoc = JSON().with_variant(JSONB(), "postgresql")


class TaskStatus(enum.StrEnum):
    """Lifecycle of a task; the transitions are enforced by ``AsyncTaskService``."""

    PENDING = "PENDING"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    RETRYING = "RETRYING"
    CANCELLED = "CANCELLED"
    # A workflow's task whose parents have not all succeeded yet: no claim takes it
    # (not to be confused with WAITING_STATUSES below, the queued ones a claim may take).
    WAITING = "WAITING"


WAITING_STATUSES = (TaskStatus.PENDING.value, TaskStatus.RETRYING.value)
TERMINAL_STATUSES = (TaskStatus.SUCCESS.value, TaskStatus.FAILURE.value, TaskStatus.CANCELLED.value)


class AsyncTask(db.Model):  # type: ignore[name-defined,misc]
    """One unit of background work (table ``async_task``, the seed's columns first)."""

    __tablename__ = "async_task"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_type: Mapped[str] = mapped_column(String(100), nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=TaskStatus.PENDING.value)
    priority: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc, nullable=False)
    result: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc, nullable=True)
    retry_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_retry_count: Mapped[int] = mapped_column(Integer, nullable=False, default=3)
    retry_strategy: Mapped[str] = mapped_column(String(16), nullable=False, default="EXPONENTIAL")
    retry_interval: Mapped[float] = mapped_column(Float, nullable=False, default=60)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    next_run_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    # Lease of the current attempt: which worker holds it and the fencing token it must present.
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    recovery_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    retry_max_delay: Mapped[float | None] = mapped_column(Float, nullable=True)
    retry_jitter: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)

    # Submission details.
    idempotency_scope: Mapped[str | None] = mapped_column(String(100), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    notify_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    parent_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("async_task.id"), nullable=True)
    # Who submitted it: ``token:<name>``, ``user:<name>`` or ``cli`` (None: Python code in-process).
    # An API token whose reach is its own tasks sees only rows with its principal (migration 0006).
    principal: Mapped[str | None] = mapped_column(String(255), nullable=True)

    # Workflows (migration 0010): the workflow a task belongs to, its key there, and how many of
    # its parents have not succeeded yet (a WAITING task becomes PENDING when this reaches 0).
    # (``workflow.id``; no foreign key, which would rebuild this table on SQLite.)
    workflow_id: Mapped[int | None] = mapped_column(BigId, nullable=True)
    workflow_key: Mapped[str | None] = mapped_column(String(100), nullable=True)
    pending_parents: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")

    # Loaded only by the list query (``queries.list_task_previews``): the first characters of
    # the payload's, the result's and the error's text, so a page of a list never carries whole
    # values (200 tasks with 1 MB payloads were 200 MB per page). None everywhere else.
    payload_head: Mapped[str | None] = query_expression()
    result_head: Mapped[str | None] = query_expression()
    error_head: Mapped[str | None] = query_expression()

    # Operator features: progress reports and cooperative cancel of a running task.
    progress: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress_message: Mapped[str | None] = mapped_column(String(500), nullable=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Flow control (migration 0009): not started by then, never started (CANCELLED by the sweep).
    start_by: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        # The claim: due waiting tasks by priority, then by due time, then id (FIFO on ties).
        # Partial, so it holds only waiting rows and stays small however many finished rows exist.
        Index(
            "ix_async_task_due",
            text("priority DESC"),
            "next_run_at",
            "id",
            postgresql_where=text("status IN ('PENDING', 'RETRYING')"),
            sqlite_where=text("status IN ('PENDING', 'RETRYING')"),
        ),
        # Recovery sweeps and the workers page look at running tasks only.
        Index(
            "ix_async_task_processing",
            "worker_id",
            "started_at",
            postgresql_where=text("status = 'PROCESSING'"),
            sqlite_where=text("status = 'PROCESSING'"),
        ),
        Index("ix_async_task_status_id", "status", "id"),
        # Edit-and-retry lineage ("resubmitted as #M"): only resubmitted tasks have a parent.
        Index("ix_async_task_parent_id", "parent_id",
              postgresql_where=text("parent_id IS NOT NULL"), sqlite_where=text("parent_id IS NOT NULL")),
        Index("ix_async_task_type_status_id", "task_type", "status", "id"),
        # The console's type filter, newest first (migration 0003).
        Index("ix_async_task_type_id", "task_type", "id"),
        # Oldest waiting task and how many are due, read from its start (migration 0003).
        Index(
            "ix_async_task_waiting_next_run",
            "next_run_at",
            postgresql_where=text("status IN ('PENDING', 'RETRYING')"),
            sqlite_where=text("status IN ('PENDING', 'RETRYING')"),
        ),
        Index("ix_async_task_created_by_id", "created_by", "id"),
        # A token's own tasks, newest first (the reach filter of the API, migration 0006).
        Index("ix_async_task_principal_id", "principal", "id"),
        Index("ix_async_task_created_at", "created_at"),
        Index("ix_async_task_finished_at", "finished_at"),
        # The start-deadline sweep: waiting tasks that have a deadline (migration 0009).
        Index("ix_async_task_start_by", "start_by",
              postgresql_where=text("start_by IS NOT NULL AND status IN ('PENDING', 'RETRYING')"),
              sqlite_where=text("start_by IS NOT NULL AND status IN ('PENDING', 'RETRYING')")),
        UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_async_task_idempotency"),
        # A workflow's tasks by key (one task a key, callbacks included); partial, so tasks
        # outside a workflow add nothing to it (migration 0010).
        Index("uq_async_task_workflow_key", "workflow_id", "workflow_key", unique=True,
              postgresql_where=text("workflow_id IS NOT NULL"), sqlite_where=text("workflow_id IS NOT NULL")),
    )

    def __repr__(self) -> str:
        return f"<AsyncTask {self.id} {self.task_type} {self.status}>"


class TaskEventKind(enum.StrEnum):
    """What happened to a task, as recorded in its timeline."""

    SUBMITTED = "SUBMITTED"
    CLAIMED = "CLAIMED"
    SUCCEEDED = "SUCCEEDED"
    RETRY_SCHEDULED = "RETRY_SCHEDULED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    RETRIED = "RETRIED"
    RECOVERED = "RECOVERED"
    RELEASED = "RELEASED"
    LATE_RESULT_REFUSED = "LATE_RESULT_REFUSED"
    CANCEL_REQUESTED = "CANCEL_REQUESTED"
    CANCEL_TOO_LATE = "CANCEL_TOO_LATE"
    RESUBMITTED = "RESUBMITTED"
    UNBLOCKED = "UNBLOCKED"  # a workflow's waiting task whose last parent succeeded
    SOFT_TIME_LIMIT = "SOFT_TIME_LIMIT"  # past its soft time limit: the attempt was asked to stop
    TIME_LIMIT_EXCEEDED = "TIME_LIMIT_EXCEEDED"  # past its hard limit in a thread that cannot be stopped


class TaskEvent(db.Model):  # type: ignore[name-defined,misc]
    """One entry of a task's history: a state change or a notable refusal, with its time."""

    __tablename__ = "task_event"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("async_task.id", ondelete="CASCADE"), nullable=False
    )
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    from_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_status: Mapped[str | None] = mapped_column(String(16), nullable=True)
    attempt: Mapped[int | None] = mapped_column(Integer, nullable=True)
    worker_id: Mapped[str | None] = mapped_column(String(80), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (Index("ix_task_event_task_id_id", "task_id", "id"),)


class Worker(db.Model):  # type: ignore[name-defined,misc]
    """A consumer process: registered at start, heartbeating while alive."""

    __tablename__ = "worker"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255), nullable=False)
    pid: Mapped[int] = mapped_column(Integer, nullable=False)
    concurrency: Mapped[int] = mapped_column(Integer, nullable=False)
    heartbeat_interval: Mapped[float] = mapped_column(Float, nullable=False, default=5.0)
    busy: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="RUNNING")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    processed: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)

    __table_args__ = (Index("ix_worker_status_heartbeat", "status", "last_heartbeat_at"),)


class NotificationStatus(enum.StrEnum):
    PENDING = "PENDING"
    SENT = "SENT"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


class Notification(db.Model):  # type: ignore[name-defined,misc]
    """Outbox row: written with the task's final status, delivered after commit."""

    __tablename__ = "notification"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("async_task.id", ondelete="CASCADE"), nullable=False
    )
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    recipient: Mapped[str] = mapped_column(String(2000), nullable=False)
    subject: Mapped[str] = mapped_column(String(500), nullable=False, default="")
    content: Mapped[str] = mapped_column(Text, nullable=False, default="")
    html: Mapped[str | None] = mapped_column(Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="PENDING")
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=8)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    claim_token: Mapped[str | None] = mapped_column(String(32), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_notification_task_id", "task_id"),
        Index(
            "ix_notification_due",
            "next_attempt_at",
            postgresql_where=text("status = 'PENDING'"),
            sqlite_where=text("status = 'PENDING'"),
        ),
        Index("ix_notification_status_id", "status", "id"),
        # The console's recipient filter; a hash index, since a URL recipient can outgrow a
        # btree entry (migration 0003).
        Index("ix_notification_recipient", "recipient", postgresql_using="hash"),
    )


class TaskTypeState(db.Model):  # type: ignore[name-defined,misc]
    """Per-task-type switches operators set (pause)."""

    __tablename__ = "task_type_state"

    task_type: Mapped[str] = mapped_column(String(100), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    changed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)


class AuditEntry(db.Model):  # type: ignore[name-defined,misc]
    """An operator action (cancel, retry, bulk, login, user and token changes) and its outcome."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    actor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    target_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    target_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    outcome: Mapped[str] = mapped_column(String(16), nullable=False, default="ok")
    detail: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc, nullable=True)

    __table_args__ = (
        Index("ix_audit_log_at", "at"),
        Index("ix_audit_log_target", "target_type", "target_id"),
    )
