"""Reads of workflows for the API, the console and the CLI: lists, one workflow's tasks and edges.

Nothing here writes. A workflow's progress comes from its ended counts (one row), never from
counting its tasks; a workflow's page reads its tasks and edges once.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..tasks.errors import ValidationError
from ..tasks.models import AsyncTask, TaskStatus
from ..tasks.queries import Page, keyset_page
from ..tasks.validation import validate_limit, validate_task_id
from .errors import WorkflowNotFound
from .models import CALLBACK_KEY_PREFIX, Workflow, WorkflowEdge, WorkflowStatus


@dataclass(frozen=True)
class WorkflowTask:
    """One task of a workflow as its page and the API show it."""

    id: int
    key: str
    task_type: str
    status: str
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    result: Any


@dataclass(frozen=True)
class WorkflowDetail:
    """A workflow with its tasks (callbacks apart), its edges (parent id, child id) and counts by status."""

    workflow: Workflow
    tasks: list[WorkflowTask]
    callbacks: list[WorkflowTask]
    edges: list[tuple[int, int]]
    counts: dict[str, int]


def validate_workflow_status(value: Any) -> str:
    """A ``WorkflowStatus`` value; anything else names the statuses there are."""
    try:
        return WorkflowStatus(value).value
    except ValueError:
        allowed = ", ".join(s.value for s in WorkflowStatus)
        raise ValidationError(f"unknown status {value!r}; expected one of {allowed}", field="status") from None


def get_workflow(session: Session, workflow_id: Any) -> Workflow:
    """The workflow with that id; ``WorkflowNotFound`` otherwise."""
    workflow_id = validate_task_id(workflow_id, "workflow_id")
    workflow = session.get(Workflow, workflow_id)
    if workflow is None:
        raise WorkflowNotFound(f"workflow {workflow_id} does not exist")
    return workflow


def list_workflows(session: Session, status: str | None = None, name: str | None = None, limit: int = 50,
                   cursor: int | None = None, principal: str | None = None) -> Page[Workflow]:
    """A keyset page of workflows, newest first, optionally of one status and/or exactly one name."""
    query = select(Workflow)
    if status:
        query = query.where(Workflow.status == validate_workflow_status(status))
    if name:
        query = query.where(Workflow.name == name)
    if principal is not None:
        query = query.where(Workflow.principal == principal)
    return keyset_page(session, query, Workflow.id, validate_limit(limit), cursor)


def workflow_detail(session: Session, workflow_id: Any) -> WorkflowDetail:
    """The workflow, its tasks and callbacks (by id), its edges and its tasks' counts by status."""
    workflow = get_workflow(session, workflow_id)
    rows = session.execute(
        select(AsyncTask.id, AsyncTask.workflow_key, AsyncTask.task_type, AsyncTask.status, AsyncTask.attempts,
               AsyncTask.started_at, AsyncTask.finished_at, AsyncTask.result)
        .where(AsyncTask.workflow_id == workflow.id).order_by(AsyncTask.id)).all()
    everything = [WorkflowTask(r.id, r.workflow_key or "", r.task_type, r.status, r.attempts, r.started_at,
                               r.finished_at, r.result) for r in rows]
    tasks = [t for t in everything if not t.key.startswith(CALLBACK_KEY_PREFIX)]
    callbacks = [t for t in everything if t.key.startswith(CALLBACK_KEY_PREFIX)]
    child = AsyncTask.__table__.alias("child")
    edges = [(e.parent_id, e.child_id) for e in session.execute(
        select(WorkflowEdge.parent_id, WorkflowEdge.child_id)
        .join(child, child.c.id == WorkflowEdge.child_id).where(child.c.workflow_id == workflow.id))]
    counts = Counter(t.status for t in tasks)
    return WorkflowDetail(workflow, tasks, callbacks, edges,
                          {s.value: counts.get(s.value, 0) for s in TaskStatus})


@dataclass(frozen=True)
class TaskRelations:
    """A task's workflow, and the tasks it waits for and that wait for it (id, key, status)."""

    workflow: Workflow | None
    key: str | None
    parents: list[tuple[int, str, str]]
    children: list[tuple[int, str, str]]


def task_relations(session: Session, task: AsyncTask) -> TaskRelations:
    """Where a task sits in its workflow (nothing for a task outside one, at no cost)."""
    if task.workflow_id is None:
        return TaskRelations(None, None, [], [])
    other = AsyncTask.__table__.alias("other")
    parents = session.execute(
        select(other.c.id, other.c.workflow_key, other.c.status)
        .join(WorkflowEdge, WorkflowEdge.parent_id == other.c.id)
        .where(WorkflowEdge.child_id == task.id).order_by(other.c.id)).all()
    children = session.execute(
        select(other.c.id, other.c.workflow_key, other.c.status)
        .join(WorkflowEdge, WorkflowEdge.child_id == other.c.id)
        .where(WorkflowEdge.parent_id == task.id).order_by(other.c.id)).all()
    return TaskRelations(session.get(Workflow, task.workflow_id), task.workflow_key,
                         [tuple(row) for row in parents], [tuple(row) for row in children])  # type: ignore[misc]
