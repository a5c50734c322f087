"""Edit-and-retry lineage: which task a resubmitted task came from, and what became of an original.

``AsyncTaskService.resubmit_task`` creates the new task with ``parent_id`` pointing at the
original and records a RESUBMITTED event on the original; this module only reads those links.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import select

from ..extensions import db
from .models import AsyncTask, TaskEvent, TaskEventKind

MAX_LINKS = 20


@dataclass(frozen=True)
class LinkedTask:
    """Another task of the same lineage: its id and current status."""

    id: int
    status: str


@dataclass(frozen=True)
class Lineage:
    """The task this one was resubmitted from (if any) and the tasks it was resubmitted as."""

    parent: LinkedTask | None
    resubmissions: list[LinkedTask]


def lineage_of(task: AsyncTask, events: Sequence[TaskEvent] | None = None) -> Lineage:
    """Both links of ``task``; ``events`` (its timeline, when already loaded) saves a query.

    The children are looked up only when the task's timeline records a resubmission, so an
    ordinary task costs no query at all; a resubmission always gets a higher id than its
    original, which bounds the scan to newer rows.
    """
    parent = None
    if task.parent_id is not None:
        status = db.session.scalar(select(AsyncTask.status).where(AsyncTask.id == task.parent_id))
        parent = LinkedTask(task.parent_id, status) if status is not None else None
    if events is None:
        resubmitted = db.session.scalar(
            select(TaskEvent.id).where(TaskEvent.task_id == task.id,
                                       TaskEvent.kind == TaskEventKind.RESUBMITTED.value).limit(1)
        ) is not None
    else:
        resubmitted = any(event.kind == TaskEventKind.RESUBMITTED.value for event in events)
    return Lineage(parent, resubmissions_of(task.id) if resubmitted else [])


def resubmissions_of(task_id: int, limit: int = MAX_LINKS) -> list[LinkedTask]:
    """The tasks created from ``task_id`` by edit and retry, oldest first."""
    rows = db.session.execute(
        select(AsyncTask.id, AsyncTask.status)
        .where(AsyncTask.parent_id == task_id, AsyncTask.id > task_id)
        .order_by(AsyncTask.id)
        .limit(limit)
    )
    return [LinkedTask(row.id, row.status) for row in rows]
