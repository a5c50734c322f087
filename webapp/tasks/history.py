"""The history's writer: per-minute statistics per task type, rolled up hourly, kept 30 days.

Every consumer runs ``HistoryWriter.run`` once a minute (``consumer.py``). A run locks the one
``task_stat_mark`` row (``SKIP LOCKED``: with many workers, one aggregates and the others pass),
reads the events since the last run by primary key (``history_sql.minute_figures``), and
replaces the ``task_stat`` rows of the minutes it read: running it twice writes the same
figures. Each run also recomputes the last ``REDO`` minutes it already wrote, so an event whose
transaction committed a little after its minute ended is counted.

After ``ROLLUP_AFTER`` the minutes of each whole hour are merged into one hour row; after
``KEEP`` rows are deleted. Merging figures (for the hour rows and for the charts' wider bars):
counts add; p50 is the mean of the parts' p50s weighted by how many runs (or waits) each timed;
p95 and max are the highest of the parts' (an upper bound, never an understatement).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from .history_models import HOUR, MINUTE, TaskStat, TaskStatMark
from .history_sql import StatFigures, minute_figures
from .models import TaskEvent
from .store import TaskStore

log = logging.getLogger(__name__)

MARK = "minutes"
SETTLE = timedelta(seconds=5)  # a minute is read this long after it ended
REDO = timedelta(minutes=2)  # minutes recomputed by the next run (late commits)
FLOOR_MARGIN = timedelta(minutes=5)  # event ids are only roughly in time order across processes
BACKFILL = timedelta(hours=1)  # the first run ever reads this far back
MAX_CATCH_UP = timedelta(hours=6)  # after a long stop, minutes older than this stay empty
ROLLUP_AFTER = timedelta(days=2)
# The consumers' job runs at this second of every minute: the minute before has settled by then.
RUN_AT_SECOND = 10
KEEP = timedelta(days=30)

STAT_COLUMNS = ("started", "succeeded", "failed", "retried", "run_count", "run_p50_ms", "run_p95_ms",
                "run_max_ms", "wait_count", "wait_p50_ms", "wait_p95_ms")


@dataclass(frozen=True)
class HistoryRun:
    """What one run did: the minutes it (re)computed, hour rows written, old rows deleted."""

    start: datetime
    end: datetime
    minute_rows: int
    hour_rows: int
    deleted: int


def floor_minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def floor_hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _weighted_mean(pairs: Iterable[tuple[float | None, int]]) -> float | None:
    known = [(value, weight) for value, weight in pairs if value is not None and weight > 0]
    total = sum(weight for _, weight in known)
    return sum(value * weight for value, weight in known) / total if total else None


def _highest(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return max(known) if known else None


def merge_figures(task_type: str, start: datetime, parts: Sequence[Any]) -> StatFigures:
    """One period's figures from its parts (rows or figures): see the module docstring."""
    return StatFigures(
        task_type, start,
        started=sum(p.started for p in parts), succeeded=sum(p.succeeded for p in parts),
        failed=sum(p.failed for p in parts), retried=sum(p.retried for p in parts),
        run_count=sum(p.run_count for p in parts),
        run_p50_ms=_weighted_mean((p.run_p50_ms, p.run_count) for p in parts),
        run_p95_ms=_highest(p.run_p95_ms for p in parts), run_max_ms=_highest(p.run_max_ms for p in parts),
        wait_count=sum(p.wait_count for p in parts),
        wait_p50_ms=_weighted_mean((p.wait_p50_ms, p.wait_count) for p in parts),
        wait_p95_ms=_highest(p.wait_p95_ms for p in parts))


def stat_row(figures: StatFigures, period_seconds: int) -> dict[str, Any]:
    row = {"task_type": figures.task_type, "period_seconds": period_seconds, "period_start": figures.start}
    row.update({column: getattr(figures, column) for column in STAT_COLUMNS})
    return row


class HistoryWriter(TaskStore):
    """Aggregates events into ``task_stat`` minutes, rolls old minutes into hours, drops expired rows."""

    def run(self, now: datetime | None = None) -> HistoryRun | None:
        """One aggregation run; None when another process holds the mark (it is doing this run)."""
        self.session.rollback()
        self.begin_write()
        now = now or self.db_now()
        mark = self.session.execute(self.skip_locked(
            select(TaskStatMark.next_minute, TaskStatMark.event_floor).where(TaskStatMark.name == MARK))).first()
        if mark is None:
            # Locked by another process's run, or gone (a restored or truncated table): put it back
            # for the next run (the migration wrote it; a concurrent re-insert loses harmlessly).
            missing = self.session.scalar(select(TaskStatMark.name).where(TaskStatMark.name == MARK)) is None
            self.session.rollback()
            if missing:
                self._recreate_mark()
            return None
        end = floor_minute(now - SETTLE)
        if mark.next_minute is None:
            start = end - BACKFILL
        else:
            start = max(mark.next_minute - REDO, end - MAX_CATCH_UP)
        minute_rows = 0
        if start < end:
            figures = minute_figures(self.session, mark.event_floor, start, end)
            table = TaskStat.__table__
            self.session.execute(delete(table).where(
                table.c.period_seconds == MINUTE, table.c.period_start >= start, table.c.period_start < end))
            if figures:
                self.session.execute(insert(table), [stat_row(f, MINUTE) for f in figures])
            minute_rows = len(figures)
        # Events this old are behind every later window: the next run starts its read above them.
        floor = self.session.scalar(select(func.max(TaskEvent.id)).where(
            TaskEvent.id > mark.event_floor, TaskEvent.at < end - REDO - FLOOR_MARGIN))
        next_minute = end if mark.next_minute is None else max(end, mark.next_minute)
        self.session.execute(update(TaskStatMark).where(TaskStatMark.name == MARK).values(
            next_minute=next_minute, event_floor=max(mark.event_floor, floor or 0)))
        hour_rows = self._roll_up(floor_hour(now - ROLLUP_AFTER))
        deleted = self._drop_older_than(now - KEEP)
        self.session.commit()
        return HistoryRun(start, end, minute_rows, hour_rows, deleted)

    def _recreate_mark(self) -> None:
        self.begin_write()
        try:
            self.session.execute(insert(TaskStatMark).values(name=MARK, next_minute=None, event_floor=0))
            self.session.commit()
        except IntegrityError:
            self.session.rollback()

    def _roll_up(self, before: datetime) -> int:
        """Merge the minutes of every whole hour before ``before`` into hour rows; the hour rows written."""
        table = TaskStat.__table__
        minutes = self.session.execute(select(table).where(
            table.c.period_seconds == MINUTE, table.c.period_start < before)).all()
        if not minutes:
            return 0
        groups: dict[tuple[str, datetime], list[Any]] = {}
        for row in minutes:
            groups.setdefault((row.task_type, floor_hour(row.period_start)), []).append(row)
        hours = []
        for (task_type, hour), parts in groups.items():
            # An hour row already there (a minute that arrived after its hour was rolled): merged in.
            where = (table.c.task_type == task_type, table.c.period_seconds == HOUR, table.c.period_start == hour)
            parts.extend(self.session.execute(select(table).where(*where)).all())
            self.session.execute(delete(table).where(*where))
            hours.append(stat_row(merge_figures(task_type, hour, parts), HOUR))
        self.session.execute(delete(table).where(table.c.period_seconds == MINUTE, table.c.period_start < before))
        self.session.execute(insert(table), hours)
        return len(hours)

    def _drop_older_than(self, cutoff: datetime) -> int:
        table = TaskStat.__table__
        # Both period sizes named, so the (period_seconds, period_start) index finds the rows.
        result = self.session.execute(delete(table).where(table.c.period_seconds.in_((MINUTE, HOUR)),
                                                          table.c.period_start < cutoff))
        return int(getattr(result, "rowcount", 0) or 0)


def aggregate_history(app: Flask) -> None:
    """The consumers' once-a-minute job: one run, a failure logged (the next minute catches up)."""
    with app.app_context():
        try:
            HistoryWriter().run()
        except Exception:
            log.exception("history aggregation failed")
        finally:
            db.session.remove()
