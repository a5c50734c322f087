"""Example task types, loaded by ``make run`` (ASYNC_TASK_PROCESSORS=webapp.examples) only, and
the few example tasks ``make run`` seeds on its first run (``python -m webapp.examples seed``)."""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from . import create_app
from .tasks import AsyncTaskService, RetryConfig, RetryStrategy, TaskInfo, TaskProcessor, TaskResult


@dataclass
class CreateServerPayload:
    name: str
    config: dict = field(default_factory=dict)
    priority: int = 0
    fail_rate: float = 0.3
    seconds: float = 3.0


class CreateServerProcessor(TaskProcessor):
    """Simulates provisioning a cloud server: takes a few seconds and sometimes fails."""

    task_type = "CREATE_SERVER"
    payload_type = CreateServerPayload

    def process(self, task: TaskInfo, payload: CreateServerPayload) -> TaskResult:
        time.sleep(max(0.0, min(payload.seconds, 60.0)))
        if random.random() < payload.fail_rate:
            return TaskResult.failure("cloud API timed out while creating the server")
        return TaskResult.success({"serverId": f"srv-{task.id:06d}", "name": payload.name})

    def get_retry_config(self) -> RetryConfig:
        return RetryConfig(max_retry_count=3, strategy=RetryStrategy.EXPONENTIAL, base_interval=5)

    def get_priority(self, payload: CreateServerPayload) -> int:
        return payload.priority


@dataclass
class SendReportPayload:
    report: str
    recipient: str | None = None


class SendReportProcessor(TaskProcessor):
    """Builds a small report; always succeeds quickly."""

    task_type = "SEND_REPORT"
    payload_type = SendReportPayload
    retry_config = RetryConfig(max_retry_count=2, strategy=RetryStrategy.FIXED, base_interval=10)

    def process(self, task: TaskInfo, payload: SendReportPayload) -> TaskResult:
        time.sleep(0.5)
        return TaskResult.success({"report": payload.report, "rows": random.randint(10, 500)})


class AlwaysFailsProcessor(TaskProcessor):
    """Fails every time (to see retries and FAILURE in the console)."""

    task_type = "ALWAYS_FAILS"
    retry_config = RetryConfig(max_retry_count=2, strategy=RetryStrategy.FIXED, base_interval=3)

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        raise RuntimeError(f"deliberate failure on attempt {task.attempt}")


@dataclass
class ImportFilePayload:
    file: str
    rows: int = 200
    seconds: float = 15.0
    fail_at_row: int | None = None


class ImportFileProcessor(TaskProcessor):
    """Imports a (simulated) file row by row for ``seconds``, reporting progress as it goes.

    It honours a cancel request at its next progress report (``report_progress`` raises), and
    ``fail_at_row`` makes it stop with a non-retryable error, to try edit and retry.
    """

    task_type = "IMPORT_FILE"
    payload_type = ImportFilePayload
    retry_config = RetryConfig(max_retry_count=0)

    def process(self, task: TaskInfo, payload: ImportFilePayload) -> TaskResult:
        rows = max(1, min(payload.rows, 100_000))
        pause = max(0.0, min(payload.seconds, 600.0)) / rows
        for row in range(1, rows + 1):
            if payload.fail_at_row is not None and row == payload.fail_at_row:
                return TaskResult.failure(f"{payload.file}: row {row}: invalid date '2026-13-01'",
                                          retryable=False)
            time.sleep(pause)
            self.report_progress(row / rows, f"row {row} of {rows}")
        return TaskResult.success({"file": payload.file, "rows": rows})


SEED_CREATOR = "admin@example.com"  # its mails land in the dev outbox under make run


def example_tasks(now: datetime) -> list[dict[str, Any]]:
    """A few tasks of every example type: some succeed, some fail and retry, one reports
    progress, one fails for good (to try edit and retry), one is due in a day."""
    return [
        {"task_type": "CREATE_SERVER", "payload": {"name": "web-1", "fail_rate": 0.0}},
        {"task_type": "CREATE_SERVER", "payload": {"name": "web-2", "fail_rate": 0.5, "priority": 5}},
        {"task_type": "CREATE_SERVER", "payload": {"name": "db-1", "seconds": 6.0, "fail_rate": 0.0}},
        {"task_type": "SEND_REPORT", "payload": {"report": "daily"}},
        {"task_type": "SEND_REPORT", "payload": {"report": "weekly"},
         "run_at": (now + timedelta(days=1)).isoformat()},
        {"task_type": "IMPORT_FILE", "payload": {"file": "customers.csv", "rows": 300, "seconds": 30.0}},
        {"task_type": "IMPORT_FILE", "payload": {"file": "orders.csv", "rows": 100, "seconds": 5.0,
                                                 "fail_at_row": 42}},
        {"task_type": "ALWAYS_FAILS", "payload": {}},
    ]


def seed_examples(service: AsyncTaskService) -> int:
    """Queue the example tasks if no task exists yet (a first run); how many were queued."""
    if service.list_tasks(limit=1).items:
        return 0
    tasks = [{**task, "created_by": SEED_CREATOR} for task in example_tasks(datetime.now(UTC))]
    return len(service.submit_many(tasks, principal="cli"))


def main(argv: list[str]) -> int:
    """``python -m webapp.examples seed``: what ``make run`` calls before it starts."""
    if argv != ["seed"]:
        print("usage: python -m webapp.examples seed", file=sys.stderr)
        return 2
    app = create_app()
    with app.app_context():
        queued = seed_examples(AsyncTaskService())
    if queued:
        print(f"  Queued {queued} example tasks (a first run): see them at /tasks.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
