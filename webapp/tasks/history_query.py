"""Reading the history: chart series over a range, the last minute's figures, queue latency per type.

Charts read ``task_stat`` (a range of minute and hour rows, never ``async_task`` or
``task_event``) and merge its rows into the chart's bars with ``history.merge_figures``.
Queue latency is read now from the waiting tasks' ``next_run_at`` index, one short read per type.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from ..extensions import db
from .errors import ValidationError
from .history import floor_minute, merge_figures
from .history_models import HOUR, MINUTE, TaskStat, TaskStatMark
from .history_sql import StatFigures
from .models import WAITING_STATUSES, AsyncTask, utcnow

ALL = "*"


@dataclass(frozen=True)
class HistoryRange:
    """A chart's time span and the width of each of its bars."""

    key: str
    span: timedelta
    step: timedelta

    @property
    def bars(self) -> int:
        return int(self.span / self.step)


RANGES = {r.key: r for r in (
    HistoryRange("1h", timedelta(hours=1), timedelta(minutes=1)),
    HistoryRange("24h", timedelta(hours=24), timedelta(minutes=15)),
    HistoryRange("7d", timedelta(days=7), timedelta(hours=1)),
    HistoryRange("30d", timedelta(days=30), timedelta(hours=6)),
)}
DEFAULT_RANGE = "1h"


def parse_range(value: str | None) -> HistoryRange:
    """The named range (``1h`` when absent); a ValidationError naming ``range`` otherwise."""
    if value is None or value == "":
        return RANGES[DEFAULT_RANGE]
    chosen = RANGES.get(value)
    if chosen is None:
        raise ValidationError(f"range must be one of {', '.join(RANGES)}, not {value[:20]!r}", field="range")
    return chosen


@dataclass(frozen=True)
class HistorySeries:
    """One bar of figures per step over a range, oldest first (empty steps have zero counts)."""

    range: HistoryRange
    task_type: str | None
    start: datetime
    points: list[StatFigures]

    @property
    def total(self) -> StatFigures:
        return merge_figures(self.task_type or ALL, self.start, self.points)


def _session(session: Session | None) -> Session:
    return session or db.session()


def _align(moment: datetime, step: timedelta) -> datetime:
    """``moment`` rounded down to a whole ``step`` since the epoch (bars start at round times)."""
    epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return moment - ((moment - epoch) % step)


def _periods(task_type: str | None, start: datetime, end: datetime) -> Select[Any]:
    """The stored periods in ``[start, end)``, every type's rows of a period merged by the database.

    Sums and maxima are plain aggregates; a p50 comes back as its sum weighted by the count
    (divided below), so the merge is ``merge_figures``' own and the rows read are one a period,
    not one a period and type.
    """
    c = TaskStat.__table__.c
    query = select(
        c.period_start, func.sum(c.started).label("started"), func.sum(c.succeeded).label("succeeded"),
        func.sum(c.failed).label("failed"), func.sum(c.retried).label("retried"),
        func.sum(c.run_count).label("run_count"), func.sum(c.run_p50_ms * c.run_count).label("run_p50_sum"),
        func.max(c.run_p95_ms).label("run_p95_ms"), func.max(c.run_max_ms).label("run_max_ms"),
        func.sum(c.wait_count).label("wait_count"), func.sum(c.wait_p50_ms * c.wait_count).label("wait_p50_sum"),
        func.max(c.wait_p95_ms).label("wait_p95_ms"),
    ).where(c.period_seconds.in_((MINUTE, HOUR)), c.period_start >= start, c.period_start < end)
    if task_type is not None:
        query = query.where(c.task_type == task_type)
    return query.group_by(c.period_start)


def _mean(weighted_sum: Any, count: int) -> float | None:
    return float(weighted_sum) / count if weighted_sum is not None and count else None


def series(chosen: HistoryRange, task_type: str | None = None, now: datetime | None = None,
           session: Session | None = None) -> HistorySeries:
    """Figures of every step of ``chosen`` ending now, for one task type or all of them."""
    now = now or utcnow()
    end = _align(floor_minute(now), chosen.step) + chosen.step
    start = end - chosen.span
    name = task_type or ALL
    buckets: dict[int, list[StatFigures]] = {}
    for row in _session(session).execute(_periods(task_type, start, end)):
        period = row.period_start
        if isinstance(period, str):  # SQLite hands a grouped column back as text
            period = datetime.fromisoformat(period).replace(tzinfo=now.tzinfo)
        run_count, wait_count = int(row.run_count or 0), int(row.wait_count or 0)
        figures = StatFigures(name, period, int(row.started), int(row.succeeded), int(row.failed),
                              int(row.retried), run_count, _mean(row.run_p50_sum, run_count), row.run_p95_ms,
                              row.run_max_ms, wait_count, _mean(row.wait_p50_sum, wait_count), row.wait_p95_ms)
        buckets.setdefault(int((period - start) / chosen.step), []).append(figures)
    points = [merge_figures(name, start + index * chosen.step, buckets.get(index, []))
              for index in range(chosen.bars)]
    return HistorySeries(chosen, task_type, start, points)


@dataclass(frozen=True)
class LastMinute:
    """The figures of the last aggregated minute, per task type (``/metrics``)."""

    minute: datetime | None
    figures: list[StatFigures]


def last_minute(session: Session | None = None) -> LastMinute:
    """The last minute the aggregation completed and each type's figures in it (one index read)."""
    session = _session(session)
    next_minute = session.scalar(select(TaskStatMark.next_minute).where(TaskStatMark.name == "minutes"))
    if next_minute is None:
        return LastMinute(None, [])
    minute = next_minute - timedelta(minutes=1)
    table = TaskStat.__table__
    rows = session.execute(select(table).where(table.c.period_seconds == MINUTE, table.c.period_start == minute)
                           .order_by(table.c.task_type)).all()
    return LastMinute(minute, [merge_figures(row.task_type, minute, [row]) for row in rows])


def queue_latency(task_types: list[str], now: datetime | None = None,
                  session: Session | None = None) -> dict[str, timedelta | None]:
    """Age of each type's oldest due waiting task (None: nothing of that type is due)."""
    now = now or utcnow()
    session = _session(session)
    ages: dict[str, timedelta | None] = {}
    for task_type in task_types:
        oldest = session.scalar(select(func.min(AsyncTask.next_run_at)).where(
            AsyncTask.status.in_(WAITING_STATUSES), AsyncTask.task_type == task_type,
            AsyncTask.next_run_at <= now))
        if isinstance(oldest, str):  # SQLite aggregates can come back as text
            oldest = datetime.fromisoformat(oldest).replace(tzinfo=now.tzinfo)
        ages[task_type] = None if oldest is None else max(timedelta(0), now - oldest)
    return ages
