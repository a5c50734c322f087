"""Processors used by the tests (loaded through ASYNC_TASK_PROCESSORS=tests.processors)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import text

from webapp.extensions import db
from webapp.tasks import RetryConfig, RetryStrategy, TaskInfo, TaskProcessor, TaskResult

# Shared with the tests in the same process: what ran, in which order.
RUN_LOG: list[tuple[int, int]] = []  # (task id, attempt)
RUN_LOCK = threading.Lock()
RELEASE = threading.Event()


def record(task: TaskInfo) -> None:
    with RUN_LOCK:
        RUN_LOG.append((task.id, task.attempt))


class NoopProcessor(TaskProcessor):
    task_type = "NOOP"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        record(task)
        return TaskResult.success({"echo": payload})


@dataclass
class SleepPayload:
    seconds: float = 0.1
    tag: str = ""


class SleepProcessor(TaskProcessor):
    task_type = "SLEEP"
    payload_type = SleepPayload

    def process(self, task: TaskInfo, payload: SleepPayload) -> TaskResult:
        record(task)
        time.sleep(payload.seconds)
        return TaskResult.success({"slept": payload.seconds})


class FlakyProcessor(TaskProcessor):
    """Fails until attempt ``succeed_on`` (payload), with short FIXED retries."""

    task_type = "FLAKY"
    retry_config = RetryConfig(max_retry_count=3, strategy=RetryStrategy.FIXED, base_interval=0.3)

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        record(task)
        if task.attempt < int(payload.get("succeed_on", 99)):
            return TaskResult.failure(f"flaky failure on attempt {task.attempt}")
        return TaskResult.success({"attempt": task.attempt})


class ExpoFailProcessor(TaskProcessor):
    """Always fails; EXPONENTIAL retries from a small base so their times can be observed."""

    task_type = "EXPO_FAIL"
    retry_config = RetryConfig(max_retry_count=3, strategy=RetryStrategy.EXPONENTIAL, base_interval=0.4)

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        record(task)
        raise RuntimeError(f"boom {task.attempt}")


class FatalProcessor(TaskProcessor):
    task_type = "FATAL"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        record(task)
        return TaskResult.failure("bad input, retrying will not help", retryable=False)


@dataclass
class OrderPayload:
    customer: str
    amount: int
    tags: list[str] = field(default_factory=list)
    note: str | None = None
    rush: bool = False


class OrderProcessor(TaskProcessor):
    """Has a payload type and derives its priority from the payload."""

    task_type = "ORDER"
    payload_type = OrderPayload

    def get_priority(self, payload: OrderPayload) -> int:
        return 10 if payload.rush else 0

    def process(self, task: TaskInfo, payload: OrderPayload) -> TaskResult:
        record(task)
        return TaskResult.success({"customer": payload.customer, "amount": payload.amount})


class WritesThenFailsProcessor(TaskProcessor):
    """Writes a row of its own, then fails: the write must be rolled back with the attempt."""

    task_type = "WRITES_THEN_FAILS"
    retry_config = RetryConfig(max_retry_count=0)

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        record(task)
        db.session.execute(text("INSERT INTO audit_log (at, action, outcome) VALUES "
                                "(CURRENT_TIMESTAMP, :a, 'ok')"), {"a": f"processor-write-{task.id}"})
        if payload.get("fail", True):
            raise RuntimeError("failing after writing")
        return TaskResult.success()


class BlockingProcessor(TaskProcessor):
    """Waits until the test sets RELEASE (or the payload's timeout passes)."""

    task_type = "BLOCK"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        record(task)
        RELEASE.wait(float(payload.get("timeout", 10)))
        return TaskResult.success()


class StepsProcessor(TaskProcessor):
    """Works in ``steps`` steps of ``step_seconds``, reporting progress; honours cancel requests."""

    task_type = "STEPS"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        record(task)
        steps = int(payload.get("steps", 5))
        for step in range(steps):
            time.sleep(float(payload.get("step_seconds", 0.2)))
            self.report_progress((step + 1) / steps, f"step {step + 1} of {steps}")
        return TaskResult.success({"steps": steps})


class IgnoresCancelProcessor(TaskProcessor):
    """Runs to the end whatever is asked of it."""

    task_type = "IGNORES_CANCEL"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        record(task)
        time.sleep(float(payload.get("seconds", 1.0)))
        return TaskResult.success()


class PollsCancelProcessor(TaskProcessor):
    """Checks is_cancel_requested() and returns TaskResult.cancelled() itself."""

    task_type = "POLLS_CANCEL"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        record(task)
        deadline = time.monotonic() + float(payload.get("seconds", 10))
        while time.monotonic() < deadline:
            if self.is_cancel_requested():
                return TaskResult.cancelled("stopped at the operator's request")
            time.sleep(0.05)
        return TaskResult.success()
