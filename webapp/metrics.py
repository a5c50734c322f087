"""Prometheus metrics, read from the database so that every process reports the same numbers.

Under gunicorn several processes serve ``/metrics`` and the tasks run in yet other processes
(``flask tasks worker``, possibly on other machines), so per-process counters would each see a
slice. Every figure here is instead derived from the rows all processes share, in five grouped
read-only queries, and any web process answers a scrape with the cluster's numbers. Scrape one
target (or aggregate with ``max``, not ``sum``, across web nodes).

Counters (``*_total``) are counts of rows: deleting finished tasks (retention) lowers them,
which Prometheus treats as a counter reset. Durations are those of each finished task's last
attempt (``finished_at - started_at``).

Nothing here changes a row; ``health.metrics`` serves the text.

The figures are grouped scans of the task table, so their cost grows with it (0.65 s at 300k
tasks). ``cached_metrics`` therefore keeps the rendered text per process for a few seconds and
lets one request at a time compute it, the others waiting for that result: a scrape costs a
dictionary lookup however many clients loop on it and however large the table is, and the
database sees at most one collection per process per ``ASYNC_TASK_METRICS_CACHE_SECONDS``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from flask import current_app
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import Float, Integer, case, cast, extract, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from .extensions import db
from .history_metrics import HistoryCollector
from .limit_metrics import LimitCollector
from .tasks.models import (
    WAITING_STATUSES,
    AsyncTask,
    Notification,
    TaskStatus,
    TaskTypeState,
    UTCDateTime,
    Worker,
    utcnow,
)

PREFIX = "taskdeck"
# Seconds; from a no-op (milliseconds) to the default max-processing-time (one hour).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0, 900.0, 3600.0)
FINISHED_STATUSES = (TaskStatus.SUCCESS.value, TaskStatus.FAILURE.value)
MISSED_HEARTBEATS = 3  # the recovery sweep's rule: three missed beats and a worker is dead


@dataclass
class DurationHistogram:
    """Cumulative bucket counts, their sum and count, for one (task type, outcome)."""

    buckets: list[int]
    total: float
    count: int


@dataclass
class MetricsSnapshot:
    """Everything ``/metrics`` reports, read at one moment."""

    tasks: dict[tuple[str, str], int] = field(default_factory=dict)  # (type, status) -> n
    attempts: dict[str, int] = field(default_factory=dict)  # type -> attempts started
    durations: dict[tuple[str, str], DurationHistogram] = field(default_factory=dict)
    due: dict[str, tuple[int, float]] = field(default_factory=dict)  # type -> (n, oldest age s)
    paused: set[str] = field(default_factory=set)
    notifications: dict[tuple[str, str], int] = field(default_factory=dict)  # (type, status) -> n
    workers_by_status: dict[str, int] = field(default_factory=dict)
    workers_online: int = 0
    worker_threads: int = 0
    worker_threads_busy: int = 0
    collect_seconds: float = 0.0


def _seconds_between(start: Any, end: Any, dialect: str) -> ColumnElement[float]:
    """``end - start`` in seconds as a SQL expression (SQLite keeps naive UTC text)."""
    if dialect == "postgresql":
        return cast(extract("epoch", end - start), Float)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


def _database_now(session: Session, dialect: str) -> datetime:
    """The clock the engine uses: PostgreSQL's on PostgreSQL, this process's on SQLite."""
    if dialect == "postgresql":
        return session.execute(select(func.statement_timestamp(type_=UTCDateTime()))).scalar_one()
    return utcnow()


def collect_snapshot(session: Session | None = None) -> MetricsSnapshot:
    """Read the current figures (inside an application context)."""
    began = time.perf_counter()
    session = session or db.session()
    dialect = session.get_bind().dialect.name
    now = _database_now(session, dialect)
    snapshot = MetricsSnapshot()
    _read_tasks(session, dialect, snapshot)
    _read_due(session, dialect, now, snapshot)
    _read_notifications(session, snapshot)
    _read_workers(session, now, snapshot)
    snapshot.collect_seconds = time.perf_counter() - began
    return snapshot


def _read_tasks(session: Session, dialect: str, snapshot: MetricsSnapshot) -> None:
    """Counts and attempts per (type, status), then durations bucketed per (type, outcome).

    The bucket is found by one ``CASE`` per row and the rows grouped by it, instead of one
    conditional sum per bucket: a third of the time on a million rows.
    """
    counts = select(AsyncTask.task_type, AsyncTask.status, func.count(), func.sum(AsyncTask.attempts)) \
        .group_by(AsyncTask.task_type, AsyncTask.status)
    for task_type, status, count, attempts in session.execute(counts):
        snapshot.tasks[(task_type, status)] = int(count)
        snapshot.attempts[task_type] = snapshot.attempts.get(task_type, 0) + int(attempts or 0)

    # The duration is computed once per row in a subquery; the CASE then only compares numbers.
    finished = (
        select(AsyncTask.task_type, AsyncTask.status,
               _seconds_between(AsyncTask.started_at, AsyncTask.finished_at, dialect).label("seconds"))
        .where(AsyncTask.status.in_(FINISHED_STATUSES), AsyncTask.started_at.is_not(None),
               AsyncTask.finished_at.is_not(None))
        .subquery()
    )
    bucket = _bucket_index(finished.c.seconds, dialect).label("bucket")
    timed = (
        select(finished.c.task_type, finished.c.status, bucket, func.count(), func.sum(finished.c.seconds))
        .group_by(finished.c.task_type, finished.c.status, bucket)
    )
    per_bucket: dict[tuple[str, str], list[int]] = {}
    sums: dict[tuple[str, str], float] = {}
    for task_type, status, index, count, duration_sum in session.execute(timed):
        key = (task_type, status)
        per_bucket.setdefault(key, [0] * (len(DURATION_BUCKETS) + 1))[int(index)] += int(count)
        sums[key] = sums.get(key, 0.0) + max(0.0, float(duration_sum or 0.0))
    for key, counts_by_bucket in per_bucket.items():
        cumulative, running = [], 0
        for count in counts_by_bucket[:-1]:
            running += count
            cumulative.append(running)
        snapshot.durations[key] = DurationHistogram(cumulative, sums[key], sum(counts_by_bucket))


def _bucket_index(seconds: Any, dialect: str) -> ColumnElement[int]:
    """Index of the first bound with ``seconds <= bound`` (``len(DURATION_BUCKETS)``: none)."""
    if dialect == "postgresql":
        # width_bucket(v, t) counts the thresholds t_i <= v. With v = -seconds and t = the
        # negated bounds, ascending, that is the number of bounds b with seconds <= b: Prometheus'
        # inclusive ``le``, computed once per row (a CASE chain re-evaluates the duration).
        negated = sorted(-bound for bound in DURATION_BUCKETS)
        thresholds = literal(negated, ARRAY(Float()))
        return len(DURATION_BUCKETS) - func.width_bucket(-seconds, thresholds, type_=Integer())
    return case(*((seconds <= bound, index) for index, bound in enumerate(DURATION_BUCKETS)),
                else_=len(DURATION_BUCKETS))


def _read_due(session: Session, dialect: str, now: datetime, snapshot: MetricsSnapshot) -> None:
    """Waiting tasks that are due, and how long the oldest of each type has been waiting."""
    now_value = literal(now, UTCDateTime())
    rows = session.execute(
        select(AsyncTask.task_type, func.count(), func.min(AsyncTask.next_run_at))
        .where(AsyncTask.status.in_(WAITING_STATUSES), AsyncTask.next_run_at <= now_value)
        .group_by(AsyncTask.task_type))
    for task_type, count, oldest in rows:
        if isinstance(oldest, str):  # SQLite hands min() back as text
            oldest = UTCDateTime().process_result_value(datetime.fromisoformat(oldest), session.get_bind().dialect)
        age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        snapshot.due[task_type] = (int(count), age)
    snapshot.paused = set(session.scalars(select(TaskTypeState.task_type).where(TaskTypeState.paused)))


def _read_notifications(session: Session, snapshot: MetricsSnapshot) -> None:
    rows = session.execute(select(Notification.type, Notification.status, func.count())
                           .group_by(Notification.type, Notification.status))
    snapshot.notifications = {(kind, status): int(count) for kind, status, count in rows}


def _read_workers(session: Session, now: datetime, snapshot: MetricsSnapshot) -> None:
    rows = session.execute(select(Worker.status, func.count()).group_by(Worker.status))
    snapshot.workers_by_status = {status: int(count) for status, count in rows}
    running = session.execute(
        select(Worker.last_heartbeat_at, Worker.heartbeat_interval, Worker.concurrency, Worker.busy)
        .where(Worker.status == "RUNNING"))
    for last_beat, interval, concurrency, busy in running:
        if (now - last_beat).total_seconds() <= MISSED_HEARTBEATS * interval:
            snapshot.workers_online += 1
            snapshot.worker_threads += int(concurrency)
            snapshot.worker_threads_busy += int(busy)


# -- exposition -----------------------------------------------------------------------------


def _name(metric: str) -> str:
    return f"{PREFIX}_{metric}"


def snapshot_families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    """The snapshot as Prometheus metric families."""
    tasks = GaugeMetricFamily(_name("tasks"), "Tasks by type and status.", labels=["task_type", "status"])
    for (task_type, status), count in sorted(snapshot.tasks.items()):
        tasks.add_metric([task_type, status], count)
    yield tasks

    processed = CounterMetricFamily(_name("tasks_processed"),
                                    "Tasks that finished processing (SUCCESS or FAILURE).",
                                    labels=["task_type"])
    failed = CounterMetricFamily(_name("tasks_failed"), "Tasks that ended in FAILURE.",
                                 labels=["task_type"])
    attempts = CounterMetricFamily(_name("task_attempts"), "Attempts started (claims), retries included.",
                                   labels=["task_type"])
    for task_type in sorted({t for t, _ in snapshot.tasks}):
        done = sum(snapshot.tasks.get((task_type, status), 0) for status in FINISHED_STATUSES)
        processed.add_metric([task_type], done)
        failed.add_metric([task_type], snapshot.tasks.get((task_type, TaskStatus.FAILURE.value), 0))
        attempts.add_metric([task_type], snapshot.attempts.get(task_type, 0))
    yield processed
    yield failed
    yield attempts

    durations = HistogramMetricFamily(_name("task_duration_seconds"),
                                      "Run time of each finished task's last attempt.",
                                      labels=["task_type", "status"])
    for (task_type, status), histogram in sorted(snapshot.durations.items()):
        buckets = [(_bound(b), n) for b, n in zip(DURATION_BUCKETS, histogram.buckets, strict=True)]
        buckets.append(("+Inf", histogram.count))
        durations.add_metric([task_type, status], buckets, histogram.total)
    yield durations

    due = GaugeMetricFamily(_name("tasks_due"), "Waiting tasks whose run time has come.", labels=["task_type"])
    lag = GaugeMetricFamily(_name("queue_lag_seconds"),
                            "Age of the oldest due waiting task (0 when none is due).", labels=["task_type"])
    for task_type, (count, age) in sorted(snapshot.due.items()):
        due.add_metric([task_type], count)
        lag.add_metric([task_type], age)
    yield due
    yield lag
    overall = GaugeMetricFamily(_name("queue_lag_max_seconds"),
                                "Age of the oldest due waiting task of any type not paused.")
    everything_paused = "*" in snapshot.paused
    overall.add_metric([], 0.0 if everything_paused else max(
        (age for t, (_, age) in snapshot.due.items() if t not in snapshot.paused), default=0.0))
    yield overall
    paused = GaugeMetricFamily(_name("task_type_paused"), "1 for each paused task type ('*' = all).",
                               labels=["task_type"])
    for task_type in sorted(snapshot.paused):
        paused.add_metric([task_type], 1)
    yield paused

    notifications = GaugeMetricFamily(_name("notifications"), "Notifications by type and status.",
                                      labels=["type", "status"])
    for (kind, status), count in sorted(snapshot.notifications.items()):
        notifications.add_metric([kind, status], count)
    yield notifications

    workers = GaugeMetricFamily(_name("workers"), "Worker rows by recorded status.", labels=["status"])
    for status, count in sorted(snapshot.workers_by_status.items()):
        workers.add_metric([status], count)
    yield workers
    for metric, help_text, value in (
        ("workers_online", "Workers whose heartbeat is fresh (fewer than 3 missed).", snapshot.workers_online),
        ("worker_threads", "Task threads of the online workers.", snapshot.worker_threads),
        ("worker_threads_busy", "Task threads running a task, as of each worker's last heartbeat.",
         snapshot.worker_threads_busy),
        ("metrics_collect_seconds", "Time this scrape spent reading the database.", snapshot.collect_seconds),
    ):
        gauge = GaugeMetricFamily(_name(metric), help_text)
        gauge.add_metric([], value)
        yield gauge


def _bound(value: float) -> str:
    return repr(float(value))


class _SnapshotCollector:
    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        return snapshot_families(self.snapshot)


def render_metrics(session: Session | None = None) -> bytes:
    """The Prometheus text exposition of the current snapshot."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(collect_snapshot(session)))  # type: ignore[arg-type]
    registry.register(HistoryCollector(session))  # type: ignore[arg-type]
    registry.register(LimitCollector(session))  # type: ignore[arg-type]  # flow control (limit_metrics.py)
    return generate_latest(registry)


class MetricsCache:
    """The last rendered exposition of this process and when it was made (single-flight refresh)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self._made_at = 0.0
        self.collections = 0  # how many times this process read the tables (tests and debugging)

    def get(self, max_age: float, session: Session | None = None) -> bytes:
        """The cached text if younger than ``max_age`` seconds, else a fresh one (one thread reads)."""
        body = self._body
        if body is not None and time.monotonic() - self._made_at < max_age:
            return body
        with self._lock:  # the first thread in collects; the ones behind it take its result
            if self._body is not None and time.monotonic() - self._made_at < max_age:
                return self._body
            self._body = render_metrics(session)
            self._made_at = time.monotonic()
            self.collections += 1
            return self._body


def metrics_cache() -> MetricsCache:
    """This app's cache (one per process: gunicorn workers each keep their own)."""
    return current_app.extensions.setdefault("metrics_cache", MetricsCache())  # type: ignore[no-any-return]


def cached_metrics(max_age: float, session: Session | None = None) -> bytes:
    """The exposition at most ``max_age`` seconds old (see the module docstring)."""
    return metrics_cache().get(max_age, session)
