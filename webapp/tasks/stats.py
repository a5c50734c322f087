"""Read-only queries for dashboards: throughput, queue age, workers, per-type counts, audit.

Nothing here changes a row. The console calls these; they know nothing of HTTP.

Counting at scale: a page must not count every row of a table with millions of them. The
``*_counts_at_scale`` functions count each group exactly up to ``EXACT_COUNT_LIMIT`` rows (one
index range read, never longer than the limit) and estimate only the groups beyond it, from a
fixed sample of the table's pages (``TABLESAMPLE SYSTEM ... REPEATABLE``): fresh at every call,
unlike the planner's statistics that change only on ANALYZE, and always the same pages, so the
figure does not jitter between polls. The groups estimated are named in ``Counts.estimated`` and
the console labels them "≈". SQLite (embedded scale) counts everything exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, bindparam, func, literal, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from ..extensions import db
from . import queries
from .dbsession import dialect_of
from .dialect_postgres import TASK_TYPES_PRESENT_SQL, exact_counts_sql, sampled_counts_sql
from .models import (
    TERMINAL_STATUSES,
    WAITING_STATUSES,
    AsyncTask,
    AuditEntry,
    Notification,
    NotificationStatus,
    TaskStatus,
    Worker,
    utcnow,
)
from .queries import ALL_TYPES, MISSED_HEARTBEATS, Page, keyset_page
from .registry import ProcessorRegistry

# Groups up to this many rows are counted exactly; larger ones are estimated (and labelled so).
EXACT_COUNT_LIMIT = 1_000
# Pages of the table read for an estimate: a few milliseconds whatever the table's size.
SAMPLE_PAGES = 400
# A fixed seed: every call samples the same pages, so an estimate moves only when rows change.
SAMPLE_SEED = 20261128


class Counts(dict[str, int]):
    """Counts by status, every status present; ``estimated`` names those that are estimates.

    Exact counts are exact at the moment of reading; an estimate is the group's share of a page
    sample scaled to the table, never below ``EXACT_COUNT_LIMIT + 1`` (the exact count got there).
    """

    def __init__(self, values: Mapping[str, int], estimated: Iterable[str] = ()) -> None:
        super().__init__(values)
        self.estimated = frozenset(estimated)

    @property
    def any_estimated(self) -> bool:
        """Whether any count is an estimate."""
        return bool(self.estimated)


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
    due_now_more: bool = False  # more than ``due_now`` are due: counting stopped at the limit


def _session() -> Session:
    return db.session()


def status_counts(task_type: str | None = None) -> dict[str, int]:
    """Tasks per status (every status present, zeros included)."""
    return queries.status_counts(_session(), task_type)


def _counts_at_scale_possible(session: Session) -> bool:
    """Whether this database can count at scale (index range reads, page samples): PostgreSQL."""
    return dialect_of(session).samples_counts


def _exact_up_to_limit(session: Session, table: str, columns: Sequence[str],
                       groups: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], int]:
    """Each group's row count, exact up to ``EXACT_COUNT_LIMIT`` (a larger one reads limit + 1).

    One statement; per group an index range read that stops at the limit (indexes on
    ``(status, id)`` and ``(task_type, status, id)`` serve it).
    """
    if not groups:
        return {}
    statement = exact_counts_sql(table, columns)
    params: dict[str, Any] = {"limit": EXACT_COUNT_LIMIT + 1}
    for i in range(len(columns)):
        params[f"g{i}"] = [group[i] for group in groups]
    return {tuple(row[:-1]): int(row[-1]) for row in session.execute(statement, params)}


def _sampled_estimates(session: Session, table: str, columns: Sequence[str]) -> dict[tuple[str, ...], int]:
    """Rows per group estimated from about ``SAMPLE_PAGES`` pages of ``table`` (PostgreSQL).

    A group's share of the sampled rows times the table's rows now: the rows per page of the
    last VACUUM/ANALYZE times the pages the table has now, as the planner reckons it (or, for a
    table never analysed, the sampled rows scaled by the sampled fraction).
    """
    statement = sampled_counts_sql(table, columns)
    rows = [tuple(row) for row in session.execute(
        statement, {"pages": SAMPLE_PAGES, "table": table, "seed": SAMPLE_SEED})]
    if not rows:
        return {}
    reltuples, relpages, percent_read, pages_now = rows[0][-4:]
    sampled = sum(int(row[len(columns)]) for row in rows)
    if reltuples is not None and reltuples >= 0 and relpages:
        total = float(reltuples) / int(relpages) * int(pages_now)
    else:
        total = sampled * 100 / float(percent_read)
    return {tuple(row[:len(columns)]): round(int(row[len(columns)]) / sampled * total) for row in rows}


def _counts_at_scale(session: Session, table: str, columns: Sequence[str],
                     groups: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], tuple[int, bool]]:
    """group -> (count, is_estimate): exact up to the limit, estimated from a sample beyond."""
    exact = _exact_up_to_limit(session, table, columns, groups)
    over = [group for group, count in exact.items() if count > EXACT_COUNT_LIMIT]
    estimates = _sampled_estimates(session, table, columns) if over else {}
    result = {group: (count, False) for group, count in exact.items()}
    for group in over:
        result[group] = (max(EXACT_COUNT_LIMIT + 1, estimates.get(group, 0)), True)
    return result


def status_counts_at_scale() -> Counts:
    """Tasks per status for the console: exact when small, sample estimates beyond the limit."""
    session = _session()
    if not _counts_at_scale_possible(session):
        return Counts(status_counts())
    found = _counts_at_scale(session, "async_task", ["status"], [(s.value,) for s in TaskStatus])
    return Counts({group[0]: count for group, (count, _) in found.items()},
                  [group[0] for group, (_, estimated) in found.items() if estimated])


def task_types_present(session: Session | None = None) -> list[str]:
    """Every task type that has rows, sorted; one index probe per type (a loose index scan)."""
    session = session or _session()
    if not _counts_at_scale_possible(session):
        return list(session.scalars(select(AsyncTask.task_type).distinct().order_by(AsyncTask.task_type)))
    return [row[0] for row in session.execute(TASK_TYPES_PRESENT_SQL)]


def type_status_counts_at_scale(extra_types: Iterable[str] = (),
                                session: Session | None = None) -> dict[str, Counts]:
    """Task type -> counts per status, for every type with rows (and ``extra_types``).

    Like ``status_counts_at_scale``: each (type, status) exact up to the limit, else estimated.
    """
    session = session or _session()
    if not _counts_at_scale_possible(session):
        exact = counts_by_type(session)
        for task_type in extra_types:
            exact.setdefault(task_type, {s.value: 0 for s in TaskStatus})
        return {task_type: Counts(values) for task_type, values in exact.items()}
    types = sorted(set(task_types_present(session)) | set(extra_types))
    groups = [(task_type, status.value) for task_type in types for status in TaskStatus]
    found = _counts_at_scale(session, "async_task", ["task_type", "status"], groups)
    result: dict[str, Counts] = {}
    for task_type in types:
        values = {status.value: found[(task_type, status.value)][0] for status in TaskStatus}
        estimated = [status.value for status in TaskStatus if found[(task_type, status.value)][1]]
        result[task_type] = Counts(values, estimated)
    return result


def notification_status_counts_at_scale() -> Counts:
    """Notifications per status: exact when small, sample estimates beyond the limit."""
    session = _session()
    statuses = [status.value for status in NotificationStatus]
    if not _counts_at_scale_possible(session):
        counts = dict.fromkeys(statuses, 0)
        counts.update({status: int(count) for status, count in session.execute(
            select(Notification.status, func.count()).group_by(Notification.status))})
        return Counts(counts)
    found = _counts_at_scale(session, "notification", ["status"], [(status,) for status in statuses])
    return Counts({group[0]: count for group, (count, _) in found.items()},
                  [group[0] for group, (_, estimated) in found.items() if estimated])


def counts_by_type(session: Session | None = None) -> dict[str, dict[str, int]]:
    """Task type -> status -> count, for every type that has rows (exact: reads every row)."""
    return queries.counts_by_type(session or _session())


def throughput(minutes: int = 60, now: datetime | None = None) -> Throughput:
    """Tasks finished (SUCCESS) and failed (FAILURE) per minute over the last ``minutes``.

    Counted from ``finished_at`` (indexed), so a task counts once, under its current outcome.
    """
    now = now or utcnow()
    current_minute = now.replace(second=0, microsecond=0)
    start = current_minute - timedelta(minutes=minutes - 1)
    session = _session()
    minute = dialect_of(session).whole_minutes_since(AsyncTask.finished_at, start).label("minute")
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


def _waiting() -> ColumnElement[bool]:
    # Inline literals, not parameters: the planner then matches the partial indexes over
    # waiting tasks (their predicate is this same IN list) whatever plan caching does.
    return AsyncTask.status.in_(bindparam("waiting", list(WAITING_STATUSES), expanding=True,
                                          literal_execute=True))


def oldest_due(now: datetime | None = None) -> tuple[timedelta | None, int]:
    """How long the oldest due waiting task has waited, and how many waiting tasks are due.

    The count stops at ``EXACT_COUNT_LIMIT + 1`` (more than the limit are due); both reads
    walk the waiting tasks' ``next_run_at`` index from its start, so a backlog costs nothing.
    """
    now = now or utcnow()
    session = _session()
    oldest = session.scalar(select(func.min(AsyncTask.next_run_at)).where(_waiting()))
    due_rows = (select(literal(1)).select_from(AsyncTask).where(_waiting(), AsyncTask.next_run_at <= now)
                .limit(EXACT_COUNT_LIMIT + 1).subquery())
    due = int(session.scalar(select(func.count()).select_from(due_rows)) or 0)
    if oldest is None or due == 0:
        return None, due
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
    return queries.workers(_session(), include_stopped, recent)


def worker_summary(now: datetime | None = None) -> WorkerSummary:
    """How many workers are online, their threads, and busy threads."""
    now = now or utcnow()
    online = [w for w in workers(include_stopped=False) if is_online(w, now)]
    return WorkerSummary(len(online), sum(w.concurrency for w in online), sum(w.busy for w in online))


def overview(minutes: int = 60) -> Overview:
    """Counts, throughput, queue age and workers for the overview page."""
    now = utcnow()
    age, due = oldest_due(now)
    return Overview(counts=status_counts_at_scale(), throughput=throughput(minutes, now),
                    oldest_due_age=age, due_now=min(due, EXACT_COUNT_LIMIT), workers=worker_summary(now),
                    at=now, due_now_more=due > EXACT_COUNT_LIMIT)


def notifications_for(task_id: int) -> list[Notification]:
    """Notification outbox rows of one task, oldest first."""
    return list(_session().scalars(
        select(Notification).where(Notification.task_id == task_id).order_by(Notification.id)))


def audit_for_task(task_id: int) -> list[AuditEntry]:
    """Audit entries that target one task, oldest first."""
    return list(_session().scalars(
        select(AuditEntry).where(AuditEntry.target_type == "task", AuditEntry.target_id == str(task_id))
        .order_by(AuditEntry.id)))


AuditPage = Page[AuditEntry]


def audit_query(actor: str | None = None, action: str | None = None) -> Select[Any]:
    """``SELECT`` of the audit entries of one actor / action prefix (unordered; the page and export share it)."""
    query = select(AuditEntry)
    if actor:
        query = query.where(AuditEntry.actor == actor)
    if action:
        query = query.where(AuditEntry.action.startswith(action, autoescape=True))
    return query


def audit_page(limit: int = 100, cursor: int | None = None, actor: str | None = None,
               action: str | None = None) -> AuditPage:
    """Audit entries newest first, below ``cursor``, optionally of one actor / action prefix."""
    return keyset_page(_session(), audit_query(actor, action), AuditEntry.id, limit, cursor)


def is_terminal(status: str) -> bool:
    """SUCCESS, FAILURE and CANCELLED only change by an operator's hand, never by themselves."""
    return status in TERMINAL_STATUSES


def task_type_overview(registry: ProcessorRegistry, session: Session | None = None) -> list[dict[str, Any]]:
    """Every registered task type with its retry policy, pause state and counts per status.

    Counts are exact up to ``EXACT_COUNT_LIMIT`` and estimated beyond (PostgreSQL), so the call
    stays fast on a table of millions; ``counts_are_estimates`` says which it is.
    """
    session = session or _session()
    counts = type_status_counts_at_scale(session=session)
    paused = set(queries.paused_task_types(session))
    overview = []
    for processor in registry:
        task_type = processor.get_task_type()
        config = processor.get_retry_config()
        type_counts = counts.get(task_type)
        per_status = {status.value: type_counts.get(status.value, 0) if type_counts else 0
                      for status in TaskStatus}
        overview.append({
            "task_type": task_type,
            "paused": task_type in paused or ALL_TYPES in paused,
            "retry": {"max_retry_count": config.max_retry_count, "strategy": config.strategy.value,
                      "base_interval": config.base_interval, "max_delay": config.max_delay,
                      "jitter": config.jitter},
            "counts": per_status,
            "counts_are_estimates": bool(type_counts is not None and type_counts.estimated),
        })
    return overview
