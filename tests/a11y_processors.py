"""Processors that hold a task in a status for as long as the accessibility check looks at it:
one stays PROCESSING (with progress) until released, one stays RETRYING for an hour."""

from __future__ import annotations

import threading

from webapp.tasks import RetryConfig, RetryStrategy, TaskInfo, TaskProcessor, TaskResult

HOLD_RELEASE = threading.Event()


class HoldProcessor(TaskProcessor):
    """Reports some progress, then runs until HOLD_RELEASE is set (or two minutes pass)."""

    task_type = "A11Y_HOLD"

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        self.report_progress(0.4, "step 2 of 5")
        HOLD_RELEASE.wait(120)
        return TaskResult.success()


class RetryLaterProcessor(TaskProcessor):
    """Fails once and waits an hour for its retry: RETRYING while the pages are checked."""

    task_type = "A11Y_RETRY_LATER"
    retry_config = RetryConfig(max_retry_count=1, strategy=RetryStrategy.FIXED, base_interval=3600)

    def process(self, task: TaskInfo, payload: dict) -> TaskResult:
        return TaskResult.failure("upstream unavailable, retrying in an hour")
