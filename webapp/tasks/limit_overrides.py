"""Operators' runtime overrides of a task type's concurrency, rate and time limit, and the limits now.

An override is a ``task_limit_override`` row (a NULL column keeps the processor's value); every
process re-reads the rows at most every ``OVERRIDE_CACHE_SECONDS``, so every worker follows a
change within a few seconds without a restart. Changes are validated field by field and audited.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select

from .errors import ValidationError
from .limit_models import TaskLimitOverride, TaskLimitStart
from .limits import RateLimit, TaskLimits
from .models import WAITING_STATUSES, AsyncTask, TaskStatus
from .store import TaskStore, engine_state

OVERRIDE_CACHE_SECONDS = 2.0  # every worker follows a changed override within this (plus a claim)
OVERRIDE_FIELDS = ("concurrency", "rate", "time_limit")
MAX_LIMIT = 1_000_000
MAX_TIME_LIMIT = 7 * 86_400  # seconds: a week


@dataclasses.dataclass(frozen=True)
class Override:
    """An override as stored: None keeps the processor's value."""

    concurrency: int | None
    rate_count: int | None
    rate_per_seconds: float | None
    updated_by: str | None = None
    time_limit: float | None = None

    def applied_to(self, limits: TaskLimits) -> TaskLimits:
        """``limits`` with this override's values in place of the processor's."""
        rate = limits.rate
        if self.rate_count is not None and self.rate_per_seconds is not None:
            rate = RateLimit(self.rate_count, self.rate_per_seconds)
        time_limit, soft = limits.time_limit, limits.soft_time_limit
        if self.time_limit is not None:
            # A soft limit the code declares above an overridden hard limit would never fire.
            time_limit, soft = self.time_limit, None if soft is None else min(soft, self.time_limit)
        return dataclasses.replace(limits, rate=rate, time_limit=time_limit, soft_time_limit=soft,
                                   concurrency=self.concurrency if self.concurrency is not None else limits.concurrency)

    def as_dict(self) -> dict[str, Any]:
        """The override's JSON (``rate`` as ``{count, per_seconds}``)."""
        rate = ({"count": self.rate_count, "per_seconds": self.rate_per_seconds}
                if self.rate_count is not None else None)
        return {"concurrency": self.concurrency, "rate": rate, "time_limit": self.time_limit,
                "updated_by": self.updated_by}


def cached_overrides(session: Any) -> dict[str, Override]:
    """Every override, re-read at most every ``OVERRIDE_CACHE_SECONDS`` (claims run many times a second)."""
    engine = engine_state()
    now = time.monotonic()
    cached = getattr(engine, "limit_overrides_cache", None)
    if cached is None or now - cached[0] > OVERRIDE_CACHE_SECONDS:
        rows = session.scalars(select(TaskLimitOverride)).all()
        cached = engine.limit_overrides_cache = (now, {row.task_type: Override(
            row.concurrency, row.rate_count, row.rate_per_seconds, row.updated_by, row.time_limit)
            for row in rows})
    return dict(cached[1])


def checked_override(body: dict[str, Any], declared: TaskLimits | None = None) -> Override:
    """An override from JSON (``concurrency``, ``rate``, ``time_limit``), or a ``ValidationError``
    naming the field; ``declared`` are the type's own limits (a time limit below its soft one is refused)."""
    unknown = sorted(set(body) - set(OVERRIDE_FIELDS))
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}; an override takes {', '.join(OVERRIDE_FIELDS)}",
                              field=unknown[0])
    concurrency = body.get("concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or not 1 <= concurrency <= MAX_LIMIT):
        raise ValidationError(f"concurrency must be a whole number from 1 to {MAX_LIMIT}, or null",
                              field="concurrency")
    time_limit = _checked_time_limit(body.get("time_limit"), declared)
    rate = body.get("rate")
    if rate is None:
        return Override(concurrency, None, None, time_limit=time_limit)
    if not isinstance(rate, dict) or set(rate) - {"count", "per_seconds"}:
        raise ValidationError("rate must be an object {count, per_seconds}, or null", field="rate")
    count, per = rate.get("count"), rate.get("per_seconds", 1.0)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_LIMIT:
        raise ValidationError(f"rate.count must be a whole number from 1 to {MAX_LIMIT}", field="rate.count")
    if isinstance(per, bool) or not isinstance(per, int | float) or not 0 < per <= 86_400:
        raise ValidationError("rate.per_seconds must be a number of seconds above 0, at most 86400",
                              field="rate.per_seconds")
    return Override(concurrency, count, float(per), time_limit=time_limit)


def _checked_time_limit(value: Any, declared: TaskLimits | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_TIME_LIMIT:
        raise ValidationError(f"time_limit must be a number of seconds above 0, at most {MAX_TIME_LIMIT}, "
                              "or null", field="time_limit")
    soft = declared.soft_time_limit if declared else None
    if soft is not None and value < soft:
        raise ValidationError(f"time_limit ({value:g} s) must not be below the type's soft_time_limit "
                              f"({soft:g} s)", field="time_limit")
    return float(value)


class LimitOverrides(TaskStore):
    """Read and change the limits of task types at runtime."""

    def effective_limits(self, task_type: str) -> TaskLimits:
        """The processor's limits with the stored override applied."""
        override = cached_overrides(self.session).get(task_type)
        declared = self.registry.limits_of(task_type)
        return override.applied_to(declared) if override else declared

    def set_override(self, task_type: str, body: dict[str, Any], actor: str | None) -> None:
        """Store (or, with every field null, remove) the override of ``task_type``; audited.

        ``body`` holds ``concurrency`` (int), ``rate`` (``{count, per_seconds}``) and
        ``time_limit`` (seconds), each optional; null or absent keeps the processor's value.
        """
        self.processor_for(task_type)
        override = checked_override(body, self.registry.limits_of(task_type))
        self.begin_write()
        self.session.execute(delete(TaskLimitOverride).where(TaskLimitOverride.task_type == task_type))
        if override.concurrency is not None or override.rate_count is not None or override.time_limit is not None:
            self.session.add(TaskLimitOverride(
                task_type=task_type, concurrency=override.concurrency, rate_count=override.rate_count,
                rate_per_seconds=override.rate_per_seconds, time_limit=override.time_limit,
                updated_at=self.db_now(), updated_by=actor))
        self.audit(actor, "limits.override", "task_type", task_type, detail=override.as_dict())
        self.session.commit()
        engine_state().limit_overrides_cache = None  # this process follows at once

    def overview(self, task_type: str | None = None) -> list[dict[str, Any]]:
        """Each limited (or overridden) type: declared, override, effective, running per key, waiting, window."""
        if task_type is not None:
            self.processor_for(task_type)
        overrides = cached_overrides(self.session)
        types = [task_type] if task_type else [
            name for name in self.registry.task_types()
            if self.registry.limits_of(name) != TaskLimits() or name in overrides]
        return [self._describe(name, overrides.get(name)) for name in types]

    def _describe(self, task_type: str, override: Override | None) -> dict[str, Any]:
        declared = self.registry.limits_of(task_type)
        limits = override.applied_to(declared) if override else declared
        return {
            "task_type": task_type,
            "concurrency": limits.concurrency, "concurrency_key": limits.concurrency_key,
            "rate": _rate(limits.rate), "rate_key": limits.rate_key,
            "time_limit": limits.time_limit, "soft_time_limit": limits.soft_time_limit,
            "isolation": limits.isolation,
            "declared": {"concurrency": declared.concurrency, "rate": _rate(declared.rate),
                         "time_limit": declared.time_limit, "soft_time_limit": declared.soft_time_limit},
            "override": override.as_dict() if override else None,
            "running": self._running_by_key(task_type, limits.concurrency_key),
            "waiting": self._count(AsyncTask.task_type == task_type, AsyncTask.status.in_(WAITING_STATUSES)),
            "starts_in_window": self._starts_in_window(task_type, limits.rate),
        }

    def _running_by_key(self, task_type: str, key: str | None) -> list[dict[str, Any]]:
        """PROCESSING tasks of the type per concurrency key value (one group when the limit has no key)."""
        running = (AsyncTask.task_type == task_type, AsyncTask.status == TaskStatus.PROCESSING.value)
        if not key:
            return [{"key": "", "running": self._count(*running)}]
        key_value = AsyncTask.payload[key].as_string()
        rows = self.session.execute(
            select(key_value, func.count()).where(*running)
            .group_by(key_value).order_by(func.count().desc()).limit(50)).all()
        return [{"key": row[0] or "", "running": int(row[1])} for row in rows]

    def _starts_in_window(self, task_type: str, rate: RateLimit | None) -> int | None:
        if rate is None:
            return None
        since = self.db_now() - timedelta(seconds=rate.per_seconds)
        return self._count_starts(task_type, since)

    def _count_starts(self, task_type: str, since: Any) -> int:
        return int(self.session.scalar(select(func.count()).select_from(TaskLimitStart).where(
            TaskLimitStart.task_type == task_type, TaskLimitStart.started_at > since)) or 0)

    def _count(self, *conditions: Any) -> int:
        return int(self.session.scalar(select(func.count()).select_from(AsyncTask).where(*conditions)) or 0)


def _rate(rate: RateLimit | None) -> dict[str, Any] | None:
    return {"count": rate.count, "per_seconds": rate.per_seconds} if rate else None

