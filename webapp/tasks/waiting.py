"""Why a waiting task has not started: a limit at its ceiling, a paused type, and its start-by deadline.

Read-only, for pages and API answers. ``WaitingReasons.for_tasks`` looks at a whole page of
tasks at once with a fixed number of queries (the tasks' key values, PROCESSING tasks per
concurrency key, rate-window starts per rate key, the paused types), never one per row.

A key is read the way the claim reads it (``dialect_*.claim_limited``): the payload field's
text, '' when absent, its first 200 characters. A limit is named only when it is what holds the
task back right now: the task is due and its key is at the limit. A key below its limit starts
its next task at the next claim, so naming a limit there would be noise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, literal, or_, select

from .limit_models import TaskLimitStart
from .limit_overrides import cached_overrides
from .limits import TaskLimits
from .models import WAITING_STATUSES, AsyncTask, TaskStatus
from .queries import ALL_TYPES, paused_task_types
from .store import TaskStore

KEY_CHARS = 200  # the claim compares the first 200 characters of a key
MAX_TASKS = 500  # a page never shows more; beyond that the answer is cut, not slowed


def key_text(value: Any) -> str:
    """A payload value as the claim keys it: its text, '' when absent, at most ``KEY_CHARS``."""
    return "" if value is None else str(value)[:KEY_CHARS]


def _seconds(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class Hold:
    """One thing holding a task back: ``kind`` is ``concurrency``, ``rate`` or ``paused``."""

    kind: str
    key_field: str | None = None
    key_value: str = ""
    in_use: int = 0  # PROCESSING (concurrency) or starts in the window (rate)
    limit: int = 0
    per_seconds: float | None = None
    next_start_in: float | None = None  # rate: seconds until the window frees a start

    @property
    def key(self) -> str | None:
        """``field=value`` of a keyed limit, None for a limit on the whole type."""
        return f"{self.key_field}={self.key_value}" if self.key_field else None

    def describe(self) -> str:
        """The hold in English (the console translates from the fields, not from this text)."""
        if self.kind == "paused":
            return "task type paused"
        if self.kind == "concurrency":
            return f"limit {self.key + ', ' if self.key else ''}{self.in_use} of {self.limit} running"
        rate = f"rate {self.limit} per {_seconds(self.per_seconds or 0)} s"
        key = f" for {self.key}" if self.key else ""
        return f"{rate}{key}, next start in {self.next_start_in or 0:.1f} s"


@dataclass(frozen=True)
class Waiting:
    """A waiting task's holds (possibly none) and its start-by deadline (possibly None)."""

    holds: tuple[Hold, ...]
    start_by: datetime | None = None

    def describe(self) -> str | None:
        """``waiting: limit customer_id=42, 2 of 2 running`` (holds joined by '; '), None with no hold."""
        if not self.holds:
            return None
        return "waiting: " + "; ".join(hold.describe() for hold in self.holds)


@dataclass(frozen=True)
class _Row:
    id: int
    task_type: str
    due: bool
    start_by: datetime | None
    ckey: str
    rkey: str


class WaitingReasons(TaskStore):
    """Why the waiting tasks of a page have not started."""

    def for_tasks(self, task_ids: Iterable[int]) -> dict[int, Waiting]:
        """Of ``task_ids``: each PENDING/RETRYING task held back or with a start-by deadline, by id."""
        ids = sorted({int(task_id) for task_id in task_ids})[:MAX_TASKS]
        if not ids:
            return {}
        limits = self._effective_limits()
        now = self.db_now()
        rows = self._rows(ids, limits, now)
        if not rows:
            return {}
        paused = set(paused_task_types(self.session))
        page_types = {row.task_type for row in rows}
        running = self._running(limits, page_types)
        starts = self._starts(limits, page_types, now)
        answer = {}
        for row in rows:
            holds = []
            if ALL_TYPES in paused or row.task_type in paused:
                holds.append(Hold("paused"))
            limit = limits.get(row.task_type)
            if limit is not None and row.due:
                holds.extend(self._limit_holds(row, limit, running, starts, now))
            if holds or row.start_by is not None:
                answer[row.id] = Waiting(tuple(holds), row.start_by)
        return answer

    def _effective_limits(self) -> dict[str, TaskLimits]:
        """Every task type's concurrency and rate as the claim applies them (overrides included)."""
        overrides = cached_overrides(self.session)
        found = {}
        for task_type in self.registry.task_types():
            declared = self.registry.limits_of(task_type)
            override = overrides.get(task_type)
            limits = override.applied_to(declared) if override else declared
            if limits.limits_claims:
                found[task_type] = limits
        return found

    def _rows(self, ids: list[int], limits: dict[str, TaskLimits], now: datetime) -> list[_Row]:
        """The waiting tasks among ``ids`` with their key values (one query)."""
        fields = sorted({key for item in limits.values() for key in (item.concurrency_key, item.rate_key) if key})
        columns = [AsyncTask.id, AsyncTask.task_type, AsyncTask.next_run_at, AsyncTask.start_by]
        columns += [AsyncTask.payload[name].as_string() for name in fields]
        found = self.session.execute(select(*columns).where(
            AsyncTask.id.in_(ids), AsyncTask.status.in_(WAITING_STATUSES))).all()
        rows = []
        for item in found:
            values = dict(zip(fields, item[4:], strict=True))
            limit = limits.get(item.task_type)
            rows.append(_Row(
                item.id, item.task_type, item.next_run_at is None or item.next_run_at <= now, item.start_by,
                key_text(values.get(limit.concurrency_key)) if limit and limit.concurrency_key else "",
                key_text(values.get(limit.rate_key)) if limit and limit.rate_key else ""))
        return rows

    def _running(self, limits: dict[str, TaskLimits], page_types: set[str]) -> dict[tuple[str, str], int]:
        """PROCESSING tasks per (type, concurrency key) of the page's concurrency-limited types (one query)."""
        types = sorted(t for t in page_types if t in limits and limits[t].concurrency is not None)
        if not types:
            return {}
        keyed = [(AsyncTask.task_type == t, AsyncTask.payload[limits[t].concurrency_key].as_string())
                 for t in types if limits[t].concurrency_key]
        key = case(*keyed, else_=literal(None)) if keyed else literal(None)
        running = (select(AsyncTask.task_type.label("task_type"), key.label("ckey"))
                   .where(AsyncTask.task_type.in_(types), AsyncTask.status == TaskStatus.PROCESSING.value)
                   .subquery())
        counts: dict[tuple[str, str], int] = {}
        for task_type, value, n in self.session.execute(
                select(running.c.task_type, running.c.ckey, func.count())
                .group_by(running.c.task_type, running.c.ckey)):
            index = (task_type, key_text(value))
            counts[index] = counts.get(index, 0) + int(n)
        return counts

    def _starts(self, limits: dict[str, TaskLimits], page_types: set[str], now: datetime
                ) -> dict[tuple[str, str], tuple[int, datetime]]:
        """Starts in each rate window per (type, rate key): count and oldest start (one query)."""
        windows = [and_(TaskLimitStart.task_type == t,
                        TaskLimitStart.started_at > now - timedelta(seconds=limits[t].rate.per_seconds))  # type: ignore[union-attr]
                   for t in sorted(page_types) if t in limits and limits[t].rate is not None]
        if not windows:
            return {}
        rows = self.session.execute(
            select(TaskLimitStart.task_type, TaskLimitStart.rate_key, func.count(), func.min(TaskLimitStart.started_at))
            .where(or_(*windows)).group_by(TaskLimitStart.task_type, TaskLimitStart.rate_key))
        return {(task_type, key): (int(n), oldest) for task_type, key, n, oldest in rows}

    @staticmethod
    def _limit_holds(row: _Row, limits: TaskLimits, running: dict[tuple[str, str], int],
                     starts: dict[tuple[str, str], tuple[int, datetime]], now: datetime) -> list[Hold]:
        holds = []
        if limits.concurrency is not None:
            in_use = running.get((row.task_type, row.ckey), 0)
            if in_use >= limits.concurrency:
                holds.append(Hold("concurrency", limits.concurrency_key, row.ckey, in_use, limits.concurrency))
        if limits.rate is not None:
            count, oldest = starts.get((row.task_type, row.rkey), (0, now))
            if count >= limits.rate.count:
                # The oldest start leaving the window frees the next one (the earliest a start can come).
                free_at = oldest + timedelta(seconds=limits.rate.per_seconds)
                holds.append(Hold("rate", limits.rate_key, row.rkey, count, limits.rate.count,
                                  float(limits.rate.per_seconds), max(0.0, (free_at - now).total_seconds())))
        return holds
