"""Tables of recurring schedules: the schedule and one run record per slot it fired."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from ..tasks.models import BigId, JsonDoc, UTCDateTime, utcnow
from .triggers import Recurrence


class OverlapPolicy(enum.StrEnum):
    """What a slot does while the schedule's previous task is still waiting or running."""

    ALLOW = "allow"
    SKIP = "skip"
    CANCEL_PREVIOUS = "cancel_previous"


class CatchUpPolicy(enum.StrEnum):
    """What happens to slots missed while no scheduler ran (older than the misfire grace)."""

    NONE = "none"
    LATEST = "latest"
    ALL = "all"


class ScheduleSource(enum.StrEnum):
    """Where a schedule is declared: at runtime (editable), or in code/configuration (static)."""

    DYNAMIC = "dynamic"
    PROCESSOR = "processor"
    CONFIG = "config"


class RunKind(enum.StrEnum):
    """Why a run record exists: its slot came, an operator asked, or a backfill made it."""

    SCHEDULED = "scheduled"
    CATCH_UP = "catch_up"
    MANUAL = "manual"
    BACKFILL = "backfill"


class Schedule(db.Model):  # type: ignore[name-defined,misc]
    """A recurring task: a cron expression or an interval, in a time zone, with its policies."""

    __tablename__ = "schedule"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False)
    task_type: Mapped[str] = mapped_column(String(100), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDoc, nullable=False)
    priority: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cron: Mapped[str | None] = mapped_column(String(200), nullable=True)
    interval_seconds: Mapped[int | None] = mapped_column(Integer, nullable=True)
    timezone: Mapped[str] = mapped_column(String(64), nullable=False, default="UTC")
    start_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    end_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    overlap: Mapped[str] = mapped_column(String(16), nullable=False, default=OverlapPolicy.ALLOW.value)
    catch_up: Mapped[str] = mapped_column(String(16), nullable=False, default=CatchUpPolicy.NONE.value)
    description: Mapped[str] = mapped_column(Text, nullable=False, default="")
    source: Mapped[str] = mapped_column(String(16), nullable=False, default=ScheduleSource.DYNAMIC.value)
    # For static schedules: the processor class or configuration file that declares it.
    declared_in: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # Interval slots are counted from here (start_at, else the creation time), never from "now",
    # so every scheduler process computes the same slot times.
    anchor_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    # The next slot not yet handled; NULL when the schedule has ended. The runner's only query
    # when nothing is due reads this through ix_schedule_due.
    next_fire_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Bumped by every edit: a scheduler that computed a slot from the old definition must not
    # write it (its conditional update sees a different version and rolls back).
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (
        UniqueConstraint("name", name="uq_schedule_name"),
        Index("ix_schedule_due", "next_fire_at",
              postgresql_where=text("enabled"), sqlite_where=text("enabled = 1")),
    )

    def recurrence(self) -> Recurrence:
        """Its fire times, from the timing fields alone (a task type unknown here still fires,
        and its run record says why no task was created)."""
        return Recurrence(cron=self.cron, interval_seconds=self.interval_seconds, timezone=self.timezone,
                          anchor_at=self.start_at or self.anchor_at, start_at=self.start_at, end_at=self.end_at)

    @property
    def is_static(self) -> bool:
        """Declared in code or configuration: operators may pause it but not edit it."""
        return self.source != ScheduleSource.DYNAMIC.value

    def __repr__(self) -> str:
        return f"<Schedule {self.name} {self.cron or f'every {self.interval_seconds}s'}>"


class ScheduleRun(db.Model):  # type: ignore[name-defined,misc]
    """One slot of a schedule and what it produced: a task, or the reason it was skipped.

    Unique on (schedule, slot time): the run and its task are inserted in one transaction, so
    of any number of schedulers racing for a slot exactly one commits; the others roll back.
    """

    __tablename__ = "schedule_run"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    schedule_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("schedule.id", ondelete="CASCADE"), nullable=False)
    slot_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default=RunKind.SCHEDULED.value)
    task_id: Mapped[int | None] = mapped_column(
        BigId, ForeignKey("async_task.id", ondelete="SET NULL"), nullable=True)
    skip_reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(255), nullable=True)

    __table_args__ = (
        UniqueConstraint("schedule_id", "slot_at", name="uq_schedule_run_slot"),
        Index("ix_schedule_run_task_id", "task_id"),
    )
