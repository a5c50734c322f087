"""Tables of the history: per-minute (and, after two days, hourly) statistics per task type.

``task_stat`` holds one row per (task type, period); ``period_seconds`` says whether the row is
a minute (60) or an hour (3600). ``task_stat_mark`` remembers how far the aggregation got, so
each run reads only the events since then (``history.py``).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .models import UTCDateTime

MINUTE = 60
HOUR = 3600


class TaskStat(db.Model):  # type: ignore[name-defined,misc]
    """What happened to one task type during one minute or one hour (times in milliseconds)."""

    __tablename__ = "task_stat"

    task_type: Mapped[str] = mapped_column(String(100), primary_key=True)
    period_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    started: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    failed: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    retried: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    # Run time: claim to the end of the attempt (succeeded, failed, or retry scheduled).
    run_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    run_p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_max_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Wait: from the time the task was due (``next_run_at``) to its claim.
    wait_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    wait_p50_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    wait_p95_ms: Mapped[float | None] = mapped_column(Float, nullable=True)

    # Charts and /metrics of every type read a time range of one period size.
    __table_args__ = (Index("ix_task_stat_period", "period_seconds", "period_start"),)


class TaskStatMark(db.Model):  # type: ignore[name-defined,misc]
    """How far the per-minute aggregation got (one row, ``name = 'minutes'``).

    ``next_minute``: minutes before it have been aggregated. ``event_floor``: every ``task_event``
    with a greater id is read by the next run (the events at or below it are older than its window).
    """

    __tablename__ = "task_stat_mark"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    next_minute: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    event_floor: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
