"""Example task types, loaded by ``make run`` (ASYNC_TASK_PROCESSORS=webapp.examples) only."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from .tasks import RetryConfig, RetryStrategy, TaskInfo, TaskProcessor, TaskResult


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
