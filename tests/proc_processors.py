"""Processors for the process-level tests (``flask tasks worker`` subprocesses).

Loaded by the workers through ``ASYNC_TASK_PROCESSORS=tests.proc_processors`` and by the test
process that submits the tasks. Each run leaves two records:

* a line in the file named by ``PROC_RUN_LOG`` (outside any transaction, so it shows every
  call of ``process()``, including attempts whose result is later refused or rolled back):
  ``start <task id> <attempt> <pid>`` when the attempt begins, ``done ...`` when it returns;
* an ``audit_log`` row (action ``proc-run``) written in the task's own transaction, so it
  exists only if the attempt's outcome was committed.
"""

from __future__ import annotations

import os
import time
from typing import Any

from sqlalchemy import insert

from webapp.extensions import db
from webapp.tasks import RetryConfig, RetryStrategy, TaskInfo, TaskProcessor, TaskResult
from webapp.tasks.models import AuditEntry

RUN_LOG_ENV = "PROC_RUN_LOG"
RUN_ACTION = "proc-run"


def note_run(event: str, task: TaskInfo) -> None:
    """Append one line to the run log with a single O_APPEND write (atomic across processes)."""
    path = os.environ.get(RUN_LOG_ENV)
    if not path:
        return
    line = f"{event} {task.id} {task.attempt} {os.getpid()}\n".encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class RecordingProcessor(TaskProcessor):
    """Records the run, writes a row in the task's transaction, then sleeps if asked.

    Payload: ``seconds`` (sleep length, default 0), ``slow_attempts`` (the attempts that
    sleep; default every attempt, so a re-run after a recovery can be quick) and ``write_db``
    (default true; false exercises the path of processors that do no database work).
    """

    task_type = "PROC_RECORD"
    retry_config = RetryConfig(max_retry_count=3, strategy=RetryStrategy.FIXED, base_interval=0.2)

    def process(self, task: TaskInfo, payload: dict[str, Any]) -> TaskResult:
        pid = os.getpid()
        note_run("start", task)
        # Written before the sleep on purpose: the transaction stays open across a pause or a
        # kill, and must still be rolled back if this attempt loses its lease.
        if payload.get("write_db", True):
            db.session.execute(insert(AuditEntry).values(
                actor=f"pid:{pid}", action=RUN_ACTION, target_type="task", target_id=str(task.id),
                outcome="ok", detail={"attempt": task.attempt, "pid": pid}))
        seconds = float(payload.get("seconds", 0))
        slow_attempts = payload.get("slow_attempts")
        if seconds > 0 and (slow_attempts is None or task.attempt in slow_attempts):
            time.sleep(seconds)
        note_run("done", task)
        return TaskResult.success({"pid": pid, "attempt": task.attempt})
