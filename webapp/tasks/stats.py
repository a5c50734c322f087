"""Read-only queries for dashboards: throughput, queue age, workers, per-type counts, audit.

Nothing here changes a row. The console calls these; they know nothing of HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Integer, cast, extract, func, literal, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ..extensions import db
from .models import (
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    AsyncTask,
    AuditEntry,
    Notification,
    TaskStatus,
    UTCDateTime,
    Worker,
    utcnow,
)

MISSED_HEARTBEATS = 3  # the same rule as the recovery sweep: three missed beats mean dead


@dataclass(frozen=True)
class MinuteBucket:
    """Tasks that reached SUCCESS / FAILURE during one minute (``start`` is the minute's start)."""

    start: datetime
    succeeded: int
    failed: int


@dataclass(frozen=True)
class Throughput:
    """Per-minute outcomes over a window, oldest minute first (the last one is still running)."""

    buckets: list[MinuteBucket]

    @property
    def succeeded(self) -> int:
        return sum(b.succeeded for b in self.buckets)

    @property
    def failed(self) -> int:
        return sum(b.failed for b in self.buckets)

    @property
    def failure_rate(self) -> float | None:
        total = self.succeeded + self.failed
        return None if total == 0 else self.failed / total


@dataclass(frozen=True)
class WorkerSummary:
    """Workers whose heartbeat is fresh, with their threads and how many are busy."""

    online: int
    threads: int
    busy: int


@dataclass(frozen=True)
class Overview:
    """Everything the overview page shows, read at one moment."""

    counts: dict[str, int]
    throughput: Throughput
    oldest_due_age: timedelta | None
    due_now: int
    workers: WorkerSummary
    at: datetime


def _session() -> Session:
    return db.session()


def status_counts(task_type: str | None = None) -> dict[str, int]:
    """Tasks per status (every status present, zeros included)."""
    query = select(AsyncTask.status, func.count()).group_by(AsyncTask.status)
    if task_type is not None:
        query = query.where(AsyncTask.task_type == task_type)
    counts = {status.value: 0 for status in TaskStatus}
    counts.update({status: int(count) for status, count in _session().execute(query)})
    return counts


def counts_by_type() -> dict[str, dict[str, int]]:
    """Task type -> status -> count, for every type that has rows."""
    rows = _session().execute(
        select(AsyncTask.task_type, AsyncTask.status, func.count())
        .group_by(AsyncTask.task_type, AsyncTask.status))
    result: dict[str, dict[str, int]] = {}
    for task_type, status, count in rows:
        result.setdefault(task_type, {s.value: 0 for s in TaskStatus})[status] = int(count)
    return result


def _minute_index(column: Any, start: datetime, dialect: str) -> ColumnElement[int]:
    """Whole minutes from ``start`` to ``column``, computed in the database."""
    start_value = literal(start, UTCDateTime())
    if dialect == "postgresql":
        seconds = extract("epoch", column - start_value)
        return cast(func.floor(seconds / 60), Integer)
    # SQLite stores naive UTC text. Whole seconds (not julianday's float days, which round a
    # time on the minute to 59.999...) divided as integers: ``start`` is on a minute boundary.
    seconds_since = (cast(func.strftime("%s", column), Integer)
                     - cast(func.strftime("%s", start_value), Integer))
    return cast(seconds_since // 60, Integer)


def throughput(minutes: int = 60, now: datetime | None = None) -> Throughput:
    """Tasks finished (SUCCESS) and failed (FAILURE) per minute over the last ``minutes``.

    Counted from ``finished_at`` (indexed), so a task counts once, under its current outcome.
    """
    now = now or utcnow()
    current_minute = now.replace(second=0, microsecond=0)
    start = current_minute - timedelta(minutes=minutes - 1)
    session = _session()
    dialect = session.get_bind().dialect.name
    minute = _minute_index(AsyncTask.finished_at, start, dialect).label("minute")
    rows = session.execute(
        select(minute, AsyncTask.status, func.count())
        .where(AsyncTask.finished_at >= start,
               AsyncTask.status.in_([TaskStatus.SUCCESS.value, TaskStatus.FAILURE.value]))
        .group_by(minute, AsyncTask.status))
    succeeded = [0] * minutes
    failed = [0] * minutes
    for index, status, count in rows:
        if index is None or not 0 <= int(index) < minutes:
            continue  # clock skew between writers: a finish stamped "in the future"
        target = succeeded if status == TaskStatus.SUCCESS.value else failed
        target[int(index)] += int(count)
    buckets = [MinuteBucket(start + timedelta(minutes=i), succeeded[i], failed[i]) for i in range(minutes)]
    return Throughput(buckets)


def oldest_due(now: datetime | None = None) -> tuple[timedelta | None, int]:
    """How long the oldest due waiting task has waited, and how many waiting tasks are due."""
    now = now or utcnow()
    row = _session().execute(
        select(func.min(AsyncTask.next_run_at), func.count())
        .where(AsyncTask.status.in_(WAITING_STATUSES), AsyncTask.next_run_at <= now)
    ).one()
    oldest, due = row
    if oldest is None:
        return None, int(due or 0)
    if isinstance(oldest, str):  # SQLite aggregates can come back as text
        oldest = datetime.fromisoformat(oldest)
    if oldest.tzinfo is None:
        oldest = oldest.replace(tzinfo=now.tzinfo)
    return max(timedelta(0), now - oldest), int(due or 0)


def is_online(worker: Worker, now: datetime | None = None) -> bool:
    """RUNNING and heartbeating within the last three intervals."""
    now = now or utcnow()
    stale_after = timedelta(seconds=MISSED_HEARTBEATS * worker.heartbeat_interval)
    return worker.status == "RUNNING" and now - worker.last_heartbeat_at <= stale_after


def workers(include_stopped: bool = True, recent: timedelta = timedelta(hours=1)) -> list[Worker]:
    """Running workers, plus stopped or dead ones seen within ``recent``, newest first."""
    query = select(Worker).order_by(Worker.started_at.desc())
    if include_stopped:
        query = query.where((Worker.status == "RUNNING") | (Worker.last_heartbeat_at >= utcnow() - recent))
    else:
        query = query.where(Worker.status == "RUNNING")
    return list(_session().scalars(query))


def worker_summary(now: datetime | None = None) -> WorkerSummary:
    """How many workers are online, their threads, and busy threads."""
    now = now or utcnow()
    online = [w for w in workers(include_stopped=False) if is_online(w, now)]
    return WorkerSummary(len(online), sum(w.concurrency for w in online), sum(w.busy for w in online))


def overview(minutes: int = 60) -> Overview:
    """Counts, throughput, queue age and workers for the overview page."""
    now = utcnow()
    age, due = oldest_due(now)
    return Overview(counts=status_counts(), throughput=throughput(minutes, now), oldest_due_age=age,
                    due_now=due, workers=worker_summary(now), at=now)


def notifications_for(task_id: int) -> list[Notification]:
    """Notification outbox rows of one task, oldest first."""
    return list(_session().scalars(
        select(Notification).where(Notification.task_id == task_id).order_by(Notification.id)))


def audit_for_task(task_id: int) -> list[AuditEntry]:
    """Audit entries that target one task, oldest first."""
    return list(_session().scalars(
        select(AuditEntry).where(AuditEntry.target_type == "task", AuditEntry.target_id == str(task_id))
        .order_by(AuditEntry.id)))


@dataclass(frozen=True)
class AuditPage:
    """One keyset page of audit entries, newest first."""

    items: list[AuditEntry]
    next_cursor: int | None


def audit_page(limit: int = 100, cursor: int | None = None, actor: str | None = None,
               action: str | None = None) -> AuditPage:
    """Audit entries newest first, below ``cursor``, optionally of one actor / action prefix."""
    query = select(AuditEntry)
    if cursor is not None:
        query = query.where(AuditEntry.id < cursor)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action.startswith(action, autoescape=True))
    rows = list(_session().scalars(query.order_by(AuditEntry.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(rows, rows[-1].id if more and rows else None)


def is_terminal(status: str) -> bool:
    """SUCCESS, FAILURE and CANCELLED only change by an operator's hand, never by themselves."""
    return status in TERMINAL_STATUSES
