"""Time limits and isolation of a running attempt, as a consumer applies them.

``TaskLimits.soft_time_limit`` and ``time_limit`` (seconds, counted from when ``process()``
starts; an operator's runtime override of ``time_limit`` applies from the next attempt):

* past the **soft** limit the attempt gets a cancel request, the cooperative cancel an operator
  can send (``is_cancel_requested()`` turns True, ``report_progress`` raises ``TaskCancelled``),
  and its timeline a ``SOFT_TIME_LIMIT`` event. A processor that stops ends CANCELLED.
* past the **hard** limit the attempt fails with "time limit of N s exceeded", a retryable
  failure that follows the retry policy. With ``isolation="process"`` the child process running
  it is killed (``isolation.py``). A thread cannot be killed: the attempt is marked over its
  limit (a warning in the log, a ``TIME_LIMIT_EXCEEDED`` event on its timeline, and a cancel
  request), it keeps its task PROCESSING until ``process()`` returns, and whatever it returns
  then is discarded (its writes rolled back) for the time-limit failure. Code that may hang
  belongs in process isolation.

A cancel request made by a time limit is withdrawn when the attempt fails at the hard limit, so
that failure is retried (a failure after an operator's cancel request ends the task CANCELLED).
Thread-run attempts are watched by one watchdog thread per consumer; attempts without time
limits cost one dictionary lookup.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from flask import Flask
from sqlalchemy.orm import Session

from ..config import EngineSettings
from ..extensions import db
from .attempt import TaskInfo
from .errors import TaskCancelled
from .fencing import fenced_update
from .isolation import ChildPool, child_config, processor_ref
from .limit_overrides import OVERRIDE_CACHE_SECONDS, LimitOverrides
from .limits import TaskLimits, time_limit_message
from .models import AsyncTask, TaskEventKind
from .processor import TaskProcessor, TaskResult
from .progress import TaskContext
from .store import TaskStore

log = logging.getLogger(__name__)

PRUNE_EVERY = 1024  # deadlines scheduled between two sweeps of ended attempts out of the heap
SETTLE_TIMEOUT = 10.0  # seconds an ending attempt waits for the watchdog's write in flight
Value = TypeVar("Value")


class TimeLimitExceeded(Exception):
    """A thread-run attempt returned after its hard time limit: it fails (retryable)."""


class TimeLimitEvents(TaskStore):
    """The database side of time limits: stop requests and their timeline events."""

    def request_stop(self, task: TaskInfo, kind: TaskEventKind, message: str,
                     worker_id: str | None) -> datetime | None:
        """Ask the running attempt to stop and record why; the request's time when this made it.

        Nothing is written when the attempt's lease is gone (it ended meanwhile). When a cancel
        was already requested (by an operator) only the event is added.
        """
        self.begin_write()
        held = self.session.execute(
            fenced_update(task.id, task.claim_token).values(updated_at=self.now())
            .returning(AsyncTask.cancel_requested_at)).first()
        if held is None:
            self.session.rollback()
            return None
        requested_at = None
        if held.cancel_requested_at is None:
            requested_at = self.session.execute(
                fenced_update(task.id, task.claim_token, AsyncTask.cancel_requested_at.is_(None))
                .values(cancel_requested_at=self.now()).returning(AsyncTask.cancel_requested_at)).scalar()
        self.write_events([self.event(task.id, kind, attempt=task.attempt, worker_id=worker_id,
                                      message=message)])
        self.session.commit()
        return requested_at

    def withdraw_stop(self, task: TaskInfo, requested_at: datetime) -> None:
        """Take back the stop request a time limit made (an operator's later one cannot exist:
        theirs is only written while none is recorded)."""
        self.begin_write()
        self.session.execute(
            fenced_update(task.id, task.claim_token, AsyncTask.cancel_requested_at == requested_at)
            .values(cancel_requested_at=None))
        self.session.commit()


@dataclass(eq=False)
class Watch:
    """One thread-run attempt under time limits, as the watchdog and the worker thread share it."""

    task: TaskInfo
    limits: TaskLimits
    context: TaskContext
    lock: threading.Lock = field(default_factory=threading.Lock)
    settled: threading.Event = field(default_factory=threading.Event)  # the hard-limit write is done
    done: bool = False
    over: bool = False
    requested_at: datetime | None = None  # a stop request this attempt's time limits made


class Watchdog:
    """One thread that fires the soft and hard deadlines of every watched attempt in time."""

    def __init__(self) -> None:
        self._due: list[tuple[float, int, Callable[[Watch], None], Watch]] = []
        self._order = itertools.count()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def at(self, when: float, watch: Watch, action: Callable[[Watch], None]) -> None:
        """Call ``action(watch)`` at ``time.monotonic()`` ``when`` unless the attempt ended."""
        with self._changed:
            order = next(self._order)
            if order % PRUNE_EVERY == 0:  # attempts that ended long before their limits: drop them
                self._due = [entry for entry in self._due if not entry[3].done]
                heapq.heapify(self._due)
            heapq.heappush(self._due, (when, order, action, watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="task-time-limits", daemon=True)
                self._thread.start()
            self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify()

    def _loop(self) -> None:
        while True:
            with self._changed:
                while not self._closed and (not self._due or self._due[0][0] > time.monotonic()):
                    self._changed.wait(self._due[0][0] - time.monotonic() if self._due else None)
                if self._closed:
                    return
                _, _, action, watch = heapq.heappop(self._due)
            if watch.done:
                continue
            try:
                action(watch)
            except Exception:
                log.exception("task %s: applying its time limit failed", watch.task.id)


class AttemptLimits:
    """A consumer's time limits and process isolation (``Consumer._execute`` asks it)."""

    def __init__(self, app: Flask, settings: EngineSettings, worker_id: str, threads: int) -> None:
        self.app = app
        self.worker_id = worker_id
        self.engine = app.extensions["async_task"]
        self.registry = self.engine.registry
        self.settings = settings
        self.threads = threads
        self.watchdog = Watchdog()
        self._children: ChildPool | None = None
        self._children_lock = threading.Lock()
        # Attempts (id, claim token) a soft limit asked to stop, until they end: their
        # cancellation says so instead of naming an operator.
        self._soft_stopped: dict[tuple[int, str], float] = {}

    def limits_for(self, task: TaskInfo) -> TaskLimits:
        """The type's limits now, with an operator's override (re-read at most every 2 s)."""
        cached = getattr(self.engine, "limit_overrides_cache", None)
        if cached is not None and time.monotonic() - cached[0] <= OVERRIDE_CACHE_SECONDS:
            override = cached[1].get(task.task_type)  # the common case: no session, no query
            declared = self.registry.limits_of(task.task_type)
            return override.applied_to(declared) if override else declared
        # A session of its own: the processor's session must stay out of a transaction until
        # it starts one (the consumer batches the outcomes of processors that wrote nothing).
        with Session(db.engine) as session:
            return LimitOverrides(self.registry, session).effective_limits(task.task_type)

    # -- process isolation --------------------------------------------------------------------

    def start(self) -> None:
        """Start a child process at once when a registered type runs isolated."""
        if any(self.registry.limits_of(name).isolation == "process" for name in self.registry.task_types()):
            self.children().warm()

    def children(self) -> ChildPool:
        """The child pool, created at its first use."""
        with self._children_lock:
            if self._children is None:
                self._children = ChildPool(child_config(self.app), max_idle=self.threads,
                                           max_tasks_per_child=self.settings.max_tasks_per_child,
                                           max_memory_per_child=self.settings.max_memory_per_child)
            return self._children

    def run_isolated(self, processor: TaskProcessor, task: TaskInfo,
                     limits: TaskLimits) -> tuple[TaskResult, str | None]:
        """Run the attempt in a child process: killed past the hard limit, asked to stop past the soft."""
        requested: list[datetime] = []

        def soft_limit_passed() -> None:
            seconds = limits.soft_time_limit or 0.0
            at = self._store(lambda store: store.request_stop(
                task, TaskEventKind.SOFT_TIME_LIMIT, soft_limit_message(seconds), self.worker_id))
            if at is not None:
                requested.append(at)

        run = self.children().run(task, processor_ref(processor), soft=limits.soft_time_limit,
                                  hard=limits.time_limit, on_soft=soft_limit_passed)
        if requested and run.timed_out:  # the hard limit's failure is retried, not taken for a cancel
            self._store(lambda store: store.withdraw_stop(task, requested[0]))
        if requested and run.result.is_cancelled:
            return TaskResult.cancelled(soft_limit_cancel_message(limits.soft_time_limit or 0.0)), None
        return run.result, run.traceback

    def cancelled_result(self, task: TaskInfo) -> TaskResult:
        """The outcome of a thread-run attempt that stopped on a cancel request (operator or soft limit)."""
        seconds = self._soft_stopped.pop((task.id, task.claim_token), None)
        return TaskResult.cancelled() if seconds is None else TaskResult.cancelled(soft_limit_cancel_message(seconds))

    # -- thread-run attempts ------------------------------------------------------------------

    @contextlib.contextmanager
    def watch(self, task: TaskInfo, limits: TaskLimits, context: TaskContext) -> Iterator[None]:
        """Around ``process()`` in a worker thread: apply the soft and hard limits.

        Raises ``TimeLimitExceeded`` (whatever ``process()`` returned or raised) when the
        attempt ran past its hard limit.
        """
        if limits.time_limit is None and limits.soft_time_limit is None:
            yield
            return
        watch = Watch(task, limits, context)
        started = time.monotonic()
        if limits.soft_time_limit is not None:
            self.watchdog.at(started + limits.soft_time_limit, watch, self._soft_limit_passed)
        if limits.time_limit is not None:
            self.watchdog.at(started + limits.time_limit, watch, self._hard_limit_passed)
        stopped = False
        try:
            yield
        except TaskCancelled:
            stopped = True
            raise
        finally:
            with watch.lock:
                watch.done = True
                over = watch.over
            if stopped and not over and watch.requested_at is not None and limits.soft_time_limit is not None:
                self._soft_stopped[(task.id, task.claim_token)] = limits.soft_time_limit  # read by cancelled_result
            if over:
                watch.settled.wait(SETTLE_TIMEOUT)
                if watch.requested_at is not None:
                    requested_at = watch.requested_at
                    self._store(lambda store: store.withdraw_stop(task, requested_at))
                raise TimeLimitExceeded(time_limit_message(limits.time_limit or 0.0))

    def _soft_limit_passed(self, watch: Watch) -> None:
        seconds = watch.limits.soft_time_limit or 0.0
        log.warning("task %s (%s) attempt %s: %s; asking it to stop", watch.task.id, watch.task.task_type,
                    watch.task.attempt, soft_limit_message(seconds))
        at = self._store(lambda store: store.request_stop(
            watch.task, TaskEventKind.SOFT_TIME_LIMIT, soft_limit_message(seconds), self.worker_id))
        self._note_request(watch, at)

    def _hard_limit_passed(self, watch: Watch) -> None:
        with watch.lock:
            if watch.done:
                return
            watch.over = True
        try:
            message = (f"{time_limit_message(watch.limits.time_limit or 0.0)}: the attempt runs in a thread, "
                       "which cannot be stopped; it fails when process() returns (isolation='process' "
                       "stops such code)")
            log.warning("task %s (%s) attempt %s: %s", watch.task.id, watch.task.task_type, watch.task.attempt,
                        message)
            at = self._store(lambda store: store.request_stop(
                watch.task, TaskEventKind.TIME_LIMIT_EXCEEDED, message, self.worker_id))
            self._note_request(watch, at)
        finally:
            watch.settled.set()

    @staticmethod
    def _note_request(watch: Watch, at: datetime | None) -> None:
        if at is not None:
            watch.requested_at = watch.requested_at or at
            watch.context.cancel_requested_at = at  # seen by the processor's next check, no read needed

    def _store(self, write: Callable[[TimeLimitEvents], Value]) -> Value | None:
        """Run ``write`` in an app context (and session) of its own; a failure is logged."""
        with self.app.app_context():
            try:
                return write(TimeLimitEvents())
            except Exception:
                log.exception("recording a time limit failed")
                return None
            finally:
                db.session.remove()

    def close(self) -> None:
        """Stop the watchdog and the child processes."""
        self.watchdog.close()
        with self._children_lock:
            children, self._children = self._children, None
        if children is not None:
            children.close()


def soft_limit_cancel_message(seconds: float) -> str:
    """The error of an attempt that stopped when its soft limit asked it to."""
    return f"cancelled: soft time limit of {seconds:g} s passed"


def soft_limit_message(seconds: float) -> str:
    """The timeline's words for an attempt past its soft limit."""
    return f"soft time limit of {seconds:g} s passed; the attempt was asked to stop"
