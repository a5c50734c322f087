"""The ``workflow`` and ``workflow_edge`` tables (migration 0010).

A workflow's tasks are ordinary ``async_task`` rows carrying ``workflow_id``, ``workflow_key``
and ``pending_parents``; an edge says a child waits for a parent. The workflow row keeps counts
of its tasks that ended, so a finishing task updates one row instead of counting the workflow;
that row's lock also serialises the decision that the workflow has ended (callbacks once).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..tasks.models import BigId, JsonDoc, UTCDateTime, utcnow


class WorkflowStatus(enum.StrEnum):
    """Where a workflow stands."""

    RUNNING = "RUNNING"  # something can still run
    SUCCEEDED = "SUCCEEDED"  # every task succeeded
    FAILED = "FAILED"  # a task failed and nothing else can run (or everything ended)
    CANCELLED = "CANCELLED"  # cancelled by an operator, no task failed


class FailurePolicy(enum.StrEnum):
    """What a failed task does to the tasks downstream of it."""

    CANCEL_DEPENDENTS = "cancel_dependents"  # they end CANCELLED
    WAIT = "wait"  # they keep waiting; an operator's retry of the failed task resumes them


CALLBACK_KINDS = ("on_success", "on_failure", "on_finish")
CALLBACK_KEY_PREFIX = "@"  # a callback task's key is "@on_success" etc.; task keys may not start so


class Workflow(db.Model):  # type: ignore[name-defined,misc]
    """A set of tasks submitted together, their failure policy, callbacks and ended counts."""

    __tablename__ = "workflow"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default=WorkflowStatus.RUNNING.value)
    on_failure: Mapped[str] = mapped_column(String(32), nullable=False,
                                            default=FailurePolicy.CANCEL_DEPENDENTS.value)
    # Callback task specs by kind ({"on_success": {"task_type", "payload", "priority"}, …}).
    callbacks: Mapped[dict[str, Any]] = mapped_column(JsonDoc, nullable=False, default=dict)
    task_count: Mapped[int] = mapped_column(Integer, nullable=False)
    succeeded: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    cancelled: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    principal: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    __table_args__ = (
        Index("ix_workflow_status_id", "status", "id"),
        Index("ix_workflow_name_id", "name", "id"),
    )

    @property
    def ended(self) -> int:
        """How many of its tasks ended (succeeded, failed or cancelled)."""
        return self.succeeded + self.failed + self.cancelled


class WorkflowEdge(db.Model):  # type: ignore[name-defined,misc]
    """``child_id`` starts only after ``parent_id`` succeeded."""

    __tablename__ = "workflow_edge"

    parent_id: Mapped[int] = mapped_column(BigId, ForeignKey("async_task.id", ondelete="CASCADE"),
                                           primary_key=True)
    child_id: Mapped[int] = mapped_column(BigId, ForeignKey("async_task.id", ondelete="CASCADE"),
                                          primary_key=True)

    __table_args__ = (Index("ix_workflow_edge_child_id", "child_id"),)
