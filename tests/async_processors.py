"""``async def`` processors of tests/test_async_processors.py (ASYNC_TASK_PROCESSORS=tests.async_processors).

Each records what it saw in ``SEEN`` (task id -> thread name, progress context's task id) and
counts how many of its kind run at once (``RUNNING`` / ``PEAK``), from the event-loop thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass

from sqlalchemy import text

from webapp.extensions import db
from webapp.tasks import RetryConfig, RetryStrategy, TaskInfo, TaskProcessor, TaskResult
from webapp.tasks.limits import TaskLimits
from webapp.tasks.progress import current_context

log = logging.getLogger(__name__)
SEEN: dict[int, dict[str, object]] = {}
LOCK = threading.Lock()
RUNNING = [0]
PEAK = [0]
RELEASE = threading.Event()


def reset() -> None:
    with LOCK:
        SEEN.clear()
        RUNNING[0] = PEAK[0] = 0
    RELEASE.clear()


def record(task: TaskInfo, **extra: object) -> None:
    with LOCK:
        SEEN[task.id] = {"thread": threading.current_thread().name, "attempt": task.attempt,
                         "context_task": current_context().task.id, **extra}


class AsyncEchoProcessor(TaskProcessor):
    task_type = "ASYNC_ECHO"

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        await asyncio.sleep(0)
        record(task)
        return TaskResult.success({"echo": payload})


class AsyncDictProcessor(TaskProcessor):
    """Returns a plain dict (a success with that data), like a thread-run processor may."""

    task_type = "ASYNC_DICT"

    async def process(self, task: TaskInfo, payload: dict) -> dict:
        return {"n": payload.get("n")}


@dataclass
class SleepPayload:
    seconds: float = 0.5


class AsyncSleepProcessor(TaskProcessor):
    """Sleeps on the loop (``asyncio.sleep``); counts how many sleep at once."""

    task_type = "ASYNC_SLEEP"
    payload_type = SleepPayload

    async def process(self, task: TaskInfo, payload: SleepPayload) -> TaskResult:
        with LOCK:
            RUNNING[0] += 1
            PEAK[0] = max(PEAK[0], RUNNING[0])
        try:
            record(task)
            await asyncio.sleep(payload.seconds)
            # Still this task's context after the others ran on the loop meanwhile.
            assert current_context().task.id == task.id
        finally:
            with LOCK:
                RUNNING[0] -= 1
        return TaskResult.success({"slept": payload.seconds})


class AsyncFlakyProcessor(TaskProcessor):
    """Fails (by result) until attempt ``succeed_on``; short FIXED retries."""

    task_type = "ASYNC_FLAKY"
    retry_config = RetryConfig(max_retry_count=3, strategy=RetryStrategy.FIXED, base_interval=0.2)

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        await asyncio.sleep(0)
        if task.attempt < int(payload.get("succeed_on", 99)):
            return TaskResult.failure(f"async flaky failure on attempt {task.attempt}")
        return TaskResult.success({"attempt": task.attempt})


class AsyncRaisesProcessor(TaskProcessor):
    """Raises; one retry after 0.2 s, then FAILURE."""

    task_type = "ASYNC_RAISES"
    retry_config = RetryConfig(max_retry_count=1, strategy=RetryStrategy.FIXED, base_interval=0.2)

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        await asyncio.sleep(0)
        raise ValueError(f"async boom {task.attempt}")


class AsyncStepsProcessor(TaskProcessor):
    """``steps`` steps of ``step_seconds``, reporting progress tagged with its ``tag``."""

    task_type = "ASYNC_STEPS"

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        steps, tag = int(payload.get("steps", 5)), str(payload.get("tag", ""))
        for step in range(steps):
            await asyncio.sleep(float(payload.get("step_seconds", 0.1)))
            self.report_progress((step + 1) / steps, f"{tag} step {step + 1} of {steps}")
        return TaskResult.success({"tag": tag})


class AsyncPollsCancelProcessor(TaskProcessor):
    """Polls ``is_cancel_requested()`` and answers ``TaskResult.cancelled`` itself."""

    task_type = "ASYNC_POLLS_CANCEL"

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        for _ in range(int(float(payload.get("seconds", 20)) / 0.05)):
            if self.is_cancel_requested():
                return TaskResult.cancelled("stopped at the operator's request")
            await asyncio.sleep(0.05)
        return TaskResult.success()


class AsyncBlockProcessor(TaskProcessor):
    """Waits (on the loop) until the test sets RELEASE or ``timeout`` passes; notes a cancellation."""

    task_type = "ASYNC_BLOCK"

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        record(task)
        try:
            for _ in range(int(float(payload.get("timeout", 10)) / 0.02)):
                if RELEASE.is_set():
                    break
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            record(task, cancelled=True)
            raise
        return TaskResult.success()


class AsyncWritesProcessor(TaskProcessor):
    """Writes an audit row through its session (off the loop), then fails or succeeds."""

    task_type = "ASYNC_WRITES"
    retry_config = RetryConfig(max_retry_count=0)

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        await asyncio.to_thread(
            db.session.execute,
            text("INSERT INTO audit_log (at, action, outcome) VALUES (CURRENT_TIMESTAMP, :a, 'ok')"),
            {"a": f"async-write-{task.id}"})
        if payload.get("fail"):
            raise RuntimeError("failing after writing")
        return TaskResult.success()


class AsyncSecretProcessor(TaskProcessor):
    """Logs its payload's secret: the log line must show it masked."""

    task_type = "ASYNC_SECRET"
    sensitive_fields = ("password",)

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        await asyncio.sleep(0)
        log.warning("connecting with %s", payload["password"])
        return TaskResult.success()


class AsyncSlowProcessor(TaskProcessor):
    """Has a hard time limit of 0.5 s; sleeps past it, or times out on its own first."""

    task_type = "ASYNC_SLOW"
    retry_config = RetryConfig(max_retry_count=0)

    def get_limits(self) -> TaskLimits:
        return TaskLimits(time_limit=0.5)

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        if payload.get("own_timeout"):
            await asyncio.wait_for(asyncio.sleep(5), timeout=0.05)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            record(task, stopped=True)
            raise
        return TaskResult.success()


class AsyncSoftLimitProcessor(TaskProcessor):
    """Reports progress in a loop; its soft limit (0.5 s) asks it to stop long before the hard one."""

    task_type = "ASYNC_SOFT"
    retry_config = RetryConfig(max_retry_count=0)

    def get_limits(self) -> TaskLimits:
        return TaskLimits(soft_time_limit=0.5, time_limit=20)

    async def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        for step in range(400):
            await asyncio.sleep(0.05)
            self.report_progress(step / 400, f"step {step}")
        return TaskResult.success()
