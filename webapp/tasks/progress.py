"""The running attempt's context: progress reports and cancel requests.

The context lives in a ``ContextVar``: a worker thread has its own, and so does every coroutine
the async runner starts (``async_runner.py``), so attempts running side by side on one event
loop never see each other's task.

Progress is written in its own short transaction (not the processor's), so it is visible while
the task runs, and at most every ``MIN_WRITE_INTERVAL`` seconds per task, so reporting in a tight
loop costs almost nothing. Each write also reads back whether a cancel was requested.
"""

from __future__ import annotations

import logging
import math
import time
from contextvars import ContextVar
from datetime import datetime

from flask import Flask
from sqlalchemy import select

from ..extensions import db
from .attempt import TaskInfo
from .errors import TaskCancelled, ValidationError
from .fencing import fenced_update
from .models import AsyncTask

log = logging.getLogger(__name__)

MIN_WRITE_INTERVAL = 0.5
_current: ContextVar[TaskContext | None] = ContextVar("taskdeck_task_context", default=None)


class TaskContext:
    """Progress and cancel state of one running attempt."""

    def __init__(self, app: Flask, task: TaskInfo) -> None:
        self.app = app
        self.task = task
        self._last_write = 0.0
        self._last_check = 0.0
        self._pending: tuple[float, str | None] | None = None
        self.cancel_requested_at: datetime | None = None

    def report_progress(self, fraction: float, message: str | None = None) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not math.isfinite(fraction):
            raise ValidationError("progress must be a number from 0 to 1", field="progress")
        fraction = min(1.0, max(0.0, float(fraction)))
        message = None if message is None else str(message)[:500]
        self._pending = (fraction, message)
        now = time.monotonic()
        if now - self._last_write >= MIN_WRITE_INTERVAL:
            self.flush()
        if self.cancel_requested_at is not None:
            raise TaskCancelled(f"task {self.task.id}: cancel requested")

    @property
    def has_pending(self) -> bool:
        """Whether a reported progress is not yet written (``flush`` would write it)."""
        return self._pending is not None

    def flush(self) -> None:
        """Write the latest reported progress now (also called when the attempt ends)."""
        if self._pending is None:
            return
        fraction, message = self._pending
        self._pending = None
        self._last_write = self._last_check = time.monotonic()
        try:
            with db.engine.begin() as connection:
                row = connection.execute(
                    fenced_update(self.task.id, self.task.claim_token)
                    .values(progress=fraction, progress_message=message)
                    .returning(AsyncTask.cancel_requested_at)
                ).first()
        except Exception as exc:  # progress is best effort: it must never fail the task
            log.warning("task %s: progress not recorded: %s", self.task.id, exc)
            return
        if row is not None and row.cancel_requested_at is not None:
            self.cancel_requested_at = row.cancel_requested_at

    def is_cancel_requested(self) -> bool:
        now = time.monotonic()
        if self.cancel_requested_at is None and now - self._last_check >= MIN_WRITE_INTERVAL:
            self._last_check = now
            try:
                with db.engine.connect() as connection:
                    self.cancel_requested_at = connection.execute(
                        select(AsyncTask.cancel_requested_at).where(AsyncTask.id == self.task.id)
                    ).scalar()
            except Exception as exc:
                log.warning("task %s: could not check for a cancel request: %s", self.task.id, exc)
        return self.cancel_requested_at is not None


def current_context() -> TaskContext:
    """The context of the attempt running in this thread or coroutine; an error outside one."""
    context = _current.get()
    if context is None:
        raise RuntimeError("report_progress / is_cancel_requested called outside a running task")
    return context


def enter(context: TaskContext | None) -> None:
    """Make ``context`` the running attempt's (``None`` when it ends)."""
    _current.set(context)
