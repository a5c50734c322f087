"""The no-op task type scripts/measure_drain.py drains (``ASYNC_TASK_PROCESSORS=drain_processors``
with ``scripts/`` on PYTHONPATH)."""

from __future__ import annotations

from typing import Any

from webapp.tasks import TaskInfo, TaskProcessor, TaskResult


class DrainNoopProcessor(TaskProcessor):
    """Does nothing and succeeds: what is measured is the engine's own cost per task."""

    task_type = "DRAIN_NOOP"

    def process(self, task: TaskInfo, payload: dict[str, Any]) -> TaskResult:
        return TaskResult.success()
