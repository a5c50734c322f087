"""Processors with time limits and process isolation (ASYNC_TASK_PROCESSORS=tests.isolation_processors).

Module-level classes, so a child process finds them by name as well as through its registry.
"""

from __future__ import annotations

import os
import signal
import time

from webapp.tasks import RetryConfig, TaskInfo, TaskLimits, TaskProcessor, TaskResult

FAST_RETRY = RetryConfig(max_retry_count=1, strategy="FIXED", base_interval=0)


class SpinForeverProcessor(TaskProcessor):
    """``while True: pass`` in a child process with a 2 s hard limit; retried once."""

    task_type = "SPIN_FOREVER"
    retry_config = FAST_RETRY

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        while True:
            pass

    def get_limits(self) -> TaskLimits:
        return TaskLimits(time_limit=2, isolation="process")


class CrashProcessor(TaskProcessor):
    """Kills its own child process: ``how`` is ``segfault``, ``sigkill`` or ``exit``; retried once."""

    task_type = "CRASH"
    retry_config = FAST_RETRY

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        if payload.get("how") == "segfault":
            os.kill(os.getpid(), signal.SIGSEGV)
        if payload.get("how") == "sigkill":  # what the out-of-memory killer sends
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(1)

    def get_limits(self) -> TaskLimits:
        return TaskLimits(isolation="process")


class WhereAmIProcessor(TaskProcessor):
    """Answers the pid it ran in (and fails when asked to, with a message)."""

    task_type = "WHERE_AM_I"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        if payload.get("fail"):
            raise ValueError("asked to fail")
        return TaskResult.success({"pid": os.getpid()})

    def get_limits(self) -> TaskLimits:
        return TaskLimits(isolation="process", time_limit=30)


class CooperativeProcessor(TaskProcessor):
    """Reports progress until it is asked to stop; past its 1 s soft limit it is (CANCELLED)."""

    task_type = "COOPERATIVE"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.report_progress(0.5, "working")
            time.sleep(0.05)
        return TaskResult.success({"stopped": False})

    def get_limits(self) -> TaskLimits:
        return TaskLimits(soft_time_limit=1, time_limit=10, isolation=self.isolation)

    isolation = "thread"


class CooperativeChildProcessor(CooperativeProcessor):
    """The same in a child process: the cancel request reaches it through the database."""

    task_type = "COOPERATIVE_CHILD"
    isolation = "process"


class StubbornThreadProcessor(TaskProcessor):
    """Ignores every request and sleeps ``seconds`` in a thread past its 1 s hard limit; no retries."""

    task_type = "STUBBORN_THREAD"
    retry_config = RetryConfig(max_retry_count=0)

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        time.sleep(float(payload.get("seconds", 2.5)))
        return TaskResult.success({"finished": True})

    def get_limits(self) -> TaskLimits:
        return TaskLimits(time_limit=1)
