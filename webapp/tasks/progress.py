"""The running attempt's context: progress reports and cancel requests.

The context lives in a ``ContextVar``: a worker thread has its own, and so does every coroutine
the async runner starts (``async_runner.py``), so attempts running side by side on one event
loop never see each other's task.

Progress is written in its own short transaction (not the processor's), so it is visible while
the task runs, and at most every ``MIN_WRITE_INTERVAL`` seconds per task, so reporting in a tight
loop costs almost nothing. Each write also reads back whether a cancel was requested.

Called from a coroutine (an async processor), a write or a cancel check never blocks the event
loop: it runs on the loop's executor, one at a time per attempt, and what it reads back is seen
by the next call; ``settle()`` writes the last progress when the attempt ends.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar, copy_context
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
        self._pending_lock = threading.Lock()  # a coroutine reports while the executor writes
        self._in_flight: asyncio.Future[None] | None = None  # an async attempt's write or check
        self.cancel_requested_at: datetime | None = None

    def report_progress(self, fraction: float, message: str | None = None) -> None:
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not math.isfinite(fraction):
            raise ValidationError("progress must be a number from 0 to 1", field="progress")
        fraction = min(1.0, max(0.0, float(fraction)))
        message = None if message is None else str(message)[:500]
        with self._pending_lock:
            self._pending = (fraction, message)
        now = time.monotonic()
        if now - self._last_write >= MIN_WRITE_INTERVAL:
            self._last_write = now
            self._run_soon(self.flush)
        if self.cancel_requested_at is not None:
            raise TaskCancelled(f"task {self.task.id}: cancel requested")

    def _run_soon(self, work: Callable[[], None]) -> None:
        """Run ``work`` now in a thread; from a coroutine, on the loop's executor (one at a time)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a worker thread (or a processor's own asyncio.to_thread call)
            work()
            return
        if self._in_flight is None or self._in_flight.done():  # else: the next call does it
            self._in_flight = loop.run_in_executor(None, copy_context().run, work)

    async def settle(self) -> None:
        """From the coroutine of an ending attempt: let a write in flight land, then write the last."""
        if self._in_flight is not None:
            await asyncio.wait([self._in_flight])
        if self._pending is not None:
            await asyncio.to_thread(self.flush)

    def flush(self) -> None:
        """Write the latest reported progress now (also called when the attempt ends)."""
        with self._pending_lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        fraction, message = pending
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
            self._run_soon(self._check_cancel)
        return self.cancel_requested_at is not None

    def _check_cancel(self) -> None:
        try:
            with db.engine.connect() as connection:
                requested = connection.execute(
                    select(AsyncTask.cancel_requested_at).where(AsyncTask.id == self.task.id)
                ).scalar()
        except Exception as exc:
            log.warning("task %s: could not check for a cancel request: %s", self.task.id, exc)
            return
        if requested is not None:
            self.cancel_requested_at = requested


def current_context() -> TaskContext:
    """The context of the attempt running in this thread or coroutine; an error outside one."""
    context = _current.get()
    if context is None:
        raise RuntimeError("report_progress / is_cancel_requested called outside a running task")
    return context


def enter(context: TaskContext | None) -> None:
    """Make ``context`` the running attempt's (``None`` when it ends)."""
    _current.set(context)
