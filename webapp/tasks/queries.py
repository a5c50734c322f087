"""Reads of tasks, their timelines and workers: filters, keyset pages, counts. Nothing here writes.

The API, the console, the CLI and the dashboards (``stats``) share these, so a filter means the
same thing everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, Text, cast, func, or_, select
from sqlalchemy.orm import Session, defer, with_expression
from sqlalchemy.sql.elements import ColumnElement

from .errors import TaskNotFound, ValidationError
from .models import AsyncTask, TaskEvent, TaskStatus, TaskTypeState, Worker, utcnow
from .validation import validate_limit, validate_status, validate_task_id

Row = TypeVar("Row")

ALL_TYPES = "*"  # pausing this pauses every task type
MAX_SEARCH_LENGTH = 200
MISSED_HEARTBEATS = 3  # a worker that missed this many heartbeats is dead (recovery, dashboards)


@dataclass(frozen=True)
class TaskFilter:
    """Filters shared by the API, the console and the CLI (all optional)."""

    task_type: str | None = None
    statuses: tuple[str, ...] = ()
    created_by: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    priority_min: int | None = None
    priority_max: int | None = None
    task_id: int | None = None
    search: str | None = None  # id, or text found in the error or the payload
    principal: str | None = None  # only tasks this principal submitted (an API token's reach)


@dataclass(frozen=True)
class Page(Generic[Row]):
    """One keyset page, newest first; ``next_cursor`` is the id to continue below (None: the last)."""

    items: list[Row]
    next_cursor: int | None


TaskPage = Page[AsyncTask]


def keyset_page(session: Session, query: Select[Any], id_column: Any, limit: int,
                cursor: int | None) -> Page[Any]:
    """The rows of ``query`` with ids below ``cursor``, newest first, at most ``limit`` of them.

    One extra row is read to know whether another page follows, so the last page says so
    without a count. Tasks, notifications and the audit log page this way.
    """
    if cursor is not None:
        query = query.where(id_column < cursor)
    rows = list(session.scalars(query.order_by(id_column.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(rows, rows[-1].id if more and rows else None)


def filter_clauses(filters: TaskFilter) -> list[ColumnElement[bool]]:
    """The WHERE clauses of ``filters`` (bad values raise ``ValidationError`` naming the field)."""
    clauses: list[ColumnElement[bool]] = []
    if filters.task_type:
        clauses.append(AsyncTask.task_type == filters.task_type)
    if filters.statuses:
        clauses.append(AsyncTask.status.in_([validate_status(s) for s in filters.statuses]))
    if filters.created_by:
        clauses.append(AsyncTask.created_by == filters.created_by)
    if filters.created_after is not None:
        clauses.append(AsyncTask.created_at >= filters.created_after)
    if filters.created_before is not None:
        clauses.append(AsyncTask.created_at < filters.created_before)
    if filters.priority_min is not None:
        clauses.append(AsyncTask.priority >= filters.priority_min)
    if filters.priority_max is not None:
        clauses.append(AsyncTask.priority <= filters.priority_max)
    if filters.task_id is not None:
        clauses.append(AsyncTask.id == filters.task_id)
    if filters.search:
        clauses.append(search_clause(filters.search))
    if filters.principal is not None:
        clauses.append(AsyncTask.principal == filters.principal)
    return clauses


def search_clause(search: str) -> ColumnElement[bool]:
    """Text in the error or the payload (trigram-indexed on PostgreSQL), or the task's id."""
    if len(search) > MAX_SEARCH_LENGTH:
        raise ValidationError(f"search must be at most {MAX_SEARCH_LENGTH} characters", field="search")
    pattern = "%" + search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    payload_text = cast(AsyncTask.payload, Text)
    matches = or_(AsyncTask.error.ilike(pattern, escape="\\"), payload_text.ilike(pattern, escape="\\"))
    if search.strip().isdecimal() and len(search.strip()) < 19:
        matches = or_(matches, AsyncTask.id == int(search.strip()))
    return matches


def filtered_query(filters: TaskFilter) -> Select[Any]:
    """``SELECT`` of the tasks matching ``filters`` (unordered)."""
    return select(AsyncTask).where(*filter_clauses(filters))


def get_task(session: Session, task_id: Any) -> AsyncTask | None:
    """The task with that id, or ``None``."""
    return session.get(AsyncTask, validate_task_id(task_id))


def require_task(session: Session, task_id: Any) -> AsyncTask:
    """The task with that id; ``TaskNotFound`` otherwise."""
    task = get_task(session, task_id)
    if task is None:
        raise TaskNotFound(f"task {task_id} does not exist")
    return task


def list_tasks(session: Session, filters: TaskFilter | None = None, limit: int = 50,
               cursor: int | None = None) -> TaskPage:
    """A keyset page of tasks matching ``filters``, newest first, continuing below ``cursor``."""
    validate_limit(limit)
    below = validate_task_id(cursor, "cursor") if cursor is not None else None
    return keyset_page(session, filtered_query(filters or TaskFilter()), AsyncTask.id, limit, below)


# Characters of payload and result (JSON text) and of the error that a list row carries.
LIST_PREVIEW_CHARS = 256
LIST_ERROR_CHARS = 1000


def list_task_previews(session: Session, filters: TaskFilter | None = None, limit: int = 50,
                       cursor: int | None = None, preview_chars: int = LIST_PREVIEW_CHARS,
                       error_chars: int = LIST_ERROR_CHARS) -> TaskPage:
    """``list_tasks`` for lists: payload, result and error stay in the database.

    Each task's ``payload_head``/``result_head`` hold the first ``preview_chars`` + 1 characters
    of their JSON text and ``error_head`` the first ``error_chars`` + 1 of the error (one more
    than shown, so a reader can tell a cut value from a whole one), cut by the database. The
    full columns are deferred with ``raiseload``: touching one on these objects raises instead
    of quietly loading it row by row.
    """
    validate_limit(limit)
    below = validate_task_id(cursor, "cursor") if cursor is not None else None
    query = filtered_query(filters or TaskFilter()).options(
        defer(AsyncTask.payload, raiseload=True), defer(AsyncTask.result, raiseload=True),
        defer(AsyncTask.error, raiseload=True),
        with_expression(AsyncTask.payload_head, func.substr(cast(AsyncTask.payload, Text), 1, preview_chars + 1)),
        with_expression(AsyncTask.result_head, func.substr(cast(AsyncTask.result, Text), 1, preview_chars + 1)),
        with_expression(AsyncTask.error_head, func.substr(AsyncTask.error, 1, error_chars + 1)),
    ).execution_options(populate_existing=True)  # the heads also for tasks the session holds
    return keyset_page(session, query, AsyncTask.id, limit, below)


def events_for(session: Session, task_id: int) -> list[TaskEvent]:
    """A task's timeline, oldest first."""
    return list(session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id).order_by(TaskEvent.id)))


def paused_task_types(session: Session) -> list[str]:
    """Task types (or ``ALL_TYPES``) whose claims are paused."""
    return list(session.scalars(select(TaskTypeState.task_type).where(TaskTypeState.paused)))


def status_counts(session: Session, task_type: str | None = None) -> dict[str, int]:
    """Tasks per status (every status present, zeros included); exact, reads every row."""
    query = select(AsyncTask.status, func.count()).group_by(AsyncTask.status)
    if task_type is not None:
        query = query.where(AsyncTask.task_type == task_type)
    counts = {status.value: 0 for status in TaskStatus}
    counts.update({status: int(count) for status, count in session.execute(query)})
    return counts


def counts_by_type(session: Session, principal: str | None = None) -> dict[str, dict[str, int]]:
    """Task type -> status -> count, for every type that has rows (exact: reads every row, or with
    ``principal`` only that principal's rows, through ``ix_async_task_principal_id``)."""
    query = select(AsyncTask.task_type, AsyncTask.status, func.count())
    if principal is not None:
        query = query.where(AsyncTask.principal == principal)
    rows = session.execute(query.group_by(AsyncTask.task_type, AsyncTask.status))
    result: dict[str, dict[str, int]] = {}
    for task_type, status, count in rows:
        result.setdefault(task_type, {s.value: 0 for s in TaskStatus})[status] = int(count)
    return result


def workers(session: Session, include_stopped: bool = False, recent: timedelta | None = None) -> list[Worker]:
    """Running workers, newest first; with ``include_stopped`` also stopped or dead ones.

    ``recent`` limits the stopped or dead ones to those heard from within that time.
    """
    query = select(Worker).order_by(Worker.started_at.desc())
    if not include_stopped:
        query = query.where(Worker.status == "RUNNING")
    elif recent is not None:
        query = query.where((Worker.status == "RUNNING") | (Worker.last_heartbeat_at >= utcnow() - recent))
    return list(session.scalars(query))
