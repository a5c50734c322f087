"""Processors of the fault suite, loaded next to ``tests.proc_processors``.

Worker subprocesses get ``ASYNC_TASK_PROCESSORS=tests.proc_processors,tests.faults.processors``;
the in-process race test loads this module alone. Every attempt appends ``start``/``done``
lines to the run log (``PROC_RUN_LOG``, see tests/proc_processors.py) and, where it says so,
writes an ``audit_log`` row (action ``proc-run``) in the task's own transaction, so the row
exists only if the attempt's outcome was committed.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

from sqlalchemy import insert

from tests.proc_processors import RUN_ACTION, note_run
from webapp.extensions import db
from webapp.tasks import RetryConfig, RetryStrategy, TaskInfo, TaskProcessor, TaskResult
from webapp.tasks.models import AuditEntry

POISON_TYPE = "FAULT_POISON"
FAR_RETRY_TYPE = "FAULT_FAR_RETRY"
CLOCK_TYPE = "FAULT_CLOCK"
RACE_TYPE = "FAULT_RACE"
FAR_RETRY_SECONDS = 3600.0


def write_run_row(task: TaskInfo) -> None:
    """The attempt's row in the task's own transaction (committed only with its outcome)."""
    pid = os.getpid()
    db.session.execute(insert(AuditEntry).values(
        actor=f"pid:{pid}", action=RUN_ACTION, target_type="task", target_id=str(task.id),
        outcome="ok", detail={"attempt": task.attempt, "pid": pid}))


class PoisonPillProcessor(TaskProcessor):
    """Kills the whole worker process on every attempt (``os._exit(1)``): a poison pill."""

    task_type = POISON_TYPE
    retry_config = RetryConfig(max_retry_count=1, strategy=RetryStrategy.FIXED, base_interval=0.2)

    def process(self, task: TaskInfo, payload: dict[str, Any]) -> TaskResult:
        note_run("start", task)
        time.sleep(float(payload.get("seconds", 0.2)))  # let the other threads be mid-task too
        os._exit(1)


class FarRetryProcessor(TaskProcessor):
    """Fails its first attempt with a retry scheduled an hour ahead; succeeds after that."""

    task_type = FAR_RETRY_TYPE
    retry_config = RetryConfig(max_retry_count=3, strategy=RetryStrategy.FIXED,
                               base_interval=FAR_RETRY_SECONDS)

    def process(self, task: TaskInfo, payload: dict[str, Any]) -> TaskResult:
        note_run("start", task)
        note_run("done", task)
        if task.attempt == 1:
            return TaskResult.failure("first attempt fails on purpose; retry in an hour")
        return TaskResult.success({"attempt": task.attempt})


class ClockProcessor(TaskProcessor):
    """Returns the worker's own wall clock (``time.time()``), to show a faked clock is in effect."""

    task_type = CLOCK_TYPE

    def process(self, task: TaskInfo, payload: dict[str, Any]) -> TaskResult:
        note_run("start", task)
        note_run("done", task)
        return TaskResult.success({"worker_time": time.time(), "pid": os.getpid()})


class RaceProcessor(TaskProcessor):
    """A short attempt whose ending races an operator's cancel.

    Payload ``mode``: ``succeed`` (ignores cancel requests), ``cooperative`` (returns
    ``TaskResult.cancelled()`` if a cancel was requested by the time it looks) or ``fail_first``
    (attempt 1 fails, with a retry due almost at once, so a cancel can also meet it RETRYING).
    Only a succeeding attempt writes its row (in the task's transaction), so a task ends SUCCESS
    with exactly one committed row and any other way with none. ``seconds`` bounds the random
    pauses that widen the race windows.
    """

    task_type = RACE_TYPE
    retry_config = RetryConfig(max_retry_count=2, strategy=RetryStrategy.FIXED, base_interval=0.05)

    def process(self, task: TaskInfo, payload: dict[str, Any]) -> TaskResult:
        pause = float(payload.get("seconds", 0.01))
        mode = payload.get("mode", "succeed")
        time.sleep(random.uniform(0, pause))
        if mode == "fail_first" and task.attempt == 1:
            return TaskResult.failure("first attempt fails on purpose")
        if mode == "cooperative" and self.is_cancel_requested():
            return TaskResult.cancelled("stopped at the operator's request")
        write_run_row(task)
        time.sleep(random.uniform(0, pause))  # between the write and the fenced finish
        return TaskResult.success({"attempt": task.attempt})
