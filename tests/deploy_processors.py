"""Processors for the deployment tests: gunicorn workers and ``flask tasks worker`` processes
load them through ``ASYNC_TASK_PROCESSORS=tests.deploy_processors``.

Every call of ``process()`` appends ``<task id> <attempt> <pid>`` to the file named by
``DEPLOY_RUN_LOG`` with one ``O_APPEND`` write (atomic across processes), and logs one line,
so the tests can count runs per task and check what the log line carries.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from webapp.tasks import TaskInfo, TaskProcessor, TaskResult

RUN_LOG_ENV = "DEPLOY_RUN_LOG"
TASK_TYPE = "DEPLOY_RECORD"
log = logging.getLogger("tests.deploy_processors")


def read_runs(path: str | os.PathLike[str]) -> list[tuple[int, int, int]]:
    """(task id, attempt, pid) for every recorded run, in the order they were written."""
    try:
        with open(path) as handle:
            return [(int(a), int(b), int(c)) for a, b, c in (line.split() for line in handle if line.strip())]
    except FileNotFoundError:
        return []


class DeployRecordProcessor(TaskProcessor):
    """Records the run, logs it, sleeps ``seconds`` (payload, default 0) and succeeds."""

    task_type = TASK_TYPE

    def process(self, task: TaskInfo, payload: dict[str, Any]) -> TaskResult:
        path = os.environ.get(RUN_LOG_ENV)
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{task.id} {task.attempt} {os.getpid()}\n".encode())
            finally:
                os.close(fd)
        log.info("recorded run of task %s", task.id)
        seconds = float(payload.get("seconds", 0))
        if seconds > 0:
            time.sleep(seconds)
        return TaskResult.success({"pid": os.getpid()})
