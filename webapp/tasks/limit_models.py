"""Tables of flow control: the start log rate limits count, and operators' runtime overrides."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .models import BigId, UTCDateTime, utcnow


class TaskLimitStart(db.Model):  # type: ignore[name-defined,misc]
    """One start of a rate-limited task type: the claim counts these in its window and prunes old ones."""

    __tablename__ = "task_limit_start"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    task_type: Mapped[str] = mapped_column(String(100), nullable=False)
    rate_key: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    __table_args__ = (Index("ix_task_limit_start_window", "task_type", "rate_key", "started_at"),)


class TaskLimitOverride(db.Model):  # type: ignore[name-defined,misc]
    """An operator's runtime override of a task type's concurrency, rate or time limit (None: the code's)."""

    __tablename__ = "task_limit_override"

    task_type: Mapped[str] = mapped_column(String(100), primary_key=True)
    concurrency: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rate_per_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    time_limit: Mapped[float | None] = mapped_column(Float, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
