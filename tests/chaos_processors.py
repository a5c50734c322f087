"""The processor of the chaos run (tests/faults/test_chaos.py), loaded by the worker processes
and by gunicorn through ``ASYNC_TASK_PROCESSORS=tests.chaos_processors``.

Each execution leaves two records:

* a ``start`` line when ``process()`` begins and a ``done`` line when it returns, appended to
  ``$CHAOS_RUN_DIR/runs-<pid>.log`` (one file per process, one ``O_APPEND`` write per line, no
  transaction), so every call survives a ``kill -9`` of its worker, including attempts whose
  result is later refused or rolled back. The lines have the run log's format
  (``tests.proc_utils.read_run_log``): ``<event> <task id> <attempt> <pid>``;
* unless the payload says ``write_db: false``, an ``audit_log`` row (action ``proc-run``)
  written in the task's own transaction, so it exists only if the attempt's outcome committed.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from tests.faults.processors import write_run_row
from webapp.extensions import db
from webapp.tasks import RetryConfig, RetryStrategy, TaskInfo, TaskProcessor, TaskResult

CHAOS_TYPE = "CHAOS_WORK"
RUN_DIR_ENV = "CHAOS_RUN_DIR"
# What a payload's ``outcome`` asks for, and the status the task must end in.
OUTCOMES = {"succeed": "SUCCESS", "fail_once": "SUCCESS", "fail_always": "FAILURE"}


def run_log_of(run_dir: Path, pid: int) -> Path:
    """The execution log of one process."""
    return run_dir / f"runs-{pid}.log"


def note_execution(event: str, task: TaskInfo) -> None:
    """Append one line to this process's execution log (a single write: whole or absent)."""
    directory = os.environ.get(RUN_DIR_ENV)
    if not directory:
        return
    line = f"{event} {task.id} {task.attempt} {os.getpid()}\n".encode()
    fd = os.open(run_log_of(Path(directory), os.getpid()), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


class ChaosFailure(RuntimeError):
    """The failure a payload asked for."""


class ChaosProcessor(TaskProcessor):
    """Records the execution, writes its row, sleeps ``seconds``, then ends as ``outcome`` says.

    ``succeed``: SUCCESS at once; ``fail_once``: the first execution fails (retried 0.3 s later),
    later ones succeed; ``fail_always``: every execution fails, so the task ends FAILURE after
    its two retries. A failing execution raises, so its row is rolled back with it (a returned
    ``TaskResult.failure`` would keep the processor's writes).
    """

    task_type = CHAOS_TYPE
    retry_config = RetryConfig(max_retry_count=2, strategy=RetryStrategy.FIXED, base_interval=0.3)

    def process(self, task: TaskInfo, payload: dict[str, Any]) -> TaskResult:
        note_execution("start", task)
        if payload.get("write_db", True):
            write_run_row(task)  # before the sleep: a kill or a pause meets an open transaction
        time.sleep(float(payload.get("seconds", 0)))
        note_execution("done", task)
        outcome = payload.get("outcome", "succeed")
        if outcome == "fail_always" or (outcome == "fail_once" and task.retry_count == 0):
            raise ChaosFailure(f"{outcome} on purpose (attempt {task.attempt})")
        return TaskResult.success({"pid": os.getpid(), "attempt": task.attempt})


LOST_CONNECTION_TYPE = "CHAOS_LOST_CONNECTION"


class LostConnectionProcessor(TaskProcessor):
    """The chaos run's stuck task, made deterministic: attempt 1 writes its row, has its own
    database connection terminated (``pg_terminate_backend`` from another pooled connection, as
    a failover or an operator would) and then fails, so the rollback of its writes meets a dead
    connection. Later attempts succeed. PostgreSQL only."""

    task_type = LOST_CONNECTION_TYPE
    retry_config = RetryConfig(max_retry_count=2, strategy=RetryStrategy.FIXED, base_interval=0.2)

    def process(self, task: TaskInfo, payload: dict[str, Any]) -> TaskResult:
        note_execution("start", task)
        if task.attempt > 1:
            note_execution("done", task)
            return TaskResult.success({"attempt": task.attempt})
        write_run_row(task)
        own_backend = db.session.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with db.engine.connect() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": own_backend})
            other.commit()
        note_execution("done", task)
        raise ChaosFailure("attempt 1 fails after its connection was terminated")
