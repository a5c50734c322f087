"""The one read that differs between the databases in the history: a window's per-minute figures.

PostgreSQL groups the window's events in the database and computes the percentiles there
(``percentile_cont``), so only one row per (task type, minute) leaves it. SQLite has no
percentile function: its reader fetches the window's timed events (one machine, embedded scale,
a few minutes of events) and computes the same continuous percentiles in Python.

Both read ``task_event`` by its primary key from ``floor`` (there is no index on its time, and
the hot path should not pay for one), and join each event to its task for the type and due time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, select, text
from sqlalchemy.orm import Session

from .dbsession import dialect_of
from .dialect_postgres import NO_JIT_SQL
from .models import AsyncTask, TaskEvent, TaskEventKind, UTCDateTime

STARTED = TaskEventKind.CLAIMED.value
SUCCEEDED = TaskEventKind.SUCCEEDED.value
FAILED = TaskEventKind.FAILED.value
RETRIED = TaskEventKind.RETRY_SCHEDULED.value
# Events that end a run: its time is measured from the same attempt's claim.
RUN_ENDINGS = (SUCCEEDED, FAILED, RETRIED)
COUNTED = (STARTED, *RUN_ENDINGS)


@dataclass(frozen=True)
class StatFigures:
    """One task type's figures for one period (times in milliseconds, None when nothing was timed)."""

    task_type: str
    start: datetime
    started: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    run_count: int = 0
    run_p50_ms: float | None = None
    run_p95_ms: float | None = None
    run_max_ms: float | None = None
    wait_count: int = 0
    wait_p50_ms: float | None = None
    wait_p95_ms: float | None = None


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """PostgreSQL's ``percentile_cont``: linear interpolation between the two nearest ranks."""
    if not sorted_values:
        return None
    position = fraction * (len(sorted_values) - 1)
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


# A run's start: the task's ``started_at`` when the run is its current attempt (the claim stamps
# it with the CLAIMED event's time), else that attempt's CLAIMED event (one index probe).
# Wait is measured for the claim of the task's current attempt only: a retry moves ``next_run_at``
# to the retry's due time, so an earlier attempt's due time is no longer known.
POSTGRES_MINUTES_SQL = text("""
WITH ev AS (
    SELECT e.task_id, e.at, e.kind, e.attempt, t.task_type, t.next_run_at, t.started_at,
           t.attempts AS task_attempts
    FROM task_event AS e JOIN async_task AS t ON t.id = e.task_id
    WHERE e.id > :floor AND e.at >= :start AND e.at < :end
      AND e.kind IN ('CLAIMED', 'SUCCEEDED', 'FAILED', 'RETRY_SCHEDULED')
), timed AS MATERIALIZED (  -- each run time computed once, not once per aggregate
    SELECT ev.task_type, date_trunc('minute', ev.at) AS minute, ev.kind,
        CASE WHEN ev.kind = 'CLAIMED' AND ev.attempt = ev.task_attempts AND ev.next_run_at <= ev.at
             THEN extract(epoch FROM ev.at - ev.next_run_at) * 1000 END AS wait_ms,
        CASE WHEN ev.kind <> 'CLAIMED' THEN COALESCE(
            CASE WHEN ev.attempt = ev.task_attempts THEN extract(epoch FROM ev.at - ev.started_at) * 1000 END,
            (SELECT extract(epoch FROM ev.at - c.at) * 1000 FROM task_event AS c
             WHERE c.task_id = ev.task_id AND c.kind = 'CLAIMED' AND c.attempt = ev.attempt
             ORDER BY c.id DESC LIMIT 1)) END AS run_ms
    FROM ev
)
SELECT task_type, minute,
    count(*) FILTER (WHERE kind = 'CLAIMED') AS started,
    count(*) FILTER (WHERE kind = 'SUCCEEDED') AS succeeded,
    count(*) FILTER (WHERE kind = 'FAILED') AS failed,
    count(*) FILTER (WHERE kind = 'RETRY_SCHEDULED') AS retried,
    count(run_ms) AS run_count,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY run_ms) AS run_p50_ms,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY run_ms) AS run_p95_ms,
    max(run_ms) AS run_max_ms,
    count(wait_ms) AS wait_count,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY wait_ms) AS wait_p50_ms,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY wait_ms) AS wait_p95_ms
FROM timed GROUP BY task_type, minute
""").columns(minute=UTCDateTime())


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def postgres_minutes(session: Session, floor: int, start: datetime, end: datetime) -> list[StatFigures]:
    """The window's figures, grouped and computed by PostgreSQL."""
    # A one-off grouped read: compiling it with JIT costs seconds, more than running it.
    session.execute(NO_JIT_SQL)
    rows = session.execute(POSTGRES_MINUTES_SQL, {"floor": floor, "start": start, "end": end})
    return [StatFigures(r.task_type, r.minute, int(r.started), int(r.succeeded), int(r.failed),
                          int(r.retried), int(r.run_count), _optional(r.run_p50_ms), _optional(r.run_p95_ms),
                          _optional(r.run_max_ms), int(r.wait_count), _optional(r.wait_p50_ms),
                          _optional(r.wait_p95_ms))
            for r in rows]


def _milliseconds(later: datetime, earlier: datetime) -> float:
    return (later - earlier).total_seconds() * 1000.0


def sqlite_minutes(session: Session, floor: int, start: datetime, end: datetime) -> list[StatFigures]:
    """The window's figures from its events, percentiles computed here."""
    claim = TaskEvent.__table__.alias("claim")
    claimed_at = (select(claim.c.at).where(claim.c.task_id == TaskEvent.task_id, claim.c.kind == STARTED,
                                           claim.c.attempt == TaskEvent.attempt)
                  .order_by(claim.c.id.desc()).limit(1).scalar_subquery())
    run_start = case((and_(TaskEvent.attempt == AsyncTask.attempts, AsyncTask.started_at.is_not(None)),
                      AsyncTask.started_at), else_=claimed_at)
    rows = session.execute(
        select(TaskEvent.at, TaskEvent.kind, TaskEvent.attempt, AsyncTask.task_type, AsyncTask.next_run_at,
               AsyncTask.attempts, run_start.label("claimed_at"))
        .join(AsyncTask, AsyncTask.id == TaskEvent.task_id)
        .where(TaskEvent.id > floor, TaskEvent.at >= start, TaskEvent.at < end, TaskEvent.kind.in_(COUNTED)))
    counts: dict[tuple[str, datetime], dict[str, int]] = {}
    runs: dict[tuple[str, datetime], list[float]] = {}
    waits: dict[tuple[str, datetime], list[float]] = {}
    for row in rows:
        key = (row.task_type, row.at.replace(second=0, microsecond=0))
        counts.setdefault(key, {}).setdefault(row.kind, 0)
        counts[key][row.kind] += 1
        if row.kind == STARTED and row.attempt == row.attempts and row.next_run_at <= row.at:
            waits.setdefault(key, []).append(_milliseconds(row.at, row.next_run_at))
        elif row.kind != STARTED and row.claimed_at is not None:
            claimed = row.claimed_at
            if isinstance(claimed, str):  # a scalar subquery on SQLite can come back as text
                claimed = datetime.fromisoformat(claimed).replace(tzinfo=row.at.tzinfo)
            runs.setdefault(key, []).append(_milliseconds(row.at, claimed))
    figures = []
    for key, by_kind in sorted(counts.items()):
        run, wait = sorted(runs.get(key, [])), sorted(waits.get(key, []))
        figures.append(StatFigures(key[0], key[1], by_kind.get(STARTED, 0), by_kind.get(SUCCEEDED, 0),
                                     by_kind.get(FAILED, 0), by_kind.get(RETRIED, 0), len(run),
                                     percentile(run, 0.5), percentile(run, 0.95), run[-1] if run else None,
                                     len(wait), percentile(wait, 0.5), percentile(wait, 0.95)))
    return figures


MinuteReader = Callable[[Session, int, datetime, datetime], list[StatFigures]]
MINUTE_READERS: dict[str, MinuteReader] = {"postgresql": postgres_minutes, "sqlite": sqlite_minutes}


def minute_figures(session: Session, floor: int, start: datetime, end: datetime) -> list[StatFigures]:
    """Per (task type, minute) figures of the events with id above ``floor`` in ``[start, end)``."""
    return MINUTE_READERS[dialect_of(session).name](session, floor, start, end)
